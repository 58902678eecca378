#!/usr/bin/env bash
# Builds the test control plane binary to <repo>/target/controlplane/controlplane.
#
# - Uses the default GOMODCACHE/GOCACHE, so reruns (and CI with those dirs cached) are fast.
# - No-op when the binary is newer than every .go/go.mod/go.sum file of this module
#   (and this script).
# - Version ldflags make /version report the pinned Kubernetes release.
#
# - Also builds Kueue's controller manager from the same module to <out>/kueue (kueue-main.sh
#   generates its main from the pinned module; kueue/doc.go says why it is a second binary),
#   and copies Kueue's CRDs and webhook configurations to <out>/kueue-config for the tests.
#
# Usage: tests/controlplane/build.sh [--force]
# Prints the binary path on stdout when done.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT_DIR="${CONTROLPLANE_OUT_DIR:-$ROOT/target/controlplane}"
OUT="$OUT_DIR/controlplane"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

if ! command -v go >/dev/null 2>&1; then
  echo "controlplane/build.sh: 'go' not found in PATH: install Go 1.25+ (https://go.dev/dl/) to build the test control plane" >&2
  exit 1
fi

# Up to date?
if [ "$FORCE" = 0 ] && [ -x "$OUT" ] && [ -x "$OUT_DIR/kueue" ] && [ -d "$OUT_DIR/kueue-config/crd" ]; then
  newer=$(find "$HERE" \( -name '*.go' -o -name go.mod -o -name go.sum -o -name '*.sh' \) -newer "$OUT" -print -quit)
  if [ -z "$newer" ]; then
    echo "$OUT"
    exit 0
  fi
fi

goversion=$(go env GOVERSION)          # e.g. go1.26.8
minor=$(echo "$goversion" | sed -n 's/^go1\.\([0-9][0-9]*\).*/\1/p')
if [ -n "$minor" ] && [ "$minor" -lt 25 ] && [ "$(go env GOTOOLCHAIN)" = local ]; then
  echo "controlplane/build.sh: $goversion is too old and GOTOOLCHAIN=local: install Go 1.25+ (https://go.dev/dl/)" >&2
  exit 1
fi

K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' "$HERE/go.mod")
if [ -z "$K8S_VERSION" ]; then
  echo "controlplane/build.sh: cannot find the k8s.io/kubernetes version in $HERE/go.mod" >&2
  exit 1
fi
MAJOR=1
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)

LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS="$LDFLAGS -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR -X $pkg.gitTreeState=clean"
done

mkdir -p "$OUT_DIR"
bash "$HERE/kueue-main.sh" "$OUT_DIR/kueue-config"
echo "controlplane/build.sh: building kubernetes $K8S_VERSION control plane with $goversion (the first build takes many minutes)..." >&2
start=$(date +%s)
tmp="$OUT_DIR/build.tmp.$$"
mkdir -p "$tmp"
# One go build for both binaries: shared packages compile once, in parallel.
(
  cd "$HERE"
  CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly" \
    go build -ldflags "$LDFLAGS" -o "$tmp/" . ./kueue
)
mv -f "$tmp/kueue" "$OUT_DIR/kueue"
mv -f "$tmp/controlplane" "$OUT"
rmdir "$tmp"
echo "controlplane/build.sh: built $OUT in $(( $(date +%s) - start ))s" >&2
echo "$OUT"
