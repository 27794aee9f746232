#!/usr/bin/env bash
# Smoke test of the container image, with docker or podman (whichever is on PATH and works).
#
#   scripts/docker-smoke.sh
#
# Builds the image from the Dockerfile, runs it on a fresh volume (a temporary folder) with
# XKS_INIT_DEMO=1 and host networking, waits for /healthz/ready, makes one SigV4-signed Encrypt
# call with curl, and checks that the proxy runs as non-root, that the volume was initialised
# with private files, that CLI subcommands work through the entrypoint, that a restart keeps the
# volume's material unchanged, and that no secret is baked into the image. Prints PASS/FAIL per
# check and exits non-zero on any failure. The container and the temporary folder are always
# removed; the image is kept.
#
# Environment:
#   CONTAINER_ENGINE  the engine command (default: podman, else docker, whichever answers `info`);
#               may be a wrapper script (PODMAN=... is still read, for older instructions)
#   IMAGE       image tag to build and test (default: localhost/xks-proxy:smoke)
#   SKIP_BUILD  1 to test an already built $IMAGE
#   PORT        HTTPS port (default 8443, or a free one if 8443 is taken; passed as XKS__SERVER__PORT)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/container-engine.sh
. "$ROOT/scripts/container-engine.sh"
ENGINE=$(CONTAINER_ENGINE=${CONTAINER_ENGINE:-${PODMAN:-}} container_engine) || exit 1
IS_PODMAN=0
if engine_is_podman "$ENGINE"; then IS_PODMAN=1; fi
IMAGE=${IMAGE:-localhost/xks-proxy:smoke}
NAME="xks-smoke-$$"
READY_TRIES=90 # x 1 s

failures=0
results=()
CID=""
VOL=""
ERRFILE=$(mktemp "${TMPDIR:-/tmp}/xks-smoke-err.XXXXXX")
CA_FILE=$(mktemp "${TMPDIR:-/tmp}/xks-smoke-ca.XXXXXX") # the volume's certificate, readable here

pass() {
  results+=("PASS  $1")
  printf 'PASS  %s\n' "$1"
}
fail() {
  results+=("FAIL  $1${2:+ ($2)}")
  printf 'FAIL  %s%s\n' "$1" "${2:+ ($2)}"
  failures=$((failures + 1))
}
say() { printf '==> %s\n' "$*"; }

summary() {
  printf '\n---- summary ----\n'
  local r
  for r in "${results[@]}"; do printf '%s\n' "$r"; done
  if [ "$failures" -eq 0 ]; then
    printf 'ALL %d CHECKS PASSED\n' "${#results[@]}"
  else
    printf '%d OF %d CHECKS FAILED\n' "$failures" "${#results[@]}"
  fi
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$CID" ]; then
    engine_q stop -t 15 "$NAME" >/dev/null
    engine_q rm -f "$NAME" >/dev/null
  fi
  rm -f "$ERRFILE"
  if [ -n "$VOL" ] && [ -d "$VOL" ]; then
    as_volume_owner rm -rf "$VOL" 2>/dev/null
    rm -rf "$VOL" 2>/dev/null
  fi
  rm -f "$CA_FILE"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Files in the volume belong to the container's uid 1000 (mode 0600): root reads them directly,
# rootless podman in its user namespace, anyone else through a throw-away container of the image
# with the volume at the same path.
as_volume_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif [ "$IS_PODMAN" -eq 1 ]; then
    "$ENGINE" unshare "$@"
  else
    "$ENGINE" run --rm --no-healthcheck --user 0 --entrypoint "$1" -v "$VOL:$VOL" "$IMAGE" "${@:2}"
  fi
}
vol_cat() { as_volume_owner cat "$VOL/$1"; }
vol_stat() { as_volume_owner stat -c "$1" "$VOL/$2"; }
# Checksums of the volume's material (not the runtime state that grows by design: the audit chain
# and the control state files).
vol_sums() {
  # The material a restart must keep (PINs, TLS pair, credentials, the audit signing keys): not the
  # token, logs, the audit chains (one per worker with server.workers auto, under audit/worker-N/)
  # or the control state, which a running proxy writes.
  # shellcheck disable=SC2016 # expanded by the inner sh
  as_volume_owner sh -c 'cd "$1" && find . -type f ! -path "./tokens/*" ! -path "./logs/*" ! -path "./audit/audit.log*" ! -path "./audit/worker-*" ! -path "./control/*" -print0 | sort -z | xargs -0 sha256sum' sh "$VOL"
}


# podman 4.3 reports an error for every start/stop of a container with a HEALTHCHECK when there
# is no systemd to schedule it, even with --health-interval disable; those lines are dropped.
engine_q() {
  local rc=0
  "$ENGINE" "$@" 2>"$ERRFILE" || rc=$?
  grep -v 'unable to get systemd connection' "$ERRFILE" >&2 || true
  return "$rc"
}

container_running() {
  [ "$("$ENGINE" inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)" = "true" ]
}

show_logs() {
  printf -- '---- last container log lines ----\n' >&2
  "$ENGINE" logs --tail 40 "$NAME" >&2 2>&1 || true
  printf -- '----------------------------------\n' >&2
}

# Wait until /healthz/ready answers 200 with our certificate, or the container stops.
wait_ready() {
  local i code
  for ((i = 0; i < READY_TRIES; i++)); do
    container_running || return 1
    if vol_cat tls/cert.pem >"$CA_FILE" 2>/dev/null && [ -s "$CA_FILE" ]; then
      code=$(curl -s --cacert "$CA_FILE" --max-time 2 -o /dev/null -w '%{http_code}' "https://localhost:$PORT/healthz/ready" || true)
      [ "$code" = "200" ] && return 0
    fi
    sleep 1
  done
  return 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

say "container engine: $ENGINE"
command -v curl >/dev/null || { echo "docker-smoke: curl is required" >&2; exit 1; }

# --- port -------------------------------------------------------------------------------------
PORT_ENV=()
if [ -n "${PORT:-}" ]; then
  port_in_use "$PORT" && { echo "docker-smoke: port $PORT is in use" >&2; exit 1; }
elif ! port_in_use 8443; then
  PORT=8443
else
  PORT=""
  for p in $(shuf -i 20000-39999 -n 50); do
    if ! port_in_use "$p"; then PORT=$p; break; fi
  done
  [ -n "$PORT" ] || { echo "docker-smoke: no free port found" >&2; exit 1; }
fi
[ "$PORT" = "8443" ] || PORT_ENV=(-e "XKS__SERVER__PORT=$PORT")
say "HTTPS port $PORT${PORT_ENV:+ (passed to the container as XKS__SERVER__PORT=$PORT)}"

# --- 1. build ---------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" = "1" ]; then
  say "using the existing image $IMAGE (SKIP_BUILD=1)"
  if "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then pass "image $IMAGE exists"; else fail "image $IMAGE exists"; summary; exit 1; fi
else
  say "building $IMAGE from $ROOT/Dockerfile"
  # podman: the docker format keeps the HEALTHCHECK (the OCI format has no field for it).
  build_flags=(--network=host)
  [ "$IS_PODMAN" -eq 0 ] || build_flags+=(--format docker)
  if "$ENGINE" build "${build_flags[@]}" -t "$IMAGE" "$ROOT"; then
    pass "image builds from the Dockerfile"
  else
    fail "image builds from the Dockerfile"
    summary
    exit 1
  fi
fi
size=$("$ENGINE" image inspect -f '{{.Size}}' "$IMAGE")
say "image size: $((size / 1000000)) MB ($size bytes)"

# --- 2. start on a fresh volume ---------------------------------------------------------------
VOL=$(mktemp -d "${TMPDIR:-/tmp}/xks-smoke-data.XXXXXX")
# A bind-mounted folder must belong to the container's user (uid 1000, "node").
as_volume_owner chown 1000:1000 "$VOL"
as_volume_owner chmod 700 "$VOL"
say "starting container $NAME with a fresh volume ($VOL) and XKS_INIT_DEMO=1"
# podman, --health-interval disable: the image's HEALTHCHECK stays defined (run below with
# `podman healthcheck run`), but podman does not try to schedule it with systemd timers, which a
# machine without systemd lacks. docker schedules it itself.
run_flags=(--network=host)
[ "$IS_PODMAN" -eq 0 ] || run_flags+=(--health-interval disable)
CID=$(engine_q run -d --name "$NAME" "${run_flags[@]}" \
  -v "$VOL:/data" -e XKS_INIT_DEMO=1 "${PORT_ENV[@]}" "$IMAGE")

if wait_ready; then
  pass "container initialises the demo and /healthz/ready answers 200 (port $PORT)"
else
  fail "container initialises the demo and /healthz/ready answers 200 (port $PORT)" "not ready within ${READY_TRIES}s"
  show_logs
  summary
  exit 1
fi

# --- 3. the volume ----------------------------------------------------------------------------
bad=""
for f in secrets/hsm-pin secrets/hsm-so-pin tls/key.pem kms-proxy-config-demo.json; do
  mode=$(vol_stat '%a %u' "$f" 2>/dev/null || echo missing)
  [ "$mode" = "600 1000" ] || bad+=" $f=$mode"
done
n_secret=$(as_volume_owner find "$VOL/credentials/demo" -maxdepth 1 -name '*.secret' 2>/dev/null | wc -l)
[ "$n_secret" -eq 1 ] || bad+=" credentials/demo/*.secret=$n_secret"
as_volume_owner test -s "$VOL/softhsm2.conf" -a -d "$VOL/tokens" || bad+=" softhsm2.conf/tokens missing"
if [ -z "$bad" ]; then
  pass "volume holds token, PINs, TLS pair and one credential, secrets mode 0600 owned by uid 1000"
else
  fail "volume holds token, PINs, TLS pair and one credential, secrets mode 0600 owned by uid 1000" "${bad# }"
fi

# --- 4. one signed Encrypt --------------------------------------------------------------------
KMS_JSON=$(vol_cat kms-proxy-config-demo.json)
json_field() { sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" <<<"$KMS_JSON" | head -n 1; }
AKID=$(json_field AccessKeyId)
SECRET=$(json_field RawSecretAccessKey)
URI_PATH=$(json_field XksProxyUriPath)
BODY='{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab","kmsOperation":"Encrypt","kmsRequestId":"4112f4d6-db54-4af4-ae30-c55a22a8dfae"},"plaintext":"SGVsbG8gV29ybGQh","encryptionAlgorithm":"AES_GCM"}'
say "signed Encrypt: POST https://localhost:$PORT$URI_PATH/keys/demo-key-1/encrypt (access key id $AKID)"
if [ -z "$AKID" ] || [ -z "$SECRET" ] || [ -z "$URI_PATH" ]; then
  fail "signed Encrypt returns HTTP 200 with a ciphertext" "cannot read the credential from kms-proxy-config-demo.json"
else
  out=$(curl -sS --max-time 10 --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$AKID:$SECRET" \
    --cacert "$CA_FILE" -H 'Content-Type: application/json' -d "$BODY" -w '\n%{http_code}' \
    "https://localhost:$PORT$URI_PATH/keys/demo-key-1/encrypt" 2>&1) || true
  code=${out##*$'\n'}
  response=${out%$'\n'*}
  printf 'HTTP %s\n%s\n' "$code" "$response"
  if [ "$code" = "200" ] && [[ "$response" == *'"ciphertext":"'* ]]; then
    pass "signed Encrypt returns HTTP 200 with a ciphertext"
  else
    fail "signed Encrypt returns HTTP 200 with a ciphertext" "HTTP $code"
  fi
fi
unset SECRET KMS_JSON

# --- 5. non-root --------------------------------------------------------------------------------
uid=$("$ENGINE" exec "$NAME" id -u 2>/dev/null || echo "?")
# shellcheck disable=SC2016 # expanded inside the container
pid1=$("$ENGINE" exec "$NAME" sh -c 'echo "$(stat -c %u /proc/1) $(tr "\0" " " </proc/1/cmdline)"' 2>/dev/null || echo "?")
say "exec id -u: $uid; pid 1 (uid, command): $pid1"
if [[ "$uid" =~ ^[0-9]+$ ]] && [ "$uid" -ne 0 ] && [[ "$pid1" == "$uid node "* ]]; then
  pass "the proxy runs as non-root (uid $uid), node is pid 1"
else
  fail "the proxy runs as non-root" "id -u=$uid, pid 1: $pid1"
fi

# --- 6. HEALTHCHECK ---------------------------------------------------------------------------
hc=$("$ENGINE" image inspect -f '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}}' "$IMAGE" 2>/dev/null || true)
# podman runs it on request; with docker, run the same command in the container.
healthcheck_run() {
  if [ "$IS_PODMAN" -eq 1 ]; then "$ENGINE" healthcheck run "$NAME"; else "$ENGINE" exec "$NAME" sh -c "${hc#CMD-SHELL }"; fi
}
if [[ "$hc" == *"/healthz/live"* ]] && healthcheck_run >/dev/null 2>&1; then
  pass "image HEALTHCHECK is defined and passes (run once in the container)"
else
  fail "image HEALTHCHECK is defined and passes" "test: ${hc:-none}"
fi

# --- 7. CLI subcommands through the entrypoint ------------------------------------------------
keys=$("$ENGINE" run --rm --network=host --no-healthcheck -v "$VOL:/data" "$IMAGE" keys list --json || true)
printf '%s\n' "$keys"
missing_keys=""
for k in xks-health demo-key-1 demo-encrypt-only demo-decrypt-only; do
  grep -q "\"label\": \"$k\"" <<<"$keys" || missing_keys+=" $k"
done
if [ -z "$missing_keys" ]; then
  pass "'keys list' through the entrypoint lists the four demo keys"
else
  fail "'keys list' through the entrypoint lists the four demo keys" "missing:$missing_keys"
fi
creds=$("$ENGINE" run --rm --network=host --no-healthcheck -v "$VOL:/data" "$IMAGE" credentials list --json || true)
printf '%s\n' "$creds"
if [ "$(node -e 'const r = JSON.parse(process.argv[1]); process.stdout.write(JSON.stringify(r))' "$creds" 2>/dev/null)" = '[{"keyStore":"demo","uriPath":"/demo/kms/xks/v1","accessKeyIds":["'"$AKID"'"]}]' ]; then
  pass "'credentials list' through the entrypoint shows the demo credential (and no secret)"
else
  fail "'credentials list' through the entrypoint shows the demo credential"
fi

# --- 8. a restart keeps the volume's material ---------------------------------------------------
sums_before=$(vol_sums)
say "restarting the container (XKS_INIT_DEMO=1 still set)"
engine_q stop -t 15 "$NAME" >/dev/null
engine_q start "$NAME" >/dev/null
if wait_ready; then
  sums_after=$(vol_sums)
  logs=$("$ENGINE" logs "$NAME" 2>&1 || true)
  if [ "$sums_before" = "$sums_after" ] && [[ "$logs" == *"is not empty: keeping what is there"* ]]; then
    pass "a restart with XKS_INIT_DEMO=1 keeps PINs, TLS pair and credentials unchanged and is ready again"
  else
    fail "a restart with XKS_INIT_DEMO=1 keeps the volume's material unchanged" "files changed or no 'keeping' message"
  fi
else
  fail "a restart with XKS_INIT_DEMO=1 keeps the volume's material unchanged" "not ready after the restart"
  show_logs
fi

# --- 9. nothing secret in the image -----------------------------------------------------------
data_ls=$("$ENGINE" run --rm --network=host --no-healthcheck --user 0 --entrypoint sh "$IMAGE" -c 'ls -A /data' || echo "(ls failed)")
baked=$("$ENGINE" run --rm --network=host --no-healthcheck --user 0 --entrypoint sh "$IMAGE" -c \
  'find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o \( -name "*.secret" -o -name "hsm-pin*" -o -name "hsm-so-pin*" -o -name "kms-proxy-config-*.json" -o -name "softhsm2.conf" -path "/data/*" \) -print' || echo "(find failed)")
app_tokens=$("$ENGINE" run --rm --network=host --no-healthcheck --user 0 --entrypoint sh "$IMAGE" -c 'ls -A /var/lib/softhsm/tokens 2>/dev/null; ls -d /app/data 2>/dev/null' || true)
secret_env=$("$ENGINE" image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep -Ei 'pin|secret|password|token' || true)
if [ -z "$data_ls" ] && [ -z "$baked" ] && [ -z "$app_tokens" ] && [ -z "$secret_env" ]; then
  pass "no secret baked into the image (/data empty, no *.secret / hsm-pin / KMS config / token, no secret ENV)"
else
  fail "no secret baked into the image" "/data: '${data_ls}' files: '${baked}' tokens: '${app_tokens}' env: '${secret_env}'"
fi

# --- 10. stop and remove ------------------------------------------------------------------------
if engine_q stop -t 15 "$NAME" >/dev/null; then
  exit_code=$("$ENGINE" inspect -f '{{.State.ExitCode}}' "$NAME" 2>/dev/null || echo "?")
  if engine_q rm "$NAME" >/dev/null; then CID=""; fi
  if [ "$exit_code" = "0" ] && [ -z "$CID" ]; then
    pass "container stops on SIGTERM with exit code 0 and is removed"
  else
    fail "container stops on SIGTERM with exit code 0 and is removed" "exit code $exit_code"
  fi
else
  fail "container stops on SIGTERM with exit code 0 and is removed" "stop failed"
fi

summary
[ "$failures" -eq 0 ]
