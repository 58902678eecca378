#!/usr/bin/env bash
# Builds container images without Docker or a registry, as docker-archive tars (the
# `docker save` layout: manifest.json, the config JSON, one layer tar) that
# `ctr -n k8s.io images import`, `docker load` and `podman load` accept.
#
#   deploy/image.sh release --binary BIN --out FILE [--tag TAG]
#       The release image, as the Dockerfile's final stage describes it: the static
#       binary at /carbon-kube on a distroless/static-debian12:nonroot-like root
#       (/etc/passwd and /etc/group with nonroot 65532, the CA certificates of this
#       machine at /etc/ssl/certs/ca-certificates.crt, /home/nonroot, /tmp; no shell,
#       no libc), USER 65532:65532, EXPOSE 9464, ENTRYPOINT ["/carbon-kube", "agent"],
#       and the base image's PATH, SSL_CERT_FILE and working directory.
#       TAG defaults to ghcr.io/carbon-kube/carbon-kube:<chart appVersion>, the chart's
#       default image. BIN comes from deploy/build-static.sh.
#
#   deploy/image.sh pause --out FILE [--tag TAG]
#       A pod sandbox image: deploy/image/pause.c built static, as /pause, user 65535
#       (as Kubernetes' own pause image). TAG defaults to localhost/carbon-kube/pause:1;
#       a node's containerd must name it as its sandbox_image.
#
# The layer is reproducible: fixed owners, modes and timestamps, entries sorted, so the
# same binary gives the same image ID. tests/real_nodes.rs checks the release image
# against the Dockerfile's final stage, so the two cannot drift apart.
# Needs python3 (the tar writer), and gcc with a static libc for the pause image.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() {
  echo "usage: deploy/image.sh release --binary BIN --out FILE [--tag TAG] | pause --out FILE [--tag TAG]" >&2
  exit 2
}

KIND="${1:-}"
[ -n "$KIND" ] || usage
shift
BINARY="" OUT="" TAG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    *) usage ;;
  esac
done
[ -n "$OUT" ] || usage
command -v python3 >/dev/null 2>&1 || { echo "image.sh: python3 is required (it writes the image tar)" >&2; exit 1; }

ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT

case "$KIND" in
  release)
    [ -n "$BINARY" ] || usage
    [ -x "$BINARY" ] || { echo "image.sh: $BINARY is not an executable (build it with deploy/build-static.sh)" >&2; exit 1; }
    CA=/etc/ssl/certs/ca-certificates.crt
    [ -s "$CA" ] || { echo "image.sh: $CA is missing: install the ca-certificates package" >&2; exit 1; }
    if [ -z "$TAG" ]; then
      version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$HERE/helm/carbon-kube/Chart.yaml")"
      TAG="ghcr.io/carbon-kube/carbon-kube:$version"
    fi
    mkdir -p "$ROOTFS/etc/ssl/certs" "$ROOTFS/home/nonroot" "$ROOTFS/tmp"
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
      'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
      'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$ROOTFS/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' > "$ROOTFS/etc/group"
    printf '%s\n' 'hosts: files dns' > "$ROOTFS/etc/nsswitch.conf"
    cp "$CA" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    cp "$BINARY" "$ROOTFS/carbon-kube"
    CONFIG='{
      "User": "65532:65532",
      "ExposedPorts": {"9464/tcp": {}},
      "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
      "Entrypoint": ["/carbon-kube", "agent"],
      "WorkingDir": "/home/nonroot"
    }'
    ;;
  pause)
    TAG="${TAG:-localhost/carbon-kube/pause:1}"
    command -v gcc >/dev/null 2>&1 || { echo "image.sh: gcc is required to build the pause image" >&2; exit 1; }
    gcc -static -Os -s -o "$ROOTFS/pause" "$HERE/image/pause.c" ||
      { echo "image.sh: building a static pause failed (Debian: apt-get install gcc libc6-dev)" >&2; exit 1; }
    CONFIG='{"User": "65535:65535", "Entrypoint": ["/pause"], "WorkingDir": "/"}'
    ;;
  *) usage ;;
esac

python3 - "$ROOTFS" "$OUT" "$TAG" "$CONFIG" <<'PY'
import hashlib, io, json, os, stat, sys, tarfile

rootfs, out, tag, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
# Owners and modes as in distroless: everything root's, the user's home its own.
owners = {"home/nonroot": (65532, 0o700), "tmp": (0, 0o1777)}

def entries():
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield os.path.relpath(os.path.join(dirpath, name), rootfs)

layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for rel in sorted(entries()):
        path = os.path.join(rootfs, rel)
        info = tar.gettarinfo(path, arcname=rel)
        info.mtime = 0
        info.uname = info.gname = ""
        uid, mode = owners.get(rel, (0, None))
        info.uid = info.gid = uid
        if mode is not None:
            info.mode = mode
        elif info.isdir():
            info.mode = 0o755
        else:
            info.mode = 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644
        with open(path, "rb") if info.isfile() else io.BytesIO() as data:
            tar.addfile(info, data if info.isfile() else None)
layer_bytes = layer.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()

image = {
    "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
    "os": "linux",
    "created": "1970-01-01T00:00:00Z",
    "config": config,
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "deploy/image.sh"}],
}
config_bytes = json.dumps(image, sort_keys=True, separators=(",", ":")).encode()
config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
layer_name = diff_id.split(":")[1] + "/layer.tar"
manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]

tmp = out + ".tmp"
with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as archive:
    for name, data in [
        (config_name, config_bytes),
        (layer_name, layer_bytes),
        ("manifest.json", json.dumps(manifest).encode()),
    ]:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        archive.addfile(info, io.BytesIO(data))
os.replace(tmp, out)
print(f"image.sh: {tag} ({len(layer_bytes) // 1024} KiB layer) -> {out}", file=sys.stderr)
PY
echo "$OUT"
