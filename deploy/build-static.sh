#!/usr/bin/env bash
# The release build: one statically linked carbon-kube binary for Linux.
#
# The Dockerfile runs this script, and so does CI (.ci/run) outside Docker,
# so the image and the tested binary come from the same command and flags:
#
#   RUSTFLAGS='-C target-feature=+crt-static' \
#     cargo build --release --locked --target <host triple, e.g. x86_64-unknown-linux-gnu>
#
# `--target` is what keeps crt-static away from build scripts and proc macros
# (they must stay dynamic); the release profile in Cargo.toml adds thin LTO,
# strip and panic=abort. The result is a static-pie executable that needs no
# libc in the image (distroless/static or scratch).
#
# Usage: deploy/build-static.sh [--out DIR]
#   Prints the binary's path on stdout (DIR/carbon-kube with --out) and fails
#   unless the binary is statically linked.
# Environment: CARBON_KUBE_TARGET overrides the target triple (default: the
#   host's, so a native arm64 builder produces an arm64 binary).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    *) echo "build-static.sh: unknown argument $1 (usage: build-static.sh [--out DIR])" >&2; exit 2 ;;
  esac
done

TARGET="${CARBON_KUBE_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}"
case "$TARGET" in
  *-linux-gnu) ;;
  *) echo "build-static.sh: target $TARGET is not a *-linux-gnu target" >&2; exit 2 ;;
esac

cd "$ROOT"
# Exactly this RUSTFLAGS value: any other string changes cargo's fingerprint and
# rebuilds everything.
export RUSTFLAGS='-C target-feature=+crt-static'
echo "build-static.sh: cargo build --release --locked --target $TARGET (RUSTFLAGS=$RUSTFLAGS)" >&2
cargo build --release --locked --target "$TARGET" --bin carbon-kube >&2
BIN="$ROOT/target/$TARGET/release/carbon-kube"

# Static or fail: `file` says "static-pie linked" (or "statically linked");
# without `file` (slim images), ldd must not list any shared library.
if command -v file >/dev/null 2>&1; then
  kind="$(file -L "$BIN")"
  case "$kind" in
    *"static-pie linked"* | *"statically linked"*) ;;
    *) echo "build-static.sh: $BIN is not static: $kind" >&2; exit 1 ;;
  esac
elif ldd "$BIN" 2>&1 | grep -q '=>'; then
  echo "build-static.sh: $BIN is dynamically linked:" >&2
  ldd "$BIN" >&2
  exit 1
fi

# It runs: no loader, no libc needed.
"$BIN" --version >&2

if [ -n "$OUT_DIR" ]; then
  mkdir -p "$OUT_DIR"
  cp "$BIN" "$OUT_DIR/carbon-kube"
  BIN="$OUT_DIR/carbon-kube"
fi
echo "build-static.sh: $(du -h "$BIN" | cut -f1) $BIN" >&2
echo "$BIN"
