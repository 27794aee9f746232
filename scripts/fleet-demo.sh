#!/usr/bin/env bash
# Fleet mode on one machine, on loopback ports (docs/fleet.md): three etcd members and two proxies
# that share one SoftHSM2 token (the demo's stand-in for HSMs holding the same keys), all in a
# temporary folder that is removed on exit.
#
#   scripts/fleet-demo.sh           bring it up, print how to use it, stay until Ctrl-C
#   scripts/fleet-demo.sh --smoke   bring it up, engage on proxy A, show that B applied it, lift
#                                   with two operators on A and B, check that the SigV4 credential
#                                   made once (in etcd, sealed in the HSM) works on A and B, then
#                                   stop (exit 0 on success)
#
# Needs: a build (npm run build), softhsm2, openssl, curl and Debian's etcd-server (/usr/bin/etcd).
# Ports: etcd clients 23791-23793, peers 23801-23803; proxies 18443/18444 (HTTPS),
# admin 19444/19445 (loopback, plain HTTP).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLI="$ROOT/dist/src/cli/index.js"
SMOKE=0
case "${1:-}" in
  "") ;;
  --smoke) SMOKE=1 ;;
  -h | --help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac
for c in etcd softhsm2-util openssl curl node; do command -v "$c" >/dev/null || { echo "fleet-demo: '$c' is required" >&2; exit 1; }; done
[ -f "$CLI" ] || { echo "fleet-demo: build first (npm run build)" >&2; exit 1; }

DIR=$(mktemp -d /tmp/xks-fleet-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
say() { printf '==> %s\n' "$*"; }

say "working folder $DIR"
mkdir -p "$DIR/tokens" "$DIR/secrets" "$DIR/ops"
chmod 700 "$DIR/secrets"
cat >"$DIR/softhsm2.conf" <<CONF
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
PIN=$(openssl rand -hex 8)
softhsm2-util --init-token --free --label xks-fleet --pin "$PIN" --so-pin "$(openssl rand -hex 8)" >/dev/null
printf '%s\n' "$PIN" >"$DIR/secrets/hsm-pin"
chmod 600 "$DIR/secrets/hsm-pin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$DIR/key.pem" -out "$DIR/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null

say "starting three etcd members"
CLUSTER="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$DIR/etcd-e$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$CLUSTER" --initial-cluster-token xks-fleet-demo --initial-cluster-state new \
    --log-level error >"$DIR/etcd-e$i.log" 2>&1 &
  PIDS+=($!)
done

config() { # NAME XKS_PORT ADMIN_PORT
  cat >"$DIR/$1.yaml" <<YAML
server: { host: 127.0.0.1, port: $2, tls: { certFile: $DIR/cert.pem, keyFile: $DIR/key.pem } }
hsm:
  module: /usr/lib/softhsm/libsofthsm2.so
  moduleEnv: { SOFTHSM2_CONF: $DIR/softhsm2.conf }
  tokenLabel: xks-fleet
  pin: { file: $DIR/secrets/hsm-pin }
keyStores:
  # Credentials from the fleet: made once, in etcd, encrypted in the HSM; no file to copy.
  - { name: demo, pathPrefix: /demo, fleetCredentials: true, keys: [{ externalKeyId: demo-key-1 }] }
log: { level: warn, requestLogStdout: false, requestLogFile: $DIR/$1-requests.log }
control:
  store: etcd
  etcd:
    endpoints: [http://127.0.0.1:23791, http://127.0.0.1:23792, http://127.0.0.1:23793]
    prefix: /xks-proxy/demo/
    nodeId: proxy-$1
  admin: { host: 127.0.0.1, port: $3, audience: xks-fleet-demo, jwksFile: $DIR/ops/operators.jwks.json }
YAML
}
config a 18443 19444
config b 18444 19445
xks() { node "$CLI" "$@"; }

say "keys in the token: health check, demo key, control state MAC key, credential wrap key"
xks keys create --label xks-health --config "$DIR/a.yaml" >/dev/null
xks keys create --label demo-key-1 --config "$DIR/a.yaml" >/dev/null
xks keys create --type hmac --label xks-control-state --config "$DIR/a.yaml" >/dev/null
xks keys create --label xks-credential-wrap --config "$DIR/a.yaml" >/dev/null
for op in alice bob; do xks operator keygen --name "$op" --out-dir "$DIR/ops" --jwks "$DIR/ops/operators.jwks.json" 2>/dev/null; done

say "starting proxies a (:18443, admin :19444) and b (:18444, admin :19445)"
for n in a b; do
  node "$CLI" serve --config "$DIR/$n.yaml" >"$DIR/$n.log" 2>&1 &
  PIDS+=($!)
done
for port in 18443 18444; do
  for ((i = 0; i < 120; i++)); do
    curl -ksf "https://127.0.0.1:$port/healthz/ready" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -ksf "https://127.0.0.1:$port/healthz/ready" >/dev/null || { echo "fleet-demo: proxy on :$port not ready; its log:" >&2; cat "$DIR"/*.log >&2; exit 1; }
done
xks fleet status --config "$DIR/a.yaml"
say "a SigV4 credential for key store demo, made once with proxy a's config, for every member"
xks credentials new --key-store demo --out "$DIR/kms-proxy-config.json" --config "$DIR/a.yaml"

if [ "$SMOKE" -eq 1 ]; then
  say "engage the kill switch through proxy a"
  xks killswitch engage --scope proxy --reason "fleet demo" --key "$DIR/ops/alice.private.jwk.json" --config "$DIR/a.yaml"
  say "proxy b's state (through its own admin API)"
  xks killswitch show --key "$DIR/ops/bob.private.jwk.json" --config "$DIR/b.yaml" | grep -q '"scope": "proxy"' && echo "b is blocked"
  say "lift: alice approves on a, bob on b"
  xks killswitch approve-lift --scope proxy --reason "demo over" --key "$DIR/ops/alice.private.jwk.json" --config "$DIR/a.yaml" >/dev/null
  xks killswitch approve-lift --scope proxy --reason "demo over" --key "$DIR/ops/bob.private.jwk.json" --config "$DIR/b.yaml" | grep -q '"lifted": true' && echo "lifted on every member"
  xks fleet status --config "$DIR/b.yaml"
  say "the credential works on b (no file copied): b decrypts what a encrypts, signed with it"
  xks check https://localhost:18444/demo/kms/xks/v1 --key-id demo-key-1 --kms-config "$DIR/kms-proxy-config.json" --ca "$DIR/cert.pem" --ciphertexts-from https://localhost:18443/demo/kms/xks/v1 >"$DIR/check.out" || { cat "$DIR/check.out" >&2; exit 1; }
  echo "every check case passed on b"
  say "smoke test passed"
  exit 0
fi

cat <<TXT

Fleet up. Try (in another shell):
  node $CLI killswitch engage --scope proxy --reason test --key $DIR/ops/alice.private.jwk.json --config $DIR/a.yaml
  node $CLI killswitch show --key $DIR/ops/bob.private.jwk.json --config $DIR/b.yaml
  node $CLI fleet status --config $DIR/b.yaml
  kill two etcd members (pids ${PIDS[0]} ${PIDS[1]}): both proxies answer 503 on /healthz/ready within 3 s
KMS proxy configuration (credential): $DIR/kms-proxy-config.json
Ctrl-C stops everything and removes $DIR.
TXT
wait
