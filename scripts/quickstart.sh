#!/usr/bin/env bash
# Quick start on a fresh Debian machine: installs what is missing, builds the proxy, creates a
# SoftHSM2 demo token with demo keys, a self-signed TLS certificate and a SigV4 credential, starts
# the proxy in the background and proves it works with one signed Encrypt call.
#
#   scripts/quickstart.sh                 set up (idempotent) and start the proxy in the background
#   scripts/quickstart.sh --foreground    set up, then run the proxy in this terminal (Ctrl-C stops it)
#   scripts/quickstart.sh stop            stop the background proxy recorded in data/proxy.pid
#
# Environment: XKS_PORT (default 8443) is the HTTPS port; it reaches the proxy as
# XKS__SERVER__PORT, the ordinary config override.
#
# Safe to re-run: it never replaces an existing token, PIN, key, credential, TLS key or the demo
# configuration data/xks-proxy.yaml (a copy of config/softhsm.yaml, yours to edit). Everything it
# creates lives in data/ (mode 0700) next to config/; delete data/ to start over from nothing.
# data/bin/xks-proxy is the CLI on that configuration: export PATH="$PWD/data/bin:$PATH".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA="$ROOT/data"
# The demo's own configuration, copied once from the tracked config/softhsm.yaml: edit this one.
CONFIG="$DATA/xks-proxy.yaml"
CONFIG_TEMPLATE="$ROOT/config/softhsm.yaml"
# `xks-proxy` as the docs write it: a wrapper of the CLI on the demo configuration.
BIN_DIR="$DATA/bin"
CLI="$ROOT/dist/src/cli/index.js"
SOFTHSM_CONF="$DATA/softhsm2.conf"
TOKEN_LABEL=xks-demo
KEY_STORE=demo
CRED_DIR="$DATA/credentials/$KEY_STORE"
KMS_JSON="$DATA/kms-proxy-config-$KEY_STORE.json"
PID_FILE="$DATA/proxy.pid"
LOG_FILE="$DATA/logs/proxy.log"
PORT="${XKS_PORT:-8443}"
METRICS_PORT="${XKS_METRICS_PORT:-9464}"
AUDIT_KEY="$DATA/audit/keys/audit-signing.jwk"
AUDIT_PUB="$DATA/audit/keys/audit-signing.pub.jwk"
READY_TRIES=60 # x 0.5 s

say() { printf '==> %s\n' "$*"; }
die() {
  printf 'quickstart: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run '$*' (run this script as root or install sudo)"
  fi
}

# Our CLI, always on the quick-start config (never $XKS_CONFIG, which may name another one).
xks() {
  node "$CLI" "$@" --config "$CONFIG"
}

# --- the background proxy ---------------------------------------------------------------------

# True while the process has not exited. `kill -0` alone also succeeds for a zombie (exited, not
# yet reaped by its parent), which is what the background proxy becomes under a parent that never
# reaps, e.g. a container whose pid 1 is a shell or `sleep`.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 0
  [ "$state" != Z ] && [ "$state" != X ]
}

# Prints the pid recorded in data/proxy.pid if that process is still our proxy.
running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid=$(tr -dc '0-9' <"$PID_FILE")
  [ -n "$pid" ] || return 1
  alive "$pid" || return 1
  # Guard against a recycled pid: the process must be our CLI's serve command.
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *"dist/src/cli/index.js serve"* ]] || return 1
  printf '%s\n' "$pid"
}

stop_proxy() {
  local pid i
  if pid=$(running_pid); then
    say "stopping the proxy (pid $pid)"
    kill -TERM "$pid"
    # The proxy drains in-flight requests for up to 10 s on SIGTERM.
    for ((i = 0; i < 30; i++)); do
      alive "$pid" || break
      sleep 0.5
    done
    if alive "$pid"; then
      say "pid $pid did not stop within 15 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$PID_FILE"
}

# --- arguments --------------------------------------------------------------------------------

[ $# -le 1 ] || { usage >&2; exit 2; }
FOREGROUND=0
case "${1:-}" in
  "") ;;
  --foreground) FOREGROUND=1 ;;
  stop)
    if running_pid >/dev/null; then stop_proxy && say "stopped"; else rm -f "$PID_FILE"; say "no proxy recorded in data/proxy.pid is running"; fi
    exit 0
    ;;
  -h | --help | help)
    usage
    exit 0
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
  die "XKS_PORT must be a port number (got '$PORT')"
fi

cd "$ROOT"

# --- 1. Node.js >= 20 -------------------------------------------------------------------------

command -v node >/dev/null 2>&1 || die "Node.js 20 or later is required and 'node' is not on PATH; install Node.js >= 20, then re-run"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 20 ] || die "Node.js 20 or later is required, found $(node -v); install Node.js >= 20, then re-run"
command -v npm >/dev/null 2>&1 || die "'npm' is not on PATH (it comes with Node.js)"
say "Node.js $(node -v), npm $(npm -v)"

# --- 2. system packages -----------------------------------------------------------------------

missing=()
command -v softhsm2-util >/dev/null 2>&1 && [ -e /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# Not for the demo: `npm test` (the README's second command) starts a real three-member etcd
# cluster on loopback ports for its fleet-mode tests. Without systemd (a container) Debian's
# package starts no service; on a host it may enable one: `systemctl disable --now etcd` stops it.
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# Not for the demo either: `npm test` checks the fleet's systemd units with `systemd-analyze verify`
# (every systemd host has it; a container gets the package, which starts nothing there).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# npm writes node_modules/.package-lock.json at the end of every install: older than the lockfile
# means the dependencies are out of date.
NEED_NPM_CI=0
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  NEED_NPM_CI=1
fi
# pkcs11js is a native addon compiled by node-gyp during `npm ci`.
if [ "$NEED_NPM_CI" -eq 1 ]; then
  { command -v make && command -v g++; } >/dev/null 2>&1 || missing+=(build-essential)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# --- 3. build ---------------------------------------------------------------------------------

if [ "$NEED_NPM_CI" -eq 1 ]; then
  say "npm ci"
  # Node's C headers for compiling pkcs11js, from the npm registry when missing (not nodejs.org).
  # shellcheck source=scripts/node-headers.sh
  . "$ROOT/scripts/node-headers.sh"
  npm_ci_native || die "npm ci failed; see the messages above"
fi
say "npm run build"
npm run build --silent

# --- 4. data/ ---------------------------------------------------------------------------------

# Everything below is private to this user.
umask 077
mkdir -p "$DATA" "$DATA/tokens" "$DATA/secrets" "$DATA/tls" "$DATA/logs" "$CRED_DIR" "$BIN_DIR"
chmod 700 "$DATA"

# The demo's configuration: a copy of config/softhsm.yaml, made once and then left to the user (add
# keys, change settings; `kill -HUP` applies most changes). Its paths stay valid unchanged: they are
# relative to the file, and data/ and config/ are both in the repository's top folder.
if [ ! -s "$CONFIG" ]; then
  say "writing the demo configuration $CONFIG (from config/softhsm.yaml; edit this copy)"
  { printf '# The quick start demo configuration, copied from config/softhsm.yaml by scripts/quickstart.sh.\n'
    printf '# Edit this copy (the quick start never overwrites it; delete it to get a fresh copy).\n'
    printf '# Relative paths are relative to this file: ../data/x is data/x.\n\n'
    cat "$CONFIG_TEMPLATE"; } >"$CONFIG.tmp"
  mv -f "$CONFIG.tmp" "$CONFIG"
fi

# data/bin/xks-proxy: the CLI under the name the docs use, on the demo configuration unless
# --config or $XKS_CONFIG says otherwise. Rewritten every run (it holds absolute paths).
printf '#!/usr/bin/env bash\n# Written by scripts/quickstart.sh: the xks-proxy CLI of %s\n: "${XKS_CONFIG:=%q}"\nexport XKS_CONFIG\nexec node %q "$@"\n' \
  "$ROOT" "$CONFIG" "$CLI" >"$BIN_DIR/xks-proxy.tmp"
chmod 755 "$BIN_DIR/xks-proxy.tmp"
mv -f "$BIN_DIR/xks-proxy.tmp" "$BIN_DIR/xks-proxy"

# SoftHSM2 configuration: rendered from the template on every run (it only names the token folder).
template=$(<"$ROOT/softhsm/softhsm2.conf.template")
printf '%s\n' "${template//@TOKENDIR@/"$DATA/tokens"}" >"$SOFTHSM_CONF.tmp"
mv -f "$SOFTHSM_CONF.tmp" "$SOFTHSM_CONF"

# PINs: random, written once, never printed.
for name in hsm-pin hsm-so-pin; do
  if [ ! -s "$DATA/secrets/$name" ]; then
    if [ "$(find "$DATA/tokens" -mindepth 1 -maxdepth 1 | head -n 1)" ]; then
      die "data/secrets/$name is missing but data/tokens already holds a token: restore the PIN file (or delete data/ to start over)"
    fi
    openssl rand -hex 16 >"$DATA/secrets/$name.tmp"
    mv -f "$DATA/secrets/$name.tmp" "$DATA/secrets/$name"
  fi
  chmod 600 "$DATA/secrets/$name"
done

# --- 5. SoftHSM2 token ------------------------------------------------------------------------

export SOFTHSM2_CONF="$SOFTHSM_CONF"
# Capture first: with pipefail, `grep -q` closing the pipe early could fail the pipeline and make an
# existing token look absent.
slots=$(softhsm2-util --show-slots)
if grep -Eq "^[[:space:]]*Label:[[:space:]]+${TOKEN_LABEL}[[:space:]]*\$" <<<"$slots"; then
  say "token \"$TOKEN_LABEL\" exists"
else
  say "initialising token \"$TOKEN_LABEL\""
  # softhsm2-util reads PINs from a terminal only, so they go on its command line (local, short-lived).
  softhsm2-util --init-token --free --label "$TOKEN_LABEL" \
    --so-pin "$(<"$DATA/secrets/hsm-so-pin")" --pin "$(<"$DATA/secrets/hsm-pin")" >/dev/null
fi

# --- 6. keys ----------------------------------------------------------------------------------

# Scripts read the CLI's --json output (the table is for people). json_list EXPR prints EXPR for
# each row r of the JSON array on stdin; the expressions are this script's own.
json_list() { node -e 'let s = ""; process.stdin.on("data", (c) => (s += c)).on("end", () => { for (const r of JSON.parse(s)) console.log(eval(process.argv[1])); });' "$1"; }
existing_keys=$(xks keys list --json | json_list 'r.label')
for spec in xks-health:encrypt-decrypt demo-key-1:encrypt-decrypt demo-encrypt-only:encrypt demo-decrypt-only:decrypt; do
  label=${spec%%:*}
  usage=${spec#*:}
  if grep -Fxq -- "$label" <<<"$existing_keys"; then
    say "key \"$label\" exists"
  else
    xks keys create --label "$label" --usage "$usage"
  fi
done
# The control state's MAC key (control.stateAuth.hsmKeyLabel): the kill switch state is
# authenticated inside the HSM, and the proxy does not start without it.
if grep -Fxq -- xks-control-state <<<"$existing_keys"; then
  say "key \"xks-control-state\" exists"
else
  xks keys create --type hmac --label xks-control-state
fi

# --- 7. TLS -----------------------------------------------------------------------------------

CERT="$DATA/tls/cert.pem"
TLS_KEY="$DATA/tls/key.pem"
if [ -e "$CERT" ] && [ -e "$TLS_KEY" ]; then
  say "TLS certificate exists ($CERT)"
elif [ -e "$CERT" ] || [ -e "$TLS_KEY" ]; then
  die "only one of data/tls/cert.pem and data/tls/key.pem exists; restore the other or remove both to get a new pair"
else
  say "creating a self-signed TLS certificate for localhost"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TLS_KEY.tmp" -out "$CERT.tmp" 2>/dev/null
  mv -f "$TLS_KEY.tmp" "$TLS_KEY"
  mv -f "$CERT.tmp" "$CERT"
  chmod 600 "$TLS_KEY"
  chmod 644 "$CERT"
fi

# --- 7b. audit signing key -------------------------------------------------------------------

# Signs the audit log's checkpoints; the public half is what an auditor verifies with.
if [ -e "$AUDIT_KEY" ]; then
  say "audit signing key exists ($AUDIT_KEY)"
else
  say "creating the audit signing key pair in data/audit/keys"
  xks audit keygen --private "$AUDIT_KEY" --public "$AUDIT_PUB" >/dev/null
fi

# --- 7c. admin operators ---------------------------------------------------------------------

# Two demo operators (lifting a kill switch needs two distinct approvals); their public keys go into
# the JWKS file the admin API trusts. The private keys stay in data/admin/ (mode 0600).
ADMIN_DIR="$DATA/admin"
mkdir -p "$ADMIN_DIR"
for op in demo-operator-1 demo-operator-2; do
  if [ -e "$ADMIN_DIR/$op.private.jwk.json" ]; then
    say "admin operator key \"$op\" exists"
  else
    say "creating admin operator key \"$op\" in data/admin"
    xks operator keygen --name "$op" --out-dir "$ADMIN_DIR" --jwks "$ADMIN_DIR/operators.jwks.json"
  fi
done

# --- 8. SigV4 credential ----------------------------------------------------------------------

# JSON field of the KMS proxy configuration file.
kms_json_field() {
  node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const c = j.XksProxyAuthenticationCredential || {};
    process.stdout.write(String({ akid: c.AccessKeyId, secret: c.RawSecretAccessKey, path: j.XksProxyUriPath }[process.argv[2]] ?? ""));' "$KMS_JSON" "$1"
}

ids=$(xks credentials list --json | KS="$KEY_STORE" json_list 'r.keyStore === process.env.KS ? (r.accessKeyIds.join(",") || "(none)") : ""' | grep -v '^$' || true)
[ -n "$ids" ] || die "key store \"$KEY_STORE\" is not in $CONFIG"
if [ "$ids" = "(none)" ]; then
  say "creating a SigV4 credential for key store \"$KEY_STORE\""
  xks credentials new --key-store "$KEY_STORE" --out "$KMS_JSON"
fi

AKID=""
SECRET=""
# Prefer the credential named in the KMS proxy configuration file, if it is still active.
if [ -s "$KMS_JSON" ]; then
  AKID=$(kms_json_field akid)
  if [ -n "$AKID" ] && [ -s "$CRED_DIR/$AKID.secret" ]; then
    SECRET=$(kms_json_field secret)
    [ "$SECRET" = "$(<"$CRED_DIR/$AKID.secret")" ] || SECRET=""
  fi
fi
if [ -z "$SECRET" ]; then
  # The file is missing or names a rotated-out credential: rebuild it from the newest secret file.
  newest=$(find "$CRED_DIR" -maxdepth 1 -type f -name '*.secret' -printf '%T@ %f\n' | sort -rn | head -n 1 | cut -d' ' -f2-)
  [ -n "$newest" ] || die "key store \"$KEY_STORE\" has credentials ($ids) but none in $CRED_DIR; the demo needs one there: run 'node dist/src/cli/index.js credentials new --key-store $KEY_STORE --out $KMS_JSON'"
  AKID=${newest%.secret}
  SECRET=$(<"$CRED_DIR/$newest")
  say "writing $KMS_JSON for credential $AKID"
  XKS_PATH=$(xks credentials list --json | KS="$KEY_STORE" json_list 'r.keyStore === process.env.KS ? r.uriPath : ""' | grep -v '^$') \
    AKID="$AKID" SECRET="$SECRET" node -e 'process.stdout.write(JSON.stringify({
      XksProxyUriPath: process.env.XKS_PATH,
      XksProxyAuthenticationCredential: { AccessKeyId: process.env.AKID, RawSecretAccessKey: process.env.SECRET },
    }, null, 2) + "\n")' >"$KMS_JSON.tmp"
  mv -f "$KMS_JSON.tmp" "$KMS_JSON"
else
  say "using SigV4 credential $AKID"
fi
chmod 600 "$KMS_JSON"
URI_PATH=$(kms_json_field path)

# --- 9. the demo call -------------------------------------------------------------------------

BODY='{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab","kmsOperation":"Encrypt","kmsRequestId":"4112f4d6-db54-4af4-ae30-c55a22a8dfae"},"plaintext":"SGVsbG8gV29ybGQh","encryptionAlgorithm":"AES_GCM"}'
DEMO_CURL=(curl --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$AKID:$SECRET" --cacert "$CERT"
  -H 'Content-Type: application/json' -d "$BODY" "https://localhost:$PORT$URI_PATH/keys/demo-key-1/encrypt")

# Print a command so that it pastes back into a shell unchanged.
print_command() {
  local arg out=""
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

print_instructions() {
  cat <<EOF

------------------------------------------------------------------------------------------------
KMS console proxy configuration file ($KMS_JSON):
EOF
  cat "$KMS_JSON"
  cat <<EOF

(For a real external key store, KMS must reach the proxy on a public HTTPS endpoint with a
certificate from a public CA; the self-signed localhost certificate is for this local demo only.)

A signed Encrypt call of "Hello World!" with key demo-key-1 (ready to paste):
EOF
  print_command "${DEMO_CURL[@]}"
}

# --- 10. start the proxy ----------------------------------------------------------------------

stop_proxy
export XKS__SERVER__PORT="$PORT"
export XKS__METRICS__PORT="$METRICS_PORT"

# Something else on the port (a proxy started with --foreground, another program) would answer the
# readiness probe and the demo call in place of the proxy started here.
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  die "port $PORT is already in use (by a proxy running with --foreground, or another program); stop it, or pick another port with XKS_PORT=..."
fi

if [ "$FOREGROUND" -eq 1 ]; then
  print_instructions
  printf '\nStarting the proxy in the foreground on port %s (Ctrl-C stops it); run the curl above from another terminal.\n\n' "$PORT"
  exec node "$CLI" serve --config "$CONFIG"
fi

[ ! -f "$LOG_FILE" ] || mv -f "$LOG_FILE" "$LOG_FILE.1"
say "starting the proxy on port $PORT (log: $LOG_FILE)"
nohup node "$CLI" serve --config "$CONFIG" >"$LOG_FILE" 2>&1 </dev/null &
pid=$!
printf '%s\n' "$pid" >"$PID_FILE"

ready=0
for ((i = 0; i < READY_TRIES; i++)); do
  if ! alive "$pid"; then
    break
  fi
  # --cacert: only our own certificate counts, not whatever else might answer on the port.
  code=$(curl -s --cacert "$CERT" --max-time 2 -o /dev/null -w '%{http_code}' "https://localhost:$PORT/healthz/ready" || true)
  if [ "$code" = "200" ] && alive "$pid"; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ "$ready" -ne 1 ]; then
  printf 'quickstart: error: the proxy did not become ready on https://localhost:%s/healthz/ready; last lines of %s:\n' "$PORT" "$LOG_FILE" >&2
  tail -n 40 "$LOG_FILE" >&2 || true
  stop_proxy
  exit 1
fi
say "proxy ready (pid $pid)"

print_instructions

printf '\nRunning it now:\n'
# The same command, plus -sS and the status code on a line of its own after the body.
out=$("${DEMO_CURL[@]}" -sS -w '\n%{http_code}') || die "the demo call failed (curl could not complete the request); see $LOG_FILE"
code=${out##*$'\n'}
response=${out%$'\n'*}
printf 'HTTP %s\n%s\n' "$code" "$response"
if [ "$code" != "200" ] || [[ "$response" != *'"ciphertext":"'* ]]; then
  die "the demo Encrypt call did not return HTTP 200 with a ciphertext; see $LOG_FILE"
fi

cat <<EOF

The proxy is running in the background (pid $pid, log $LOG_FILE).
Its configuration is $CONFIG (yours to edit; apply with: kill -HUP \$(cat $PID_FILE)).
  The CLI as the docs write it:  export PATH="$BIN_DIR:\$PATH"   then e.g.  xks-proxy keys list
  Stop it:                   scripts/quickstart.sh stop
  Run it in the foreground:  scripts/quickstart.sh --foreground
  Other port:                XKS_PORT=9443 scripts/quickstart.sh
  Metrics (Prometheus):      curl http://127.0.0.1:$METRICS_PORT/metrics
  Kill switch state:         xks-proxy killswitch show --key $DATA/admin/demo-operator-1.private.jwk.json
                             (engage / approve-lift: docs/runbook-kill-switch.md)
  Verify the audit log:      xks-proxy audit verify --public-key $AUDIT_PUB --witness $DATA/audit-witness/checkpoints.log $DATA/audit
                             (exit 3 while the proxy runs: the newest records await the next checkpoint)
EOF
