#!/usr/bin/env bash
# Host plumbing for real test nodes (kubelet + containerd on this machine), driven by
# tests/support/nodes.rs, which owns the processes' lifecycle. Everything a node adds to
# the host is recorded under $BASE so that `restore` can undo it, also after a killed run.
#
#   host.sh prepare API_PORT        save host state; route 10.0.0.1:443 (the `kubernetes`
#                                   Service) to the apiserver; keep pod traffic on the host
#   host.sh node-up NAME INDEX      node IP 10.213.0.INDEX on lo, bridge and pod /24
#                                   10.214.INDEX.0/24, cgroup root, containerd and CNI config
#   host.sh node-down NAME          stop what runs for the node and remove all it left behind
#   host.sh restore                 every node down, rules and chains removed, sysctls back
#
# Needs root, iptables, ip, and the CNI plugins in /usr/lib/cni (tests/tools/install.sh).
set -euo pipefail

BASE=/var/lib/carbon-kube-nodes
STATE="$BASE/host-state"
CNI_BIN=/usr/lib/cni
POD_RANGE=10.214.0.0/16
# Sysctls the kubelet (overcommit, panic) and the bridge plugin (ip_forward) change.
SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward"
TABLES="filter nat mangle"

log() { echo "host.sh: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "real nodes need root (kubelet, containerd, iptables, cgroups)"

iptables_cmds() {
  echo iptables
  command -v ip6tables >/dev/null 2>&1 && echo ip6tables
  return 0
}

chains() { # IPT TABLE: the chain names of a table
  "$1" -t "$2" -S 2>/dev/null | awk '$1 == "-N" || $1 == "-P" { print $2 }' | sort -u
}

nft_tables() { # "family name" of each nftables table, if nft is there
  command -v nft >/dev/null 2>&1 || return 0
  nft list tables | awk '$1 == "table" { print $2, $3 }'
}

# The cgroup v1 hierarchies (one directory per mounted controller set), or the v2 root.
cgroup_hierarchies() {
  awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts
}

our_rules() {
  echo "nat PREROUTING -d 10.0.0.1/32 -p tcp --dport 443 -j DNAT --to-destination 127.0.0.1:$1"
  echo "filter FORWARD -s $POD_RANGE ! -d $POD_RANGE -j DROP"
}

prepare() {
  local port="$1"
  [ -e "$STATE" ] && { log "state of an earlier run found: restoring first"; restore; }
  mkdir -p "$BASE"
  {
    echo "api_port $port"
    for s in $SYSCTLS; do echo "sysctl $s $(sysctl -n "$s")"; done
    for ipt in $(iptables_cmds); do
      for t in $TABLES; do
        for c in $(chains "$ipt" "$t"); do echo "chain $ipt $t $c"; done
      done
    done
    # With iptables-nft, the first rule creates its table.
    nft_tables | sed 's/^/nft_table /'
  } > "$STATE.tmp"
  mv "$STATE.tmp" "$STATE"
  our_rules "$port" | while read -r table chain rule; do
    # shellcheck disable=SC2086
    iptables -t "$table" -I "$chain" $rule
  done
}

node_up() {
  local name="$1" i="$2"
  local dir="$BASE/$name" ip="10.213.0.$i" bridge="ckbr$i" subnet="10.214.$i.0/24"
  [ -e "$STATE" ] || die "run 'host.sh prepare' first"
  mkdir -p "$dir/cni/net.d" "$dir/run" "$dir/kubelet" "$dir/logs"
  echo "$i" > "$dir/index"
  ip addr add "$ip/32" dev lo 2>/dev/null || true
  # The bridge exists before the first pod so that route_localnet can be set on it: pods
  # reach 10.0.0.1:443, which the DNAT rule sends to the apiserver on 127.0.0.1.
  ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
  ip link set "$bridge" up
  sysctl -qw "net.ipv4.conf.$bridge.route_localnet=1"

  # The kubelet's cgroup root (cgroupfs driver) in every hierarchy; cpuset needs its
  # cpus and mems before anything can join it.
  for h in $(cgroup_hierarchies); do
    mkdir -p "$h/carbon-kube-$name"
    if [ -e "$h/cpuset.cpus" ] && [ -e "$h/carbon-kube-$name/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" > "$h/carbon-kube-$name/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h/carbon-kube-$name/cpuset.mems"
    fi
  done

  cat > "$dir/cni/net.d/10-$bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$bridge",
  "plugins": [{
    "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$subnet" }]],
              "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "$dir/cni/ipam" }
  }]
}
EOF

  # restrict_oom_score_adj: runc cannot lower oom_score_adj where CAP_SYS_RESOURCE is
  # outside the bounding set (as in this project's VMs); harmless elsewhere.
  cat > "$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd"
state = "$dir/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.grpc.v1.introspection-disabled"]
[grpc]
  address = "$dir/run/containerd.sock"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/carbon-kube/pause:1"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/run/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
EOF
}

# Kills a recorded process (pid file) if it is still the one we started: its command
# line names the node's directory.
kill_recorded() {
  local pidfile="$1" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -q "$(dirname "$pidfile")"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

node_down() {
  # Teardown goes on past any one failure: everything else must still be undone.
  set +e
  local name="$1"
  local dir="$BASE/$name" i
  [ -d "$dir" ] || return 0
  i="$(cat "$dir/index" 2>/dev/null || echo)"
  kill_recorded "$dir/kubelet.pid"
  # Containers: every process in the node's cgroups (pods, their shims' children) and the
  # shims, which run outside them but name the node's socket.
  for h in $(cgroup_hierarchies); do
    [ -d "$h/carbon-kube-$name" ] || continue
    find "$h/carbon-kube-$name" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
      kill -KILL "$pid" 2>/dev/null || true
    done
  done
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -q -- "-address $dir/run/containerd.sock"; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  kill_recorded "$dir/containerd.pid"
  sleep 0.2

  # Mounts under the node (pod volumes, rootfs overlays, sandbox shm, network namespaces),
  # deepest first.
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done

  for h in $(cgroup_hierarchies); do
    [ -d "$h/carbon-kube-$name" ] || continue
    for _ in 1 2 3 4 5; do
      find "$h/carbon-kube-$name" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$h/carbon-kube-$name" ] || break
      sleep 0.2
    done
    [ -d "$h/carbon-kube-$name" ] && log "cgroup $h/carbon-kube-$name could not be removed"
  done

  if [ -n "$i" ]; then
    ip link del "ckbr$i" 2>/dev/null || true
    ip addr del "10.213.0.$i/32" dev lo 2>/dev/null || true
  fi
  # The kubelet links container logs into /var/log/containers.
  find /var/log/containers -maxdepth 1 -type l -lname "$dir/*" -delete 2>/dev/null || true
  rm -rf "$dir"
}

restore() {
  set +e
  local d
  for d in "$BASE"/*/; do
    [ -d "$d" ] && node_down "$(basename "$d")"
  done
  [ -e "$STATE" ] || return 0
  local port
  port="$(awk '$1 == "api_port" { print $2 }' "$STATE")"
  our_rules "$port" | while read -r table chain rule; do
    # shellcheck disable=SC2086
    while iptables -t "$table" -D "$chain" $rule 2>/dev/null; do :; done
  done
  # Chains that appeared since `prepare` (the kubelet's KUBE-*): first the rules that
  # jump to them, then the chains.
  for ipt in $(iptables_cmds); do
    for t in $TABLES; do
      local new
      new="$(comm -13 <(awk -v i="$ipt" -v t="$t" '$1 == "chain" && $2 == i && $3 == t { print $4 }' "$STATE" | sort -u) <(chains "$ipt" "$t"))"
      [ -n "$new" ] || continue
      for c in $new; do
        "$ipt" -t "$t" -S | awk -v c="$c" '$1 == "-A" && $2 != c && / -j / { for (k = 1; k <= NF; k++) if ($k == "-j" && $(k + 1) == c) { print; break } }' |
          while read -r rule; do
            # eval: the rule as -S prints it, with its quoted comment.
            eval "$ipt -t $t -D ${rule#-A }" 2>/dev/null || true
          done
      done
      for c in $new; do "$ipt" -t "$t" -F "$c" 2>/dev/null || true; done
      for c in $new; do "$ipt" -t "$t" -X "$c" 2>/dev/null || true; done
    done
  done
  comm -13 <(awk '$1 == "nft_table" { print $2, $3 }' "$STATE" | sort) <(nft_tables | sort) |
    while read -r family table; do nft delete table "$family" "$table"; done
  awk '$1 == "sysctl" { print $2, $3 }' "$STATE" | while read -r key value; do
    sysctl -qw "$key=$value"
  done
  rm -f "$STATE"
}

case "${1:-}" in
  prepare) prepare "$2" ;;
  node-up) node_up "$2" "$3" ;;
  node-down) node_down "$2" ;;
  restore) restore ;;
  *) die "usage: host.sh prepare API_PORT | node-up NAME INDEX | node-down NAME | restore" ;;
esac
