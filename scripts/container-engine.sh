#!/usr/bin/env bash
# The container engine for the scripts that build or run containers (docker-smoke.sh,
# fresh-machine-trial.sh): $CONTAINER_ENGINE when set (a command or a wrapper script, e.g. one
# that adds a machine's own podman settings), otherwise podman or docker from PATH, the first that
# answers `info` (a docker client without its daemon does not).
#
#   . scripts/container-engine.sh; ENGINE=$(container_engine) || exit 1

container_engine() {
  if [ -n "${CONTAINER_ENGINE:-}" ]; then
    printf '%s\n' "$CONTAINER_ENGINE"
    return 0
  fi
  local e
  for e in podman docker; do
    if command -v "$e" >/dev/null 2>&1 && "$e" info >/dev/null 2>&1; then
      printf '%s\n' "$e"
      return 0
    fi
  done
  echo "no working container engine: install podman or docker (a docker client needs its daemon running), or name one with CONTAINER_ENGINE=..." >&2
  return 1
}

# True when the engine is podman (directly or through a wrapper): some flags and commands differ.
engine_is_podman() {
  "$1" --version 2>/dev/null | grep -qi podman
}
