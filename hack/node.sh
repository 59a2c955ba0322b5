#!/usr/bin/env bash
# One real node for the running testbed (hack/testbed.sh): containerd (the CRI), a kubelet and
# kube-scheduler, so that Pods really run as containers, get an IP on a bridge of this host,
# restart when they crash and get SIGTERM when deleted. The images are built here from local
# files (no registry): localhost/pause:local (the sandbox) and localhost/agent-sim:local
# (agent-sim with its shared libraries, and busybox for `kubectl exec`). See docs/testbed.md,
# "A real node".
#
#   hack/node.sh up       install packages, build (cached) kubelet/kube-scheduler and the images,
#                         start containerd, kubelet and kube-scheduler, wait until the Node is
#                         Ready without taints. When up already: only rebuild and import the
#                         agent image (so a changed agent-sim reaches new pods).
#   hack/node.sh down     delete the node's pods and the Node, stop what `up` started, clean up
#                         what containerd and the kubelet leave on the host (mounts, bridge,
#                         cgroups, the kubelet's fixed paths). Safe without `up`.
#   hack/node.sh status   say what runs
#
# Environment: TESTBED_DIR, TESTBED_CACHE and TESTBED_K8S_VERSION as for hack/testbed.sh. The
# node's state (configs, logs, pid files, containerd's and the kubelet's roots) is in
# $TESTBED_DIR/node; `hack/testbed.sh down` runs `down` here first.
#
# One node per machine: the bridge, its subnet, the kubelet's cgroups and some of its paths are
# fixed. Needs root (containerd, network namespaces, mounts, cgroups).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TESTBED_DIR=${TESTBED_DIR:-$REPO/.testbed}
TESTBED_CACHE=${TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenbudget}
NODE_DIR=$TESTBED_DIR/node
NODE_NAME=tokenbudget-node
BRIDGE=tbnode0
POD_SUBNET=10.88.0.0/24
# The bridge's own address: the Node's InternalIP, where the kubelet API listens. Pods get
# no default route and nothing is masqueraded, so pod traffic stays on this host.
NODE_IP=10.88.0.1
CNI_NETWORK=tokenbudget-node
CNI_BIN=/usr/lib/cni
IMAGES=$TESTBED_CACHE/images
AGENT_IMAGE=localhost/agent-sim:local
# containerd runc containernetworking-plugins: the runtime and the pod network; busybox-static
# goes into the agent image (a shell for `kubectl exec`); gcc and libc6-dev build the static
# pause (binutils, with gcc, strips agent-sim; libc-bin has ldd); jq writes the OCI image JSON.
PACKAGES=(containerd runc containernetworking-plugins busybox-static gcc libc6-dev jq iproute2)

log() { printf 'node: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

testbed() { "$REPO/hack/testbed.sh" "$@"; }
kc() { kubectl --kubeconfig "$TESTBED_DIR/kubeconfig" "$@"; }
ctr_() { ctr --address "$NODE_DIR/containerd.sock" -n k8s.io "$@"; }

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ---- images: OCI archives made from local files, imported with ctr ----

sha() { sha256sum "$1" | cut -d' ' -f1; }
# The same bytes for the same files, so that the same image gets the same digest.
det_tar() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$1" -cf "$2" .; }

# oci_archive NAME ROOTFS CONFIG_JSON OUT: a one-layer image localhost/NAME:local.
oci_archive() {
  local name=$1 rootfs=$2 cfg=$3 dest=$4 tmp lay ld ls cd cs md ms
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenbudget-image.XXXXXX")
  lay=$tmp/layout
  mkdir -p "$lay/blobs/sha256"
  det_tar "$rootfs" "$tmp/layer.tar"
  ld=$(sha "$tmp/layer.tar"); ls=$(stat -c %s "$tmp/layer.tar")
  mv "$tmp/layer.tar" "$lay/blobs/sha256/$ld"
  jq -cn --argjson c "$cfg" --arg d "sha256:$ld" \
    '{architecture:"amd64",os:"linux",config:$c,rootfs:{type:"layers",diff_ids:[$d]}}' >"$tmp/config.json"
  cd=$(sha "$tmp/config.json"); cs=$(stat -c %s "$tmp/config.json")
  mv "$tmp/config.json" "$lay/blobs/sha256/$cd"
  jq -cn --arg cd "sha256:$cd" --argjson cs "$cs" --arg ld "sha256:$ld" --argjson ls "$ls" \
    '{schemaVersion:2,mediaType:"application/vnd.oci.image.manifest.v1+json",
      config:{mediaType:"application/vnd.oci.image.config.v1+json",digest:$cd,size:$cs},
      layers:[{mediaType:"application/vnd.oci.image.layer.v1.tar",digest:$ld,size:$ls}]}' >"$tmp/manifest.json"
  md=$(sha "$tmp/manifest.json"); ms=$(stat -c %s "$tmp/manifest.json")
  mv "$tmp/manifest.json" "$lay/blobs/sha256/$md"
  # containerd names the imported image after this annotation.
  jq -cn --arg md "sha256:$md" --argjson ms "$ms" --arg n "localhost/$name:local" \
    '{schemaVersion:2,manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$md,size:$ms,
      platform:{architecture:"amd64",os:"linux"},
      annotations:{"io.containerd.image.name":$n,"org.opencontainers.image.ref.name":"local"}}]}' >"$lay/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
  mkdir -p "$(dirname "$dest")"
  det_tar "$lay" "$dest.tmp" && mv "$dest.tmp" "$dest"
  rm -rf "$tmp"
}

# The CRI sandbox image: a static pause that waits for SIGTERM and reaps zombies. Cached.
build_pause_image() {
  [ -f "$IMAGES/pause.tar" ] && return 0
  local root
  root=$(mktemp -d "${TMPDIR:-/tmp}/tokenbudget-pause.XXXXXX")
  gcc -static -Os -s -o "$root/pause" "$REPO/hack/node/pause.c"
  oci_archive pause "$root" '{"Env":["PATH=/"],"Entrypoint":["/pause"]}' "$IMAGES/pause.tar"
  rm -rf "$root"
}

# agent-sim as the tests build it (target/debug, dynamically linked), with the shared libraries
# `ldd` names copied beside it at the same paths: the image only ever runs on this machine, so
# the host's glibc is the right one, and no second build of the whole dependency tree (a static
# one would need other RUSTFLAGS, hence its own target folder: minutes on 2 cores) is needed.
build_agent_image() {
  local bin=$REPO/target/debug/agent-sim root lib t=$SECONDS
  log "building agent-sim and $AGENT_IMAGE"
  ( cd "$REPO" && cargo build --locked --quiet --bin agent-sim ) || die "building agent-sim failed"
  root=$(mktemp -d "${TMPDIR:-/tmp}/tokenbudget-agent.XXXXXX")
  mkdir -p "$root"/{bin,tmp,etc}
  chmod 1777 "$root/tmp"
  # Without its debug information: a tenth of the size.
  strip -o "$root/agent-sim" "$bin"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cp /bin/busybox "$root/bin/busybox"
  for app in $(/bin/busybox --list); do [ "$app" = busybox ] || ln -s busybox "$root/bin/$app"; done
  echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  oci_archive agent-sim "$root" \
    '{"Env":["PATH=/bin"],"Entrypoint":["/agent-sim"],"Cmd":["--listen","0.0.0.0:9464"],"ExposedPorts":{"9464/tcp":{}}}' \
    "$NODE_DIR/images/agent-sim.tar"
  rm -rf "$root"
  log "agent image built in $((SECONDS - t))s"
}

import_images() {
  ctr_ images import "$IMAGES/pause.tar" >/dev/null
  ctr_ images import "$NODE_DIR/images/agent-sim.tar" >/dev/null
}

# ---- configuration ----

write_configs() {
  mkdir -p "$NODE_DIR"/{net.d,kubelet,kubelet-certs,pod-logs,cni-ipam,images}
  cat >"$NODE_DIR/containerd.toml" <<EOF
# containerd 1.6 (Debian bookworm) for one test kubelet: its own root, state and socket, so a
# system containerd (if any) is never touched; local images only; cgroupfs (no systemd).
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"

[grpc]
  address = "$NODE_DIR/containerd.sock"

[ttrpc]
  address = "$NODE_DIR/containerd-ttrpc.sock"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  # Built and imported by this script; nothing is ever pulled.
  sandbox_image = "localhost/pause:local"
  # Root without CAP_SYS_RESOURCE (a microVM): runc fails to lower oom_score_adj otherwise.
  restrict_oom_score_adj = true
  # Kernels without AppArmor or a hugetlb cgroup are common on test VMs.
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  # Pod network namespaces in our state folder, not /var/run/netns.
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
        Root = "$NODE_DIR/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$NODE_DIR/net.d"
    max_conf_num = 1
EOF
  # A bridge with the node as gateway but no default route for pods and no masquerading:
  # pods reach the host and each other, nothing else.
  cat >"$NODE_DIR/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE",
      "isGateway": true, "isDefaultGateway": false, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni-ipam",
               "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]]}
    },
    {"type": "loopback"}
  ]
}
EOF
  cat >"$NODE_DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Kubelets from 1.35 on refuse a cgroup v1 host unless told not to.
failCgroupV1: false
# No systemd. containerd 1.6 lacks the RuntimeConfig RPC, so the kubelet falls back to this
# value (a fallback the kubelet marks for removal in 1.38; containerd 2 answers the RPC).
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$NODE_DIR/containerd.sock
# The kubelet API on the bridge address only: the Node's InternalIP, which the apiserver dials
# for logs and exec. The testbed's apiserver has no kubelet client certificate, so access is
# anonymous and allowed: acceptable on a host-local bridge of a test machine only.
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $HEALTHZ_PORT
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
failSwapOn: false
podLogsDir: $NODE_DIR/pod-logs
# The imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A shared test machine: do not evict test pods for its disk or memory.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
# Quick feedback for tests.
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
# No cluster DNS in the testbed.
resolvConf: ""
maxPods: 30
EOF
}

# ---- processes ----

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# The pid file $NODE_DIR/NAME.pid names a live process that runs NAME with this testbed's state
# folder in its command line: only then is it ours to stop.
pid_alive() {
  local f=$NODE_DIR/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  grep -qa -- "$1" "/proc/$pid/cmdline" 2>/dev/null && grep -qa -- "$TESTBED_DIR/" "/proc/$pid/cmdline" 2>/dev/null
}

start_daemon() {
  local name=$1; shift
  nohup "$@" >"$NODE_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$NODE_DIR/$name.pid"
}

# stop NAME...: SIGTERM to those of them that are ours, SIGKILL after 10 s.
stop() {
  local name pids=() pid
  for name in "$@"; do
    pid_alive "$name" && pids+=("$(cat "$NODE_DIR/$name.pid")")
    rm -f "$NODE_DIR/$name.pid"
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 100); do
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && { sleep 0.1; continue 2; }; done
    return 0
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

wait_for() {    # wait_for TRIES(0.5 s each) CMD...
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# Ready, and the controller-manager has taken the not-ready taint off: pods can be scheduled.
node_schedulable() {
  node_ready && [ -z "$(kc get node "$NODE_NAME" -o jsonpath='{.spec.taints}')" ]
}

# A kubelet of this node's name started from another state folder: another testbed's node.
foreign_node() {
  local f
  for f in /proc/[0-9]*/cmdline; do
    grep -qa -- "--hostname-override=$NODE_NAME" "$f" 2>/dev/null || continue
    grep -qa -- "$NODE_DIR/" "$f" 2>/dev/null || { tr '\0' ' ' <"$f"; return 0; }
  done
  return 1
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "needs root (containerd, network namespaces, mounts, cgroups)"
  testbed status >/dev/null 2>&1 || die "the testbed of $TESTBED_DIR is not running: start it with hack/testbed.sh up"
  eval "$(testbed env)"
  if pid_alive containerd && pid_alive kubelet && pid_alive kube-scheduler && node_schedulable 2>/dev/null; then
    build_agent_image
    import_images
    log "already up: node $NODE_NAME ($NODE_IP); $AGENT_IMAGE imported again"
    return 0
  fi
  local other
  if other=$(foreign_node); then
    die "another node runs on this machine (one per machine): $other; stop it with hack/node.sh down and its TESTBED_DIR"
  fi
  # Whatever a crashed or half-started run left behind goes first.
  if [ -d "$NODE_DIR" ]; then
    log "clearing what an earlier node of this testbed left"
    cmd_down >/dev/null || die "could not clear what an earlier node left: see hack/node.sh down"
  fi
  local t=$SECONDS
  install_packages
  testbed install-node
  mkdir -p "$NODE_DIR/logs"
  KUBELET_PORT=$(free_port); HEALTHZ_PORT=$(free_port)
  write_configs
  build_pause_image
  build_agent_image

  # The bridge exists before the kubelet so that its address can be the Node's IP.
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up

  start_daemon containerd containerd --config "$NODE_DIR/containerd.toml"
  wait_for 60 ctr --address "$NODE_DIR/containerd.sock" version \
    || { tail -n 20 "$NODE_DIR/logs/containerd.log" >&2; die "containerd did not start"; }
  import_images

  local bin=$TESTBED_CACHE/k8s-$(cat "$TESTBED_DIR/version")
  start_daemon kubelet "$bin/kubelet" --config="$NODE_DIR/kubelet-config.yaml" \
    --kubeconfig="$TESTBED_DIR/kubeconfig" --root-dir="$NODE_DIR/kubelet" --cert-dir="$NODE_DIR/kubelet-certs" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  start_daemon kube-scheduler "$bin/kube-scheduler" --kubeconfig="$TESTBED_DIR/kubeconfig" \
    --authentication-kubeconfig="$TESTBED_DIR/kubeconfig" --authorization-kubeconfig="$TESTBED_DIR/kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0
  wait_for 120 node_schedulable \
    || { tail -n 30 "$NODE_DIR/logs/kubelet.log" >&2; die "node $NODE_NAME not Ready and untainted within 60 s"; }
  log "up in $((SECONDS - t))s: node $NODE_NAME ($NODE_IP), pods on $POD_SUBNET via $BRIDGE; image $AGENT_IMAGE (imagePullPolicy: Never)"
}

cmd_down() {
  # Only a node this state folder started is ours to tear down: another testbed's node (one
  # per machine) keeps its bridge and cgroups.
  [ -d "$NODE_DIR" ] || { log "not running"; return 0; }
  local api=
  [ -f "$TESTBED_DIR/kubeconfig" ] && kc get --raw /readyz >/dev/null 2>&1 && api=1
  # 1. The kubelet tears the pods down through the CRI: SIGTERM, CNI DEL, IPs released.
  if [ -n "$api" ] && pid_alive kubelet; then
    kc delete pods --all-namespaces --field-selector "spec.nodeName=$NODE_NAME" \
      --grace-period=5 --timeout=60s --wait >/dev/null 2>&1 || true
  fi
  stop kube-scheduler kubelet
  # The Node goes too, so that later tests see no node at all.
  [ -n "$api" ] && kc delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  # 2. Whatever is left in containerd: killed and deleted.
  if pid_alive containerd; then
    local c
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  # Shims of our containerd (its socket is in their command line) that outlived it.
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    grep -qa -- "containerd-shim" "$f" 2>/dev/null && grep -qa -- "$NODE_DIR/containerd.sock" "$f" 2>/dev/null || continue
    pid=${f#/proc/}; pid=${pid%/cmdline}
    kill -9 "$pid" 2>/dev/null || true
  done
  # 3. Mounts under the state folder (container root filesystems, network namespaces, volumes),
  # deepest first, so that removing the folder cannot reach into a mounted file system.
  awk -v s="$NODE_DIR/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if awk -v s="$NODE_DIR/" 'index($2, s) == 1 {found=1} END {exit !found}' /proc/mounts; then
    log "error: mounts under $NODE_DIR remain; not removing it"
    return 1
  fi
  # The kubelet links each container's log into /var/log/containers whatever podLogsDir says:
  # our links (into the state folder) go with it.
  local l
  for l in /var/log/containers/*.log; do
    if [ -L "$l" ]; then case $(readlink "$l") in "$NODE_DIR"/*) rm -f "$l" ;; esac; fi
  done
  rm -rf "$NODE_DIR"
  # 4. What containerd 1.6, the CNI plugins and the kubelet put in fixed places whatever their
  # configuration says; removed only where nothing else is left in them.
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet/plugins_registry /var/lib/kubelet/plugins \
    /var/lib/kubelet /var/log/containers /run/containerd/s /run/containerd 2>/dev/null || true
  rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  # The kubelet's cgroups (cgroup v1: one tree per controller), leaves first.
  local h
  for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  log "stopped"
}

cmd_status() {
  local n up=0
  for n in containerd kubelet kube-scheduler; do
    if pid_alive "$n"; then echo "$n: running (pid $(cat "$NODE_DIR/$n.pid"))"; up=$((up + 1)); else echo "$n: stopped"; fi
  done
  if [ "$up" = 3 ] && testbed status >/dev/null 2>&1 && node_schedulable; then
    echo "node $NODE_NAME: Ready at $NODE_IP, pods on $POD_SUBNET"
  else
    echo "node $NODE_NAME: not Ready"; return 1
  fi
}

# kubectl of the testbed's version, as `testbed.sh env` puts it on the PATH.
if testbed status >/dev/null 2>&1; then eval "$(testbed env)"; fi

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
