#!/bin/bash
# Container entrypoint of the xks-proxy image.
#
#   docker run ... xks-proxy                    serve (the default command)
#   docker run ... xks-proxy keys list          any CLI command: serve, keys, credentials, version
#
# Runs `node dist/src/cli/index.js <args> --config $XKS_CONFIG` (default
# /etc/xks-proxy/xks-proxy.yaml); --config is only added when the arguments do not give one.
#
# Demo initialisation: when XKS_INIT_DEMO=1 and /data is empty, it first creates, inside /data,
# the same embedded default as scripts/quickstart.sh: a SoftHSM2 token "xks-demo" with random user
# and SO PINs (/data/secrets, mode 0600), the keys xks-health, demo-key-1, demo-encrypt-only and
# demo-decrypt-only, the control state's HMAC key xks-control-state, a self-signed TLS certificate for localhost (/data/tls) and one SigV4
# credential for key store "demo" (/data/credentials/demo, and the KMS proxy configuration file
# /data/kms-proxy-config-demo.json). A /data that holds anything is never touched: existing
# material is never replaced. Secrets are never printed.
set -euo pipefail

APP=/app
CLI="$APP/dist/src/cli/index.js"
# The image's own configuration: the demo initialisation always follows it.
BUILTIN_CONFIG=/etc/xks-proxy/xks-proxy.yaml
CONFIG="${XKS_CONFIG:-$BUILTIN_CONFIG}"
DATA=/data
TOKEN_LABEL=xks-demo
KEY_STORE=demo
KMS_JSON="$DATA/kms-proxy-config-$KEY_STORE.json"
# Present while a demo initialisation runs; left behind if it is interrupted.
INCOMPLETE="$DATA/.demo-init-incomplete"

log() { printf 'entrypoint: %s\n' "$*" >&2; }
die() {
  printf 'entrypoint: error: %s\n' "$*" >&2
  exit 1
}

# /data holds nothing (a lost+found folder of a freshly formatted volume does not count).
data_is_empty() {
  local first
  first=$(find "$DATA" -mindepth 1 -maxdepth 1 ! -name lost+found -print -quit 2>/dev/null) ||
    die "cannot read $DATA as uid $(id -u); for a bind mount, give the folder to uid 1000 (chown 1000:1000 DIR), or use a named volume"
  [ -z "$first" ]
}

# Our CLI on the image's configuration (environment overrides XKS__... still apply).
xks_builtin() {
  node "$CLI" "$@" --config "$BUILTIN_CONFIG"
}

init_demo() {
  [ -w "$DATA" ] || die "$DATA is not writable by uid $(id -u); for a bind mount, give the folder to uid 1000 (chown 1000:1000 DIR), or use a named volume"
  log "initialising the demo in $DATA (token \"$TOKEN_LABEL\", keys, TLS, a SigV4 credential for key store \"$KEY_STORE\")"
  # Everything below is private to this user, and no file may be replaced (noclobber).
  umask 077
  set -o noclobber
  : >"$INCOMPLETE"
  chmod 700 "$DATA" 2>/dev/null || log "warning: cannot chmod 700 $DATA (not its owner); its contents are private anyway"
  mkdir "$DATA/tokens" "$DATA/secrets" "$DATA/tls" "$DATA/logs" "$DATA/credentials" "$DATA/credentials/$KEY_STORE"

  # SoftHSM2 configuration: the project's template, pointed at the volume's token folder.
  local template
  template=$(<"$APP/softhsm/softhsm2.conf.template")
  printf '%s\n' "${template//@TOKENDIR@/"$DATA/tokens"}" >"$DATA/softhsm2.conf"

  # PINs: random, written once, never printed.
  openssl rand -hex 16 >"$DATA/secrets/hsm-pin"
  openssl rand -hex 16 >"$DATA/secrets/hsm-so-pin"
  chmod 600 "$DATA/secrets/hsm-pin" "$DATA/secrets/hsm-so-pin"

  # The token. softhsm2-util reads PINs from a terminal only, so they go on its command line
  # (inside this container, for the second it runs), exactly as the quick start does.
  SOFTHSM2_CONF="$DATA/softhsm2.conf" softhsm2-util --init-token --free --label "$TOKEN_LABEL" \
    --so-pin "$(<"$DATA/secrets/hsm-so-pin")" --pin "$(<"$DATA/secrets/hsm-pin")" >/dev/null
  log "token \"$TOKEN_LABEL\" created"

  # Keys, through the CLI (non-extractable AES-256 keys generated inside the token).
  local spec
  for spec in xks-health:encrypt-decrypt demo-key-1:encrypt-decrypt demo-encrypt-only:encrypt demo-decrypt-only:decrypt; do
    xks_builtin keys create --label "${spec%%:*}" --usage "${spec#*:}" >&2
  done
  # The control state's MAC key (control.stateAuth.hsmKeyLabel): the kill switch state is
  # authenticated inside the HSM, and the proxy does not start without it.
  xks_builtin keys create --type hmac --label xks-control-state >&2

  # Self-signed TLS certificate for localhost (EC P-256).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$DATA/tls/key.pem" -out "$DATA/tls/cert.pem" 2>/dev/null
  chmod 600 "$DATA/tls/key.pem"
  chmod 644 "$DATA/tls/cert.pem"
  log "self-signed TLS certificate for localhost in $DATA/tls/cert.pem"

  # One SigV4 credential, and the KMS console proxy configuration file (mode 0600).
  xks_builtin credentials new --key-store "$KEY_STORE" --out "$KMS_JSON" 2>&1 | sed 's/^/entrypoint: /' >&2
  [ -s "$KMS_JSON" ] || die "the credential for key store \"$KEY_STORE\" was not created"

  # The audit signing key pair (the .pub.jwk is for the auditor) and two demo operators for the
  # admin API (lifting a kill switch needs two distinct approvals).
  mkdir -p "$DATA/audit/keys" "$DATA/admin"
  xks_builtin audit keygen --private "$DATA/audit/keys/audit-signing.jwk" --public "$DATA/audit/keys/audit-signing.pub.jwk" >/dev/null
  local op
  for op in demo-operator-1 demo-operator-2; do
    xks_builtin operator keygen --name "$op" --out-dir "$DATA/admin" --jwks "$DATA/admin/operators.jwks.json" >/dev/null
  done
  log "audit signing key in $DATA/audit/keys, demo operators in $DATA/admin"

  rm -f "$INCOMPLETE"
  set +o noclobber
  umask 022
  log "demo ready. The KMS proxy configuration file (it holds the SigV4 secret) is $KMS_JSON;"
  log "read it with: docker exec <container> cat $KMS_JSON"
}

[ -d "$DATA" ] || die "$DATA does not exist (the image declares it as a volume)"

if [ -e "$INCOMPLETE" ]; then
  die "a demo initialisation of $DATA was interrupted and left it incomplete; empty the volume (or use a new one) and start again with XKS_INIT_DEMO=1"
fi

case "${XKS_INIT_DEMO:-}" in
  1 | true | yes)
    if [ "$CONFIG" != "$BUILTIN_CONFIG" ]; then
      log "note: XKS_CONFIG=$CONFIG; the demo is created for the image's configuration $BUILTIN_CONFIG"
    fi
    if data_is_empty; then
      init_demo
    else
      log "XKS_INIT_DEMO is set but $DATA is not empty: keeping what is there (nothing is created or replaced)"
    fi
    ;;
  "" | 0 | false | no) ;;
  *) die "XKS_INIT_DEMO must be 1 (initialise the demo in an empty $DATA) or unset, got '$XKS_INIT_DEMO'" ;;
esac

[ $# -gt 0 ] || set -- serve

# A hint for the most common first-run mistake (the configuration points into an empty /data).
if [ "$1" = serve ] && grep -q '/data/' "$CONFIG" 2>/dev/null && data_is_empty; then
  log "note: $DATA is empty, but $CONFIG expects a SoftHSM2 token, PIN, TLS pair and credentials there"
  log "      (start once with -e XKS_INIT_DEMO=1 to create the demo, or mount your own configuration; see docs/docker.md)"
fi

has_config=0
for arg in "$@"; do
  case "$arg" in
    --config | --config=*) has_config=1 ;;
  esac
done

cd "$APP"
if [ "$has_config" -eq 1 ]; then
  exec node "$CLI" "$@"
fi
exec node "$CLI" "$@" --config "$CONFIG"
