#!/usr/bin/env bash
# The fleet demo in containers (docker/fleet/compose.yaml, docs/fleet.md "Containers"), end to end:
# bring up three etcd members and two proxies sharing one SoftHSM2 token, engage the kill switch on
# proxy A, show that proxy B refuses an Encrypt (InvalidStateException), lift it with two operators
# (one approval through A, one through B), show that B serves again, then tear everything down
# (containers and volumes). Exit 0 on success.
#
#   scripts/fleet-compose-smoke.sh             build the images, run, tear down
#   NO_BUILD=1 scripts/fleet-compose-smoke.sh  use the images already built
#   KEEP=1 ...                                 leave the fleet running (tear down yourself:
#                                              $COMPOSE -p xks-fleet -f docker/fleet/compose.yaml down -v)
#
# COMPOSE: the compose command (default: "docker compose" when it answers, else docker-compose).
# With Podman: run its Docker API socket and point DOCKER_HOST at it, e.g.
#   podman system service --time=0 unix:///tmp/podman.sock &  export DOCKER_HOST=unix:///tmp/podman.sock
# (Debian bookworm's podman-compose 1.0.3 cannot run this file: it adds a project network next to
# network_mode: host, which podman refuses; docs/fleet.md.)
# Needs curl 7.75+ (--aws-sigv4) on the host; the ports of the compose file must be free.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FILE="$ROOT/docker/fleet/compose.yaml"
PROJECT=xks-fleet
if [ -z "${COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
# shellcheck disable=SC2086 # COMPOSE may be two words
dc() { $COMPOSE -p "$PROJECT" -f "$FILE" "$@"; }
say() { printf '==> %s\n' "$*"; }
fail() { printf 'fleet-compose-smoke: FAILED: %s\n' "$*" >&2; dc logs --tail 30 >&2 2>&1 || true; exit 1; }

WORK=$(mktemp -d)
teardown() {
  if [ "${KEEP:-0}" = 1 ]; then say "KEEP=1: the fleet stays up"; else say "tearing down (containers and volumes)"; dc down -v >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap teardown EXIT

say "compose: $COMPOSE"
if [ "${NO_BUILD:-0}" = 1 ]; then dc up -d --no-build; else dc up -d --build; fi

cli() { # SERVICE ARGS... : the proxy's CLI inside its container, on the fleet configuration
  local svc=$1
  shift
  dc exec -T "$svc" node /app/dist/src/cli/index.js "$@"
}

say "waiting for both proxies to be ready (the first start initialises the shared volume)"
for port in 28443 28444; do
  ok=0
  for ((i = 0; i < 180; i++)); do
    if [ "$(curl -sk --max-time 2 -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/healthz/ready" || true)" = 200 ]; then ok=1; break; fi
    sleep 1
  done
  [ "$ok" = 1 ] || fail "the proxy on :$port is not ready after 180 s"
done
cli proxy-a fleet status

dc exec -T proxy-a cat /data/tls/cert.pem >"$WORK/cert.pem"
dc exec -T proxy-a cat /data/kms-proxy-config-demo.json >"$WORK/kms.json"
AKID=$(node -p 'require(process.argv[1]).XksProxyAuthenticationCredential.AccessKeyId' "$WORK/kms.json")
SECRET=$(node -p 'require(process.argv[1]).XksProxyAuthenticationCredential.RawSecretAccessKey' "$WORK/kms.json")
encrypt() { # PORT -> the response body
  curl -s --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$AKID:$SECRET" --cacert "$WORK/cert.pem" \
    -H 'Content-Type: application/json' \
    -d "{\"requestMetadata\":{\"awsPrincipalArn\":\"arn:aws:iam::123456789012:user/Alice\",\"kmsKeyArn\":\"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab\",\"kmsOperation\":\"Encrypt\",\"kmsRequestId\":\"$(cat /proc/sys/kernel/random/uuid)\"},\"plaintext\":\"SGVsbG8gV29ybGQh\",\"encryptionAlgorithm\":\"AES_GCM\"}" \
    "https://localhost:$1/demo/kms/xks/v1/keys/demo-key-1/encrypt"
}
encrypt 28444 | grep -q '"ciphertext"' || fail "proxy B does not encrypt before the engage"
say "proxy B encrypts"

say "engage the kill switch (scope proxy) through proxy A's admin API"
cli proxy-a killswitch engage --scope proxy --reason "compose smoke test" --key /data/admin/demo-operator-1.private.jwk.json
out=$(encrypt 28444)
printf '%s\n' "$out" | grep -q '"errorName":"InvalidStateException"' || fail "proxy B did not refuse after the engage on A: $out"
say "proxy B refuses: $out"

say "lift: demo-operator-1 approves through A, demo-operator-2 through B"
cli proxy-a killswitch approve-lift --scope proxy --reason "smoke test over" --key /data/admin/demo-operator-1.private.jwk.json >/dev/null
cli proxy-b killswitch approve-lift --scope proxy --reason "agreed" --key /data/admin/demo-operator-2.private.jwk.json | grep -q '"lifted": true' || fail "the second approval did not lift the block"
for ((i = 0; i < 50; i++)); do encrypt 28444 | grep -q '"ciphertext"' && break; sleep 0.2; done
encrypt 28444 | grep -q '"ciphertext"' || fail "proxy B does not encrypt after the lift"
encrypt 28443 | grep -q '"ciphertext"' || fail "proxy A does not encrypt after the lift"
say "both proxies encrypt again"
cli proxy-b fleet status
say "fleet compose smoke test passed"
