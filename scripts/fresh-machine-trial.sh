#!/usr/bin/env bash
# Repeats the new user's trial on a fresh machine: a Debian bookworm container with Node 20 and
# nothing else (node:20-bookworm-slim), this repository copied in, and the README followed as
# written. Prints each step's time and result, then a verdict; exits non-zero on any failure.
#
#   scripts/fresh-machine-trial.sh               copy the work tree (tracked and untracked files,
#                                                 minus what .gitignore excludes: node_modules, dist, data)
#   scripts/fresh-machine-trial.sh --head        copy the last commit instead (git archive HEAD)
#   scripts/fresh-machine-trial.sh --keep        leave the container running afterwards, to look around
#   scripts/fresh-machine-trial.sh --ci          run CI's entry point instead (CI=true bash .ci/run)
#
# README steps (the default), each in the same container (its pid 1 is `sleep`, which reaps
# nothing, like many containers):
#   1. scripts/quickstart.sh         the README's first command
#   2. npm test                      the README's second command
#   3. the README's "Calling the proxy" block, run as written (AKID/SECRET from the KMS JSON, curl)
#   4. xks-proxy keys list           with data/bin on PATH, as the quick start says
#   5. scripts/quickstart.sh stop    must stop the proxy without falling back to SIGKILL
#
# Environment:
#   CONTAINER_ENGINE  the engine command (default: podman, else docker, whichever answers `info`);
#                     may be a wrapper script, e.g. one that adds machine-specific podman settings
#   TRIAL_IMAGE       the fresh machine (default docker.io/library/node:20-bookworm-slim)
#   TRIAL_LOG         where the full output goes (default: a new file under ${TMPDIR:-/tmp})
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${TRIAL_IMAGE:-docker.io/library/node:20-bookworm-slim}
NAME="xks-fresh-trial-$$"
LOG=${TRIAL_LOG:-$(mktemp "${TMPDIR:-/tmp}/xks-fresh-trial.XXXXXX.log")}
SOURCE=worktree
KEEP=0
MODE=readme

for arg in "$@"; do
  case "$arg" in
    --head) SOURCE=head ;;
    --keep) KEEP=1 ;;
    --ci) MODE=ci ;;
    -h | --help)
      awk 'NR > 1 && !/^#/ { exit } NR > 1' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "fresh-machine-trial: unknown argument '$arg' (see --help)" >&2
      exit 2
      ;;
  esac
done

say() { printf '==> %s\n' "$*" | tee -a "$LOG"; }
die() {
  printf 'fresh-machine-trial: error: %s\n' "$*" | tee -a "$LOG" >&2
  exit 1
}

# --- the container engine -----------------------------------------------------------------------

# shellcheck source=scripts/container-engine.sh
. "$ROOT/scripts/container-engine.sh"
ENGINE=$(container_engine) || exit 1
command -v git >/dev/null 2>&1 || die "git is needed to copy the repository"

# --- ports ----------------------------------------------------------------------------------------

# With host networking (some podman set-ups), the container's proxy shares the host's ports: keep
# the documented ones when they are free, otherwise move the proxy to free ones (and the README's
# curl with it).
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
PORT=8443
ENV_ARGS=()
if port_taken 8443 || port_taken 9444 || port_taken 9464; then
  command -v node >/dev/null 2>&1 || die "ports 8443/9444/9464 are in use here and node is not on PATH to find free ones"
  PORT=$(free_port)
  ENV_ARGS=(-e "XKS_PORT=$PORT" -e "XKS_METRICS_PORT=$(free_port)" -e "XKS__CONTROL__ADMIN__PORT=$(free_port)")
  say "ports 8443/9444/9464 are in use on this host: the trial's proxy uses ${ENV_ARGS[*]//-e/}"
fi

# --- the trial ------------------------------------------------------------------------------------

results=()
failures=0
step() {
  # step NAME COMMAND...: runs COMMAND, records its time and outcome.
  local name=$1 start end rc
  shift
  say "$name"
  start=$(date +%s)
  set +e
  "$@" </dev/null 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  end=$(date +%s)
  if [ "$rc" -eq 0 ]; then
    results+=("PASS  $name ($((end - start)) s)")
  else
    results+=("FAIL  $name ($((end - start)) s, exit $rc)")
    failures=$((failures + 1))
  fi
  return "$rc"
}
in_container() { "$ENGINE" exec -i -w /src "${ENV_ARGS[@]}" "$NAME" bash -c "$1"; }

cleanup() {
  local rc=$?
  set +e
  if [ "$KEEP" -eq 1 ]; then
    echo "the container is kept: $ENGINE exec -it -w /src $NAME bash   (remove: $ENGINE rm -f $NAME)"
  else
    "$ENGINE" rm -f "$NAME" >/dev/null 2>&1
  fi
  exit "$rc"
}

say "engine: $ENGINE; image: $IMAGE; source: $SOURCE; trial: $MODE; full log: $LOG"
"$ENGINE" image exists "$IMAGE" >/dev/null 2>&1 || "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1 || "$ENGINE" pull "$IMAGE" >>"$LOG" 2>&1 ||
  die "cannot get the image $IMAGE (see $LOG)"
trial_start=$(date +%s)
"$ENGINE" run -d --name "$NAME" "$IMAGE" sleep infinity >>"$LOG" 2>&1 || die "cannot start a container from $IMAGE (see $LOG)"
trap cleanup EXIT
trap 'exit 130' INT TERM

say "copying the repository into /src"
"$ENGINE" exec "$NAME" mkdir -p /src
if [ "$SOURCE" = head ]; then
  git -C "$ROOT" archive --format=tar HEAD | in_container 'tar -xf -'
else
  # Tracked and untracked files that git would not ignore, never local state or build output
  # (node_modules may be a symlink, which a "node_modules/" ignore rule does not match); files
  # deleted in the work tree are skipped.
  (cd "$ROOT" && git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
    case "$f" in node_modules | node_modules/* | dist | dist/* | data | data/*) continue ;; esac
    [ -e "$f" ] && printf '%s\0' "$f"
  done |
    tar --null -T - -cf -) | in_container 'tar -xf -'
fi

# What the machine offers, for the record: Node, npm, and whether npm knows where Node's headers are.
in_container 'echo "node $(node -v), npm $(npm -v), npm nodedir: $(npm config get nodedir), headers in the node prefix: $(ls -d "$(dirname "$(dirname "$(command -v node)")")/include/node" 2>/dev/null || echo none)"' | tee -a "$LOG"

if [ "$MODE" = ci ]; then
  # As CI runs it: as root, CI=true, no standard input.
  step "CI=true bash .ci/run" in_container 'CI=true bash .ci/run' || true
else
  # The README's "Calling the proxy" block, as written (with the port moved if need be).
  readme_call=$(awk '/^### Calling the proxy/ { in_section = 1 } in_section && /^```sh/ { in_block = 1; next } in_block && /^```/ { exit } in_block' "$ROOT/README.md")
  [ -n "$readme_call" ] || die "README.md has no sh block under '### Calling the proxy'"
  readme_call=${readme_call//localhost:8443/localhost:$PORT}

  step "1. scripts/quickstart.sh" in_container 'scripts/quickstart.sh' || true
  step "2. npm test" in_container 'npm test' || true
  step "3. README: calling the proxy" in_container "out=\$(bash -eo pipefail <<'XKS_README_BLOCK'
$readme_call
XKS_README_BLOCK
) || exit 1
echo \"\$out\"
[[ \"\$out\" == *'\"ciphertext\":\"'* ]]" || true
  step "4. xks-proxy keys list (data/bin on PATH)" in_container 'export PATH="$PWD/data/bin:$PATH"; xks-proxy keys list' || true
  step "5. scripts/quickstart.sh stop" in_container 'out=$(scripts/quickstart.sh stop 2>&1); echo "$out"; ! grep -q SIGKILL <<<"$out"' || true
fi
trial_end=$(date +%s)

printf '\n---- fresh-machine trial (%s, %s) ----\n' "$IMAGE" "$ENGINE" | tee -a "$LOG"
printf '%s\n' "${results[@]}" | tee -a "$LOG"
if [ "$failures" -eq 0 ]; then
  printf 'VERDICT: PASS (%d steps, %d s in all; log %s)\n' "${#results[@]}" "$((trial_end - trial_start))" "$LOG" | tee -a "$LOG"
else
  printf 'VERDICT: FAIL (%d of %d steps failed, %d s in all; log %s)\n' "$failures" "${#results[@]}" "$((trial_end - trial_start))" "$LOG" | tee -a "$LOG"
  exit 1
fi
