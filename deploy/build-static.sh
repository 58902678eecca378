#!/usr/bin/env bash
# The release build: one statically linked carbon-kube binary for Linux, for
# amd64 or arm64 (Graviton), natively or cross-built from the other one.
#
# The Dockerfile runs this script (once per image platform), and so do CI
# (.ci/run) and the release workflow outside Docker, so the image, the release
# binaries and the tested binary come from the same command and flags:
#
#   RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' \
#     cargo build --release --locked --target <triple, e.g. aarch64-unknown-linux-gnu>
#
# `--target` is what keeps crt-static away from build scripts and proc macros
# (they must stay dynamic); the release profile in Cargo.toml adds size
# optimisation, fat LTO, strip and panic=abort. The result is a static,
# position-dependent executable that needs no libc in the image
# (distroless/static or scratch). Not static-pie: a static-pie binary applies
# its own relocations at start, which reads its whole relocation table and
# copies every page of pointers it patches (1.2 MiB resident, see the README's
# Performance section); the agent runs alone in its pod, so address-space
# randomisation of its code gains little against that.
#
# Cross-building (the other architecture than the host's) links with Debian's
# cross gcc (`<arch>-linux-gnu-gcc`, also the C compiler for ring): install it
# and the Rust target with `bash deploy/cross-deps.sh <arch>`.
#
# Usage: deploy/build-static.sh [--arch amd64|arm64] [--out DIR]
#   --arch takes Docker's TARGETARCH names; default: the host's.
#   Prints the binary's path on stdout (DIR/carbon-kube with --out) and fails
#   unless the binary is statically linked for that architecture.
# Environment: CARBON_KUBE_TARGET sets the target triple instead of --arch;
#   CARGO_TARGET_DIR is honoured; CARGO_TARGET_<TRIPLE>_LINKER overrides the
#   cross linker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage="usage: build-static.sh [--arch amd64|arm64] [--out DIR]"
OUT_DIR=""
ARCH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    --arch) ARCH="$2"; shift 2 ;;
    --arch=*) ARCH="${1#--arch=}"; shift ;;
    *) echo "build-static.sh: unknown argument $1 ($usage)" >&2; exit 2 ;;
  esac
done

HOST="$(rustc -vV | sed -n 's/^host: //p')"
case "$ARCH" in
  "") TARGET="${CARBON_KUBE_TARGET:-$HOST}" ;;
  amd64) TARGET=x86_64-unknown-linux-gnu ;;
  arm64) TARGET=aarch64-unknown-linux-gnu ;;
  *) echo "build-static.sh: --arch $ARCH: expected amd64 or arm64" >&2; exit 2 ;;
esac
case "$TARGET" in
  x86_64-unknown-linux-gnu) CPU=x86_64; FILE_ARCH="x86-64" ;;
  aarch64-unknown-linux-gnu) CPU=aarch64; FILE_ARCH="ARM aarch64" ;;
  *) echo "build-static.sh: target $TARGET: expected x86_64- or aarch64-unknown-linux-gnu" >&2; exit 2 ;;
esac

cd "$ROOT"
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$TARGET" ]; then
  echo "build-static.sh: the Rust standard library for $TARGET is missing: rustup target add $TARGET (or bash deploy/cross-deps.sh)" >&2
  exit 1
fi

# Cross: cargo links with, and ring's build script compiles C with, the target's gcc.
RUN=()
if [ "$TARGET" != "$HOST" ]; then
  triple_var="$(echo "$TARGET" | tr 'a-z-' 'A-Z_')"
  linker_var="CARGO_TARGET_${triple_var}_LINKER"
  linker="${!linker_var:-$CPU-linux-gnu-gcc}"
  if ! command -v "$linker" >/dev/null 2>&1; then
    echo "build-static.sh: cross linker $linker not found: bash deploy/cross-deps.sh ${ARCH:-<arch>} (Debian gcc-${CPU//_/-}-linux-gnu)" >&2
    exit 1
  fi
  export "$linker_var=$linker"
  export "CC_${TARGET//-/_}=$linker"
  # The binary runs here only under user-mode emulation (Debian qemu-user-static).
  if command -v "qemu-$CPU-static" >/dev/null 2>&1; then
    RUN=("qemu-$CPU-static")
  else
    echo "build-static.sh: qemu-$CPU-static not found: the $CPU binary is checked but not run" >&2
  fi
fi

# Exactly this RUSTFLAGS value: any other string changes cargo's fingerprint and
# rebuilds everything.
export RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static'
# On amd64 Rust links with its own lld, which folds identical functions (ICF): a
# smaller binary, and fewer of its pages resident. The arm64 cross-linker is GNU ld,
# which cannot.
if [ "$TARGET" = x86_64-unknown-linux-gnu ]; then
  RUSTFLAGS="$RUSTFLAGS -C link-arg=-Wl,--icf=all"
fi
echo "build-static.sh: cargo build --release --locked --target $TARGET (RUSTFLAGS=$RUSTFLAGS)" >&2
cargo build --release --locked --target "$TARGET" --bin carbon-kube >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/carbon-kube"

# Static and for the right machine, or fail: `file` says "statically linked"
# ("static-pie linked" would mean the relocation model was lost); without `file` (slim images), ldd must not list any
# shared library (native builds only: ldd cannot read a foreign binary).
if command -v file >/dev/null 2>&1; then
  kind="$(file -L "$BIN")"
  case "$kind" in
    *"statically linked"*) ;;
    *) echo "build-static.sh: $BIN is not static: $kind" >&2; exit 1 ;;
  esac
  case "$kind" in
    *"$FILE_ARCH"*) ;;
    *) echo "build-static.sh: $BIN is not a $FILE_ARCH binary: $kind" >&2; exit 1 ;;
  esac
elif [ "$TARGET" != "$HOST" ]; then
  echo "build-static.sh: \`file\` is needed to check a cross-built binary (apt-get install file)" >&2
  exit 1
elif ldd "$BIN" 2>&1 | grep -q '=>'; then
  echo "build-static.sh: $BIN is dynamically linked:" >&2
  ldd "$BIN" >&2
  exit 1
fi

# It runs: no loader, no libc needed.
if [ "$TARGET" = "$HOST" ] || [ ${#RUN[@]} -gt 0 ]; then
  "${RUN[@]}" "$BIN" --version >&2
fi

if [ -n "$OUT_DIR" ]; then
  mkdir -p "$OUT_DIR"
  cp "$BIN" "$OUT_DIR/carbon-kube"
  BIN="$OUT_DIR/carbon-kube"
fi
echo "build-static.sh: $(du -h "$BIN" | cut -f1) $BIN" >&2
echo "$BIN"
