#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager 1.20.2) on
# loopback, for the demo and the integration tests. Follows shared/TESTBED.md.
#
#   hack/testbed.sh install   install packages, build and cache the control-plane binaries
#   hack/testbed.sh up        install if needed, start (idempotent), wait for readiness
#   hack/testbed.sh down      stop exactly the processes `up` started (safe without `up`)
#   hack/testbed.sh env       print `export KUBECONFIG=...` for eval
#   hack/testbed.sh status    say whether it runs, and where
#
# Environment:
#   TESTBED_DIR     state (pids, logs, certs, kubeconfig); default <repo>/.testbed
#   TESTBED_CACHE   where the built binaries live; default ~/.cache/tokenbudget/k8s-1.20.2
set -euo pipefail

K8S_VERSION=1.20.2
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTBED_DIR=${TESTBED_DIR:-$REPO/.testbed}
TESTBED_CACHE=${TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenbudget/k8s-$K8S_VERSION}
APISERVER_BIN=$TESTBED_CACHE/kube-apiserver
CONTROLLER_MANAGER_BIN=$TESTBED_CACHE/kube-controller-manager
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
  apt_install etcd-server openssl jq python3
  if ! command -v kubectl >/dev/null 2>&1; then apt_install kubernetes-client; fi
}

build_binaries() {
  if [ -x "$APISERVER_BIN" ] && [ -x "$CONTROLLER_MANAGER_BIN" ]; then return 0; fi
  log "building kube-apiserver and kube-controller-manager $K8S_VERSION from Debian's source (first run only, ~5 min)"
  apt_install golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev
  local src_list=/etc/apt/sources.list.d/tokenbudget-src.sources
  if [ ! -f "$src_list" ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | as_root tee "$src_list" >/dev/null
    as_root apt-get update -qq
  fi
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/tokenbudget-k8s-build.XXXXXX")
  (
    cd "$work"
    apt-get source --download-only kubernetes >/dev/null
    tar xzf kubernetes_*.orig.tar.gz
    cd "kubernetes-$K8S_VERSION"
    # The vendored reflect2 v1.0.1 crashes the apiserver under Go >= 1.18 ("fatal error: fault"
    # in mapiterinit, e.g. when kubectl fetches /openapi/v2); Debian's v1.0.2 fixes it.
    rm -rf vendor/github.com/modern-go/reflect2
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/
    rm -f vendor/github.com/modern-go/reflect2/go.mod
    export GOPATH=$PWD/.go CGO_ENABLED=0 GOFLAGS=
    mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
    mkdir -p "$work/home"
    env HOME="$work/home" make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/build.log" 2>&1 \
      || { tail -n 40 "$work/build.log" >&2; exit 1; }
    mkdir -p "$TESTBED_CACHE"
    cp _output/local/bin/linux/amd64/kube-apiserver "$TESTBED_CACHE/kube-apiserver.tmp"
    cp _output/local/bin/linux/amd64/kube-controller-manager "$TESTBED_CACHE/kube-controller-manager.tmp"
    mv "$TESTBED_CACHE/kube-apiserver.tmp" "$APISERVER_BIN"
    mv "$TESTBED_CACHE/kube-controller-manager.tmp" "$CONTROLLER_MANAGER_BIN"
  ) || { chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"; die "build failed"; }
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
  log "cached binaries in $TESTBED_CACHE"
}

cmd_install() { install_runtime; build_binaries; }

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

server_url() { sed -n 's/^ *server: //p' "$TESTBED_DIR/kubeconfig" | head -n1; }

cmd_down() {
  [ -d "$TESTBED_DIR" ] || { log "not running"; return 0; }
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

cmd_up() {
  if healthy; then log "already up: $(server_url)"; return 0; fi
  # Whatever a crashed or half-started run left behind goes first.
  cmd_down >/dev/null 2>&1 || true
  cmd_install
  command -v curl >/dev/null || apt_install curl
  mkdir -p "$TESTBED_DIR"/{logs,certs,etcd}
  local d=$TESTBED_DIR ep pp ap
  ep=$(free_port); pp=$(free_port); ap=$(free_port)
  while [ "$pp" = "$ep" ]; do pp=$(free_port); done
  while [ "$ap" = "$ep" ] || [ "$ap" = "$pp" ]; do ap=$(free_port); done
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  echo "$ADMIN_TOKEN,admin,admin,system:masters" >"$d/tokens.csv"

  start_daemon etcd etcd --name tokenbudget-testbed --data-dir "$d/etcd" \
    --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "tokenbudget-testbed=http://127.0.0.1:$pp"
  wait_for etcd 60 curl -sf -m 2 "http://127.0.0.1:$ep/health" \
    || { tail -n 20 "$d/logs/etcd.log" >&2; cmd_down; die "etcd did not become healthy"; }

  start_daemon kube-apiserver "$APISERVER_BIN" --etcd-servers="http://127.0.0.1:$ep" \
    --secure-port="$ap" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --cert-dir="$d/certs" --token-auth-file="$d/tokens.csv" --authorization-mode=RBAC \
    --service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.96.0.0/16 \
    --insecure-port=0
  wait_for apiserver 180 curl -ksf -m 2 -H "Authorization: Bearer $ADMIN_TOKEN" "https://127.0.0.1:$ap/readyz" \
    || { tail -n 30 "$d/logs/kube-apiserver.log" >&2; cmd_down; die "kube-apiserver did not become ready"; }

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

  start_daemon kube-controller-manager "$CONTROLLER_MANAGER_BIN" --kubeconfig="$d/kubeconfig" \
    --service-account-private-key-file="$d/sa.key" --root-ca-file="$d/certs/apiserver.crt" \
    --use-service-account-credentials=true --controllers='*,-nodelifecycle,-cloud-node-lifecycle' \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0
  # The controller-manager is working once it has given `default` its ServiceAccount.
  wait_for controller-manager 120 kubectl --kubeconfig "$d/kubeconfig" get serviceaccount default -n default \
    || { tail -n 30 "$d/logs/kube-controller-manager.log" >&2; cmd_down; die "kube-controller-manager did not start"; }
  log "up: https://127.0.0.1:$ap (kubeconfig $d/kubeconfig)"
}

cmd_env() {
  healthy || die "not running; start it with: hack/testbed.sh up"
  echo "export KUBECONFIG=$TESTBED_DIR/kubeconfig"
}

cmd_status() {
  if healthy; then echo "running: $(server_url) kubeconfig=$TESTBED_DIR/kubeconfig"
  else echo "not running"; return 1; fi
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|up|down|env|status" >&2; exit 2 ;;
esac
