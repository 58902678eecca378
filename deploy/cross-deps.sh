#!/usr/bin/env bash
# Installs what deploy/build-static.sh needs to cross-build for ARCH on this
# host: the Rust standard library for the target (rustup) and Debian's cross
# gcc with its C library (apt-get, as root or through sudo). Nothing when ARCH
# is the host's own. Used by the Dockerfile's builder stage, the release
# workflow and tests/tools/install.sh, so all three cross-build the same way.
#
# Usage: deploy/cross-deps.sh amd64|arm64
set -euo pipefail

case "${1:-}" in
  amd64) TARGET=x86_64-unknown-linux-gnu; PACKAGES=(gcc-x86-64-linux-gnu libc6-dev-amd64-cross) ;;
  arm64) TARGET=aarch64-unknown-linux-gnu; PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
  *) echo "cross-deps.sh: usage: cross-deps.sh amd64|arm64" >&2; exit 2 ;;
esac
[ "$TARGET" = "$(rustc -vV | sed -n 's/^host: //p')" ] && exit 0

if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$TARGET" ]; then
  echo "cross-deps.sh: rustup target add $TARGET" >&2
  rustup target add "$TARGET" >&2
fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "cross-deps.sh: as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "cross-deps.sh: apt-get install ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
