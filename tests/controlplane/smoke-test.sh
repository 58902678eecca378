#!/usr/bin/env bash
# Smoke test of the control plane with kubectl: builds (if needed), starts `controlplane run`,
# checks version, scheduling, controllers, node-bound tokens and metrics, then stops it with
# SIGTERM and checks that no process is left behind.
#
# Usage: tests/controlplane/smoke-test.sh      (needs kubectl in PATH)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=$("$HERE/build.sh")
DIR=$(mktemp -d /tmp/controlplane-smoke-XXXXXX)
OUT="$DIR.out"
PID=
KEEP=0
cleanup() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  [ "$KEEP" = 1 ] || rm -rf "$DIR"
  rm -f "$OUT"
}
trap cleanup EXIT

fail() { echo "SMOKE FAIL: $*" >&2; echo "--- logs kept in $DIR" >&2; KEEP=1; exit 1; }

start=$(date +%s.%N)
"$BIN" run --dir "$DIR" >"$OUT" &
PID=$!
for _ in $(seq 1 600); do
  grep -q '^READY ' "$OUT" && break
  kill -0 $PID 2>/dev/null || fail "controlplane exited before READY"
  sleep 0.1
done
line=$(head -1 "$OUT")
[[ "$line" =~ ^READY\ kubeconfig=([^ ]+)\ server=(https://127\.0\.0\.1:[0-9]+)$ ]] || fail "bad READY line: $line"
echo "startup: $(echo "$(date +%s.%N) - $start" | bc)s: $line"
export KUBECONFIG="${BASH_REMATCH[1]}"
[ "$KUBECONFIG" = "$DIR/kubeconfig" ] || fail "kubeconfig not in DIR"
[ -s "$DIR/admin-token" ] && [ -s "$DIR/ca.crt" ] || fail "admin-token/ca.crt missing"

want=$("$BIN" version)
got=$(kubectl get --raw /version | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')
[ "$got" = "$want" ] || fail "/version says $got, want $want"

kubectl create -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata:
  name: smoke-node
  labels: {topology.kubernetes.io/zone: z1, topology.kubernetes.io/region: r1, kubernetes.io/hostname: smoke-node}
status:
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  conditions:
  - {type: Ready, status: "True", reason: KubeletReady, message: fake, lastHeartbeatTime: "2025-01-01T00:00:00Z", lastTransitionTime: "2025-01-01T00:00:00Z"}
YAML
[ -z "$(kubectl get node smoke-node -o jsonpath='{.spec.taints}')" ] || fail "node got taints"

kubectl create deployment web --image=nginx --replicas=2 >/dev/null
for _ in $(seq 1 100); do
  n=$(kubectl get pods -l app=web -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep -c smoke-node || true)
  [ "$n" = 2 ] && break
  sleep 0.2
done
[ "$n" = 2 ] || fail "deployment pods not scheduled"
kubectl get rs -l app=web -o name | grep -q replicaset || fail "no ReplicaSet"

kubectl create job smoke-job --image=busybox -- true >/dev/null
for _ in $(seq 1 50); do kubectl get pods -l job-name=smoke-job -o name | grep -q pod && break; sleep 0.2; done
kubectl get pods -l job-name=smoke-job -o name | grep -q pod || fail "job created no pod"

kubectl create serviceaccount smoke -n default >/dev/null
token=$(kubectl create token smoke --bound-object-kind Node --bound-object-name smoke-node)
whoami=$(kubectl auth whoami --token="$token" -o jsonpath='{.status.userInfo.extra.authentication\.kubernetes\.io/node-name}')
[[ "$whoami" == *smoke-node* ]] || fail "node-bound token lacks node-name extra: $whoami"

metrics=$(kubectl get --raw /metrics)
grep -q '^apiserver_request_total' <<<"$metrics" || fail "no apiserver_request_total metric"

# Garbage collection: deleting the Deployment removes the ReplicaSet.
kubectl delete deployment web --wait=false >/dev/null
for _ in $(seq 1 100); do [ -z "$(kubectl get rs -l app=web -o name)" ] && break; sleep 0.2; done
[ -z "$(kubectl get rs -l app=web -o name)" ] || fail "ReplicaSet not garbage-collected"

kids=$(pgrep -P $PID | tr '\n' ' ')
kill -TERM $PID
wait $PID || fail "controlplane exit status $? after SIGTERM"
sleep 0.5
for k in $kids; do [ -d /proc/$k ] && fail "child $k left behind"; done
PID=
echo "smoke test passed"
