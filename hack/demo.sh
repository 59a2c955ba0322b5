#!/usr/bin/env bash
# The quick start: brings up a local Kubernetes control plane (or uses the cluster KUBECONFIG
# points at), installs the CRDs, starts the operator, applies the examples into namespace
# `agents` and shows them with `kubectl get tb,bb`. Ctrl-C stops everything it started.
#
#   hack/demo.sh          run until Ctrl-C
#   hack/demo.sh --once   show the result and stop (used by the tests)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
ONCE=
[ "${1:-}" = "--once" ] && ONCE=1
NAMESPACE=${DEMO_NAMESPACE:-agents}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

started_testbed=
operator_pid=
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$operator_pid" ]; then
    kill -TERM "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  if [ -n "$started_testbed" ]; then hack/testbed.sh down; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${KUBECONFIG:-}" ]; then
  say "using the cluster of KUBECONFIG=$KUBECONFIG"
  command -v kubectl >/dev/null || { echo "kubectl is needed: see README.md" >&2; exit 1; }
  log_dir=$REPO/target/demo
else
  hack/testbed.sh status >/dev/null 2>&1 || started_testbed=1
  say "starting a local control plane (the first run builds it: about 5 minutes)"
  hack/testbed.sh up
  eval "$(hack/testbed.sh env)"
  log_dir=${TESTBED_DIR:-$REPO/.testbed}
fi
mkdir -p "$log_dir"

say "building the operator"
cargo build --locked --quiet --bin tokenbudget-operator

say "installing the CRDs"
kubectl apply -f crds/
kubectl wait --for condition=established --timeout=60s \
  crd/tokenbudgets.tokenbudget.io crd/budgetbindings.tokenbudget.io

say "starting the operator (log: $log_dir/operator.log)"
RUST_LOG=${RUST_LOG:-info} target/debug/tokenbudget-operator --bind-address 127.0.0.1:0 \
  >"$log_dir/operator.log" 2>&1 &
operator_pid=$!

say "applying examples/ into namespace $NAMESPACE"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# API discovery can lag a freshly established CRD by a moment: retry until kubectl knows the kinds.
for attempt in $(seq 50); do
  if out=$(kubectl apply -n "$NAMESPACE" -f examples/ 2>&1); then echo "$out"; break; fi
  if [ "$attempt" = 50 ] || ! grep -q "no matches for kind\|doesn't have a resource type" <<<"$out"; then
    echo "$out" >&2; exit 1
  fi
  sleep 0.2
done
kubectl wait -n "$NAMESPACE" --for condition=BudgetFound --timeout=60s budgetbindings --all >/dev/null
kubectl wait -n "$NAMESPACE" --for condition=Ready --timeout=60s tokenbudgets --all >/dev/null

say "kubectl get tb,bb -n $NAMESPACE"
kubectl get tb -n "$NAMESPACE"
echo
kubectl get bb -n "$NAMESPACE"

if [ -n "$ONCE" ]; then exit 0; fi
say "the operator is running: try 'kubectl get tb -n $NAMESPACE -w' in another shell (with: $(
  [ -n "$started_testbed" ] && echo "eval \$(hack/testbed.sh env)" || echo "your KUBECONFIG"))"
say "press Ctrl-C to stop everything this started"
wait "$operator_pid"
