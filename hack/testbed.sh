#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) on loopback,
# for the demo and the integration tests. Every binary is built from Go modules (the Go module
# proxy), the way any Go program that depends on k8s.io/kubernetes is built; nothing is
# downloaded prebuilt. See docs/testbed.md.
#
#   hack/testbed.sh install   build (once per version) and cache the binaries, install packages
#   hack/testbed.sh install-node   also build kubelet and kube-scheduler (for hack/node.sh)
#   hack/testbed.sh up        install if needed, start (idempotent), wait for readiness
#   hack/testbed.sh down      stop exactly the processes `up` started (safe without `up`)
#   hack/testbed.sh env       print `export KUBECONFIG=... PATH=<kubectl of this version>:...`
#   hack/testbed.sh status    say whether it runs, where, and which version
#   hack/testbed.sh stop apiserver|etcd    stop that one process, keeping every other and all data
#   hack/testbed.sh start apiserver|etcd   start it again, as before, and wait until the API is ready
#
# Environment:
#   TESTBED_K8S_VERSION   Kubernetes version; default 1.37.2 (supported: docs/compatibility.md)
#   TESTBED_ETCD_VERSION  etcd version; default 3.6.16
#   TESTBED_DIR           state (pids, logs, certs, kubeconfig); default <repo>/.testbed
#   TESTBED_CACHE         where built binaries live, one folder per version;
#                         default ~/.cache/tokenbudget (k8s-<version>/, etcd-<version>/)
#   TESTBED_CM_QPS        the controller-manager's --kube-api-qps (its burst twice that); default
#                         its own (20): raise it to create thousands of pods quickly (benches/scale.rs)
set -euo pipefail

K8S_VERSION=${TESTBED_K8S_VERSION:-1.37.2}
ETCD_VERSION=${TESTBED_ETCD_VERSION:-3.6.16}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTBED_DIR=${TESTBED_DIR:-$REPO/.testbed}
TESTBED_CACHE=${TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenbudget}
K8S_BIN=$TESTBED_CACHE/k8s-$K8S_VERSION
ETCD_BIN=$TESTBED_CACHE/etcd-$ETCD_VERSION
ADMIN_TOKEN=admintoken

log() { printf 'testbed: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_runtime() {
  local need=()
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  command -v python3 >/dev/null || need+=(python3)
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
}

# Go 1.21 or later: it fetches the toolchain a module asks for (GOTOOLCHAIN=auto) through the
# Go module proxy. Debian's golang-go of bookworm is 1.19, too old for that.
check_go() {
  command -v go >/dev/null || die "no Go toolchain on the PATH: install Go 1.21 or later (https://go.dev/doc/install)"
  local v
  v=$(go env GOVERSION | sed 's/^go//')
  case "$v" in
    1.1[0-9]*|1.20*|1.[0-9]|1.[0-9].*) die "Go $v is too old: Go 1.21 or later is needed to build Kubernetes";;
  esac
}

# Runs `go build` of the main packages "$@" in the module of folder $work (its go.mod written by
# the caller) with $ldflags, leaving the binaries in $work/out/.
go_build() {
  local work=$1; shift
  (
    cd "$work"
    export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=auto
    go build -trimpath -ldflags "$ldflags" -o "$work/out/" "$@" >>"$work/build.log" 2>&1 \
      || { tail -n 40 "$work/build.log" >&2; exit 1; }
  )
}

# Moves a built binary into the cache in one rename, so a cut build never leaves half a file.
cache_binary() {
  local from=$1 dest=$2
  mkdir -p "$(dirname "$dest")"
  cp "$from" "$dest.tmp" && mv "$dest.tmp" "$dest"
}

# k8s.io/kubernetes replaces each staging module (k8s.io/api, k8s.io/client-go, ...) with a
# path inside its own tree, so it cannot be built as a dependency as it is: the module here
# requires it and replaces each of those with the published module of the same release.
# Builds the commands "$@" (names under k8s.io/kubernetes/cmd/) of $K8S_VERSION into $K8S_BIN.
build_kubernetes() {
  local v=$K8S_VERSION minor work gomod pkg bin pkgs=()
  minor=${v#1.}; minor=${minor%%.*}
  work=$(mktemp -d "${TMPDIR:-/tmp}/tokenbudget-k8s-build.XXXXXX")
  log "building $* $v from Go modules (first run only)"
  gomod=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$v" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -n "$gomod" ] && [ -f "$gomod" ] || { rm -rf "$work"; die "the Go module proxy does not serve k8s.io/kubernetes v$v"; }
  {
    printf 'module tokenbudget.io/testbed/kubernetes\n\n'
    grep -m1 '^go ' "$gomod"
    printf '\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' "$v"
    sed -n '/^replace (/,/^)/p' "$gomod" \
      | awk -v staging="v0.${v#1.}" '$2 == "=>" && $3 ~ /^\.\/staging\// {print "\t" $1 " => " $1 " " staging}'
    printf ')\n'
  } >"$work/go.mod"
  # What `kubectl version` and /version report, as the release build sets it.
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  for bin in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$bin"); done
  go_build "$work" "${pkgs[@]}" || { rm -rf "$work"; die "building Kubernetes $v failed"; }
  for bin in "$@"; do cache_binary "$work/out/$bin" "$K8S_BIN/$bin"; done
  rm -rf "$work"
}

# Builds (once) those of the Kubernetes commands "$@" that are not cached yet.
build_kubernetes_commands() {
  local missing=() bin t=$SECONDS
  for bin in "$@"; do [ -x "$K8S_BIN/$bin" ] || missing+=("$bin"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  check_go
  build_kubernetes "${missing[@]}"
  log "built ${missing[*]} $K8S_VERSION in $((SECONDS - t))s: $(du -sh "$K8S_BIN" | cut -f1) in $K8S_BIN"
}

# etcd's server module is its main package (the binary it builds is named `server`).
build_etcd() {
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/tokenbudget-etcd-build.XXXXXX")
  log "building etcd $ETCD_VERSION from Go modules (first run only)"
  printf 'module tokenbudget.io/testbed/etcd\n\ngo 1.21\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" >"$work/go.mod"
  ldflags="-s -w"
  go_build "$work" go.etcd.io/etcd/server/v3 || { rm -rf "$work"; die "building etcd $ETCD_VERSION failed"; }
  cache_binary "$work/out/server" "$ETCD_BIN/etcd"
  rm -rf "$work"
}

build_binaries() {
  build_kubernetes_commands kube-apiserver kube-controller-manager kubectl
  if [ ! -x "$ETCD_BIN/etcd" ]; then
    check_go
    local t=$SECONDS
    build_etcd
    log "built etcd $ETCD_VERSION in $((SECONDS - t))s: $(du -sh "$ETCD_BIN" | cut -f1) in $ETCD_BIN"
  fi
}

cmd_install() { install_runtime; build_binaries; }

# What a node beside the control plane needs (hack/node.sh): kubelet and kube-scheduler of the
# same version, built the same way into the same cache folder.
cmd_install_node() { cmd_install; build_kubernetes_commands kubelet kube-scheduler; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# A pid file names a process we started; only kill it if it is still that program.
pid_alive() {
  local name=$1 pidfile=$TESTBED_DIR/$1.pid pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  grep -qa -- "$name" "/proc/$pid/cmdline" 2>/dev/null
}

stop_one() {
  local name=$1 pidfile=$TESTBED_DIR/$1.pid pid
  if pid_alive "$name"; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

healthy() {
  [ -f "$TESTBED_DIR/kubeconfig" ] && pid_alive etcd && pid_alive kube-apiserver && pid_alive kube-controller-manager || return 1
  curl -ksf -m 3 -H "Authorization: Bearer $ADMIN_TOKEN" "$(server_url)/readyz" >/dev/null
}

# The version `up` started, which is what `env` and `status` report (not TESTBED_K8S_VERSION).
running_version() { cat "$TESTBED_DIR/version" 2>/dev/null || echo "$K8S_VERSION"; }

server_url() { sed -n 's/^ *server: //p' "$TESTBED_DIR/kubeconfig" | head -n1; }

cmd_down() {
  [ -d "$TESTBED_DIR" ] || { log "not running"; return 0; }
  # A real node (hack/node.sh) keeps its state in here, with mounts in it: it goes first.
  if [ -d "$TESTBED_DIR/node" ]; then "$REPO/hack/node.sh" down || die "hack/node.sh down failed"; fi
  stop_one kube-controller-manager
  stop_one kube-apiserver
  stop_one etcd
  rm -rf "$TESTBED_DIR"
  log "stopped"
}

start_daemon() {
  local name=$1; shift
  nohup "$@" >"$TESTBED_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$TESTBED_DIR/$name.pid"
}

wait_for() {
  local what=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}

# The ports `up` picked, which `start` uses again: EP (etcd clients), PP (etcd peers), AP (API).
read_ports() {
  [ -f "$TESTBED_DIR/ports" ] || die "no $TESTBED_DIR/ports: this testbed was not started by this script's up (run down, then up)"
  # shellcheck disable=SC1091
  . "$TESTBED_DIR/ports"
}

# etcd, with the data of $TESTBED_DIR/etcd (kept across stop and start).
start_etcd() {
  local d=$TESTBED_DIR
  start_daemon etcd "$ETCD_BIN/etcd" --name tokenbudget-testbed --data-dir "$d/etcd" \
    --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
    --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
    --initial-cluster "tokenbudget-testbed=http://127.0.0.1:$PP"
  wait_for etcd 60 curl -sf -m 2 "http://127.0.0.1:$EP/health" || { tail -n 20 "$d/logs/etcd.log" >&2; return 1; }
}

# kube-apiserver; its serving certificate in $TESTBED_DIR/certs is made once and reused.
start_apiserver() {
  local d=$TESTBED_DIR
  start_daemon kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$EP" \
    --secure-port="$AP" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --cert-dir="$d/certs" --token-auth-file="$d/tokens.csv" --authorization-mode=RBAC \
    --service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.96.0.0/16 \
    --endpoint-reconciler-type=none --kubelet-preferred-address-types=InternalIP,Hostname
  api_ready 180 || { tail -n 30 "$d/logs/kube-apiserver.log" >&2; return 1; }
}

api_ready() {
  wait_for apiserver "$1" curl -ksf -m 2 -H "Authorization: Bearer $ADMIN_TOKEN" "https://127.0.0.1:$AP/readyz"
}

# The process of a component name on the command line.
component_process() {
  case "$1" in
    apiserver | kube-apiserver) echo kube-apiserver ;;
    etcd) echo etcd ;;
    *) die "stop and start take apiserver or etcd, not '$1'" ;;
  esac
}

# Stops one component of a running testbed, as an outage would, and marks it stopped on
# purpose: its data and every other process stay.
cmd_stop() {
  local name
  name=$(component_process "${1:-}")
  [ -f "$TESTBED_DIR/kubeconfig" ] || die "not running; start it with: hack/testbed.sh up"
  stop_one "$name"
  touch "$TESTBED_DIR/$name.stopped"
  log "stopped $name (data kept; hack/testbed.sh start ${1})"
}

# Starts a component that `stop` stopped, with the same ports, flags and data, and waits until
# the API server answers /readyz again (etcd: through the API server, if that runs).
cmd_start() {
  local name t=$SECONDS
  name=$(component_process "${1:-}")
  [ -f "$TESTBED_DIR/kubeconfig" ] || die "not running; start it with: hack/testbed.sh up"
  read_ports
  # The binaries of the versions that `up` started, whatever the environment asks for now.
  K8S_BIN=$TESTBED_CACHE/k8s-$(running_version)
  ETCD_BIN=$TESTBED_CACHE/etcd-$(cat "$TESTBED_DIR/etcd-version" 2>/dev/null || echo "$ETCD_VERSION")
  if ! pid_alive "$name"; then
    case "$name" in
      etcd) start_etcd || die "etcd did not become healthy" ;;
      kube-apiserver) start_apiserver || die "kube-apiserver did not become ready" ;;
    esac
  fi
  rm -f "$TESTBED_DIR/$name.stopped"
  if pid_alive kube-apiserver; then
    api_ready 180 || { tail -n 30 "$TESTBED_DIR/logs/kube-apiserver.log" >&2; die "kube-apiserver did not become ready"; }
  fi
  log "started $name in $((SECONDS - t))s"
}

# Names the components `stop` stopped, one a line.
stopped_components() {
  local f
  for f in "$TESTBED_DIR"/*.stopped; do [ -e "$f" ] && basename "$f" .stopped; done
  return 0
}

cmd_up() {
  if healthy; then
    [ "$(running_version)" = "$K8S_VERSION" ] \
      || die "Kubernetes $(running_version) is up in $TESTBED_DIR, not $K8S_VERSION: run down first, or set TESTBED_DIR"
    log "already up: Kubernetes $K8S_VERSION at $(server_url)"
    return 0
  fi
  # A component stopped with `stop` is started again, with its data, not wiped.
  if [ -n "$(stopped_components)" ] && pid_alive kube-controller-manager; then
    local c
    for c in etcd kube-apiserver; do [ -e "$TESTBED_DIR/$c.stopped" ] && cmd_start "$c"; done
    healthy && { log "up: Kubernetes $(running_version) at $(server_url)"; return 0; }
  fi
  # Whatever a crashed or half-started run left behind goes first.
  cmd_down >/dev/null 2>&1 || true
  cmd_install
  mkdir -p "$TESTBED_DIR"/{logs,certs,etcd}
  local d=$TESTBED_DIR ep pp ap
  ep=$(free_port); pp=$(free_port); ap=$(free_port)
  while [ "$pp" = "$ep" ]; do pp=$(free_port); done
  while [ "$ap" = "$ep" ] || [ "$ap" = "$pp" ]; do ap=$(free_port); done
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  echo "$ADMIN_TOKEN,admin,admin,system:masters" >"$d/tokens.csv"

  printf 'EP=%s\nPP=%s\nAP=%s\n' "$ep" "$pp" "$ap" >"$d/ports"
  read_ports
  start_etcd || { cmd_down; die "etcd did not become healthy"; }
  start_apiserver || { cmd_down; die "kube-apiserver did not become ready"; }

  cat >"$d/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:$ap
    certificate-authority: $d/certs/apiserver.crt
contexts:
- name: testbed
  context: {cluster: testbed, user: admin, namespace: default}
current-context: testbed
users:
- name: admin
  user: {token: $ADMIN_TOKEN}
KCFG

  start_daemon kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig="$d/kubeconfig" \
    --service-account-private-key-file="$d/sa.key" --root-ca-file="$d/certs/apiserver.crt" \
    --use-service-account-credentials=true --controllers='*' \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 \
    ${TESTBED_CM_QPS:+--kube-api-qps=$TESTBED_CM_QPS --kube-api-burst=$((TESTBED_CM_QPS * 2))}
  # The controller-manager is working once it has given `default` its ServiceAccount.
  wait_for controller-manager 120 "$K8S_BIN/kubectl" --kubeconfig "$d/kubeconfig" get serviceaccount default -n default \
    || { tail -n 30 "$d/logs/kube-controller-manager.log" >&2; cmd_down; die "kube-controller-manager did not start"; }
  echo "$K8S_VERSION" >"$d/version"
  echo "$ETCD_VERSION" >"$d/etcd-version"
  log "up: Kubernetes $K8S_VERSION at https://127.0.0.1:$ap (kubeconfig $d/kubeconfig)"
}

cmd_env() {
  healthy || die "not running; start it with: hack/testbed.sh up"
  # The kubectl of the running version comes first on the PATH.
  echo "export KUBECONFIG=$TESTBED_DIR/kubeconfig PATH=$TESTBED_CACHE/k8s-$(running_version):\$PATH"
}

cmd_status() {
  if healthy; then echo "running: Kubernetes $(running_version) at $(server_url) kubeconfig=$TESTBED_DIR/kubeconfig"
  elif [ -n "$(stopped_components)" ]; then
    echo "stopped by hack/testbed.sh stop: $(stopped_components | tr '\n' ' ')(hack/testbed.sh start apiserver|etcd)"
    return 1
  else echo "not running"; return 1; fi
}

case "${1:-}" in
  install) cmd_install ;;
  install-node) cmd_install_node ;;
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  stop) cmd_stop "${2:-}" ;;
  start) cmd_start "${2:-}" ;;
  *) echo "usage: $0 install|install-node|up|down|env|status|stop apiserver|etcd|start apiserver|etcd" >&2; exit 2 ;;
esac
