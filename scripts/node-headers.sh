#!/usr/bin/env bash
# Node's C headers for compiling the pkcs11js native addon, without the Node.js website.
#
# `npm ci` compiles pkcs11js with node-gyp, against the C headers of the running Node version.
# Unless npm's `nodedir` setting names a folder that has them, node-gyp downloads them from the
# Node.js website, which a machine that reaches only the package registries cannot do. This script
# is the one place that deals with it (used by scripts/quickstart.sh, .ci/run and the Dockerfile):
#
#   1. headers that node-gyp would find are used as they are: npm's `nodedir` setting (or
#      $npm_config_nodedir), the Node installation's own prefix (<prefix>/include/node, as in the
#      official tarballs and images), node-gyp's cache, or this script's cache;
#   2. otherwise they are taken from the npm registry: the `node-<platform>-<arch>` package of the
#      running version (the official build, published there), unpacked into the cache below.
#
# Then npm_config_nodedir names that folder, so node-gyp compiles without downloading anything.
#
#   scripts/node-headers.sh              print the folder (export npm_config_nodedir="$(scripts/node-headers.sh)")
#   . scripts/node-headers.sh            defines the functions below, for scripts:
#     node_headers_export                finds or fetches the headers and exports npm_config_nodedir
#     npm_ci_native                      node_headers_export, then `npm ci`; on failure says what is missing
#
# Environment: XKS_NODE_HEADERS_CACHE is where fetched headers are kept (default
# ${XDG_CACHE_HOME:-~/.cache}/xks-proxy/node-headers; one folder per version, about 60 MB).

# True when DIR holds the headers of the running Node version (node-gyp's own test is the presence
# of include/node/common.gypi; the version check keeps an older installation's headers out).
_nh_has_headers() {
  local dir=$1 h="$1/include/node/node_version.h" v
  [ -f "$dir/include/node/common.gypi" ] && [ -f "$h" ] || return 1
  v=$(sed -n 's/^#define NODE_\(MAJOR\|MINOR\|PATCH\)_VERSION \([0-9]*\).*/\2/p' "$h" | paste -sd.)
  [ "v$v" = "$(node -p process.version)" ]
}

_nh_cache_root() {
  printf '%s\n' "${XKS_NODE_HEADERS_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/xks-proxy/node-headers}"
}

# Prints a folder with the running Node version's headers (fetching them if need be); on failure
# prints what to do on stderr and returns 1.
node_headers_dir() {
  command -v node >/dev/null 2>&1 || { echo "node-headers: 'node' is not on PATH" >&2; return 1; }
  local version platform arch pkg configured prefix cand dest tmp tgz
  version=$(node -p 'process.version.slice(1)')
  platform=$(node -p 'process.platform === "win32" ? "win" : process.platform')
  arch=$(node -p process.arch)
  pkg="node-$platform-$arch@$version"

  # 1. npm's nodedir setting (the environment wins over the npmrc files, as in npm itself).
  configured=${npm_config_nodedir:-}
  [ -n "$configured" ] || configured=$(npm config get nodedir 2>/dev/null || true)
  case "$configured" in undefined | null) configured="" ;; esac
  configured=${configured/#\~/${HOME:-}}
  if [ -n "$configured" ]; then
    if _nh_has_headers "$configured"; then
      printf '%s\n' "$configured"
      return 0
    fi
    echo "node-headers: npm's nodedir ($configured) has no C headers for Node v$version; looking elsewhere" >&2
  fi
  # 2. The installation's prefix (bin/node -> include/node), node-gyp's cache, our cache.
  prefix=$(dirname "$(dirname "$(node -p process.execPath)")")
  dest="$(_nh_cache_root)/v$version-$platform-$arch"
  for cand in "$prefix" "${npm_config_devdir:-${HOME:-/nonexistent}/.cache/node-gyp}/$version" "$dest"; do
    if _nh_has_headers "$cand"; then
      printf '%s\n' "$cand"
      return 0
    fi
  done

  # 3. From the npm registry. Unpacked next to the final folder and renamed into place, so that an
  #    interrupted fetch never leaves a half folder that looks complete.
  echo "node-headers: fetching Node's C headers from the npm registry ($pkg, about 30 MB) into $dest" >&2
  if ! mkdir -p "$(dirname "$dest")" || ! tmp=$(mktemp -d "$(dirname "$dest")/.fetch.XXXXXX"); then
    echo "node-headers: cannot write to $(dirname "$dest"); set XKS_NODE_HEADERS_CACHE to a writable folder" >&2
    return 1
  fi
  if ! tgz=$(cd "$tmp" && npm pack --loglevel=error "$pkg" 2>"$tmp/npm-pack.err" | tail -n 1) || [ ! -f "$tmp/$tgz" ] ||
    ! tar -xzf "$tmp/$tgz" -C "$tmp" --strip-components=1 package/include 2>>"$tmp/npm-pack.err" ||
    ! _nh_has_headers "$tmp"; then
    sed 's/^/  npm: /' "$tmp/npm-pack.err" >&2
    rm -rf "$tmp"
    cat >&2 <<EOF
node-headers: error: could not get Node's C headers for v$version, which are needed to compile the
pkcs11js addon: the npm registry package $pkg could not be fetched or unpacked.
Do one of:
  - make the npm registry reachable (see the npm error above: proxy, cafile, registry setting);
  - or point npm at a folder with the headers: export npm_config_nodedir=DIR, where
    DIR/include/node/common.gypi exists (e.g. the contents of node-v$version-headers.tar.gz).
EOF
    return 1
  fi
  rm -f "$tmp/$tgz" "$tmp/npm-pack.err"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  printf '%s\n' "$dest"
}

node_headers_export() {
  local dir
  dir=$(node_headers_dir) || return 1
  export npm_config_nodedir=$dir
  echo "node-headers: compiling native addons against the Node headers in $dir" >&2
}

# After a failed `npm ci`: name each missing piece of what compiling pkcs11js needs.
node_addon_help() {
  local missing=() nodedir=${npm_config_nodedir:-}
  command -v make >/dev/null 2>&1 || missing+=("make (Debian: apt-get install build-essential)")
  { command -v g++ || command -v c++; } >/dev/null 2>&1 || missing+=("a C++ compiler, g++ (Debian: apt-get install build-essential)")
  command -v python3 >/dev/null 2>&1 || missing+=("python3, which node-gyp runs (Debian: apt-get install python3)")
  { [ -n "$nodedir" ] && _nh_has_headers "$nodedir"; } || missing+=("Node's C headers for $(node -v) (run scripts/node-headers.sh to fetch them, then export npm_config_nodedir=<the folder it prints>)")
  {
    echo
    echo "npm ci failed. If the error above comes from node-gyp or pkcs11js: pkcs11js is a native addon,"
    echo "compiled during npm ci; it needs make, a C++ compiler, python3 and Node's C headers."
    if [ ${#missing[@]} -gt 0 ]; then
      echo "Missing on this machine:"
      printf '  - %s\n' "${missing[@]}"
    else
      echo "All of them are present (headers: $nodedir); the compiler's own error above says what failed."
    fi
  } >&2
}

# `npm ci` with the headers in place; on failure, says what is missing and returns 1.
npm_ci_native() {
  node_headers_export || return 1
  npm ci "$@" || { node_addon_help; return 1; }
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  node_headers_dir
fi
