#!/usr/bin/env bash
# Runs every check: formatting, lints, unit tests, then the Helm chart's tests and the
# integration tests against a real Kubernetes control plane of the newest supported version
# (hack/testbed.sh, its own instance under .testbed-test/), then tests/real_pods.rs with the
# agent as a real container on a real node added to that testbed (hack/node.sh; needs root),
# the accounting and enforcement suites again on the oldest supported version
# (docs/compatibility.md), then the demo once on a testbed of its own. Stops whatever it
# started. This is what CI runs.
#
# Environment: TESTBED_K8S_VERSION (the newest, default: hack/testbed.sh's) and
# COMPAT_K8S_VERSION (the oldest supported; "skip" leaves that run out, for a quick local run).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

step() { printf '\n==> %s\n' "$*"; }
SECONDS=0
COMPAT_K8S_VERSION=${COMPAT_K8S_VERSION:-1.34.4}

# The chart tests' Python packages (hack/chart-test-requirements.txt) and the example agent's
# (examples/agent/requirements.txt), in .venv/ (not in git).
chart_test_venv() {
  if [ ! -x .venv/bin/python ] && ! python3 -m venv .venv >/dev/null 2>&1; then
    # Debian's own python3 needs python3-venv for a venv with pip.
    rm -rf .venv
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
  .venv/bin/pip install -q --disable-pip-version-check -r hack/chart-test-requirements.txt
  # tests/example_agent.rs runs examples/agent/agent.py with its own packages.
  .venv/bin/pip install -q --disable-pip-version-check -r examples/agent/requirements.txt
}

# tests/prometheus_source.rs runs a real Prometheus: Debian's package, its binary run by the
# test itself (no service is started: the package's init scripts need systemd or do nothing).
prometheus_server() {
  if ! command -v prometheus >/dev/null 2>&1; then
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  fi
  prometheus --version 2>&1 | head -1
}

step "installing what the tests need"
hack/testbed.sh install
if [ "$COMPAT_K8S_VERSION" != skip ]; then TESTBED_K8S_VERSION=$COMPAT_K8S_VERSION hack/testbed.sh install; fi
chart_test_venv
prometheus_server

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "unit tests, and the fuzz corpus replayed through the parser"
cargo test --locked --lib --bins --test fuzz_corpus

step "the Python client's unit tests (clients/python: standard library only)"
python3 -m unittest discover -s clients/python

export TESTBED_DIR=$REPO/.testbed-test
COMPAT_DIR=$REPO/.testbed-compat
started=
node_started=
cleanup() {
  if [ -n "$node_started" ]; then hack/node.sh down || true; fi
  if [ -n "$started" ]; then hack/testbed.sh down || true; fi
  TESTBED_DIR=$COMPAT_DIR hack/testbed.sh down >/dev/null 2>&1 || true
  TESTBED_DIR=$REPO/.testbed-demo hack/testbed.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
if ! hack/testbed.sh status >/dev/null 2>&1; then started=1; fi
step "starting the testbed"
hack/testbed.sh up
eval "$(hack/testbed.sh env)"
kubectl version

step "Helm chart: lint, render with several value sets, install, upgrade, uninstall"
.venv/bin/python hack/chart-test.py

step "integration tests against $(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
# Every integration test but real_pods, by name: they play the kubelet, and a real node would
# run their pods and overwrite the statuses they write. real_pods fails without a node, so it
# cannot be left out silently: it runs in the next step, explicitly. fuzz_corpus needs no
# cluster and ran with the unit tests. outage stops this testbed's API server, then its etcd,
# for 30 s each (about 2.5 minutes): cargo runs the test binaries one after another, so no other
# test runs meanwhile.
integration=()
for t in tests/*.rs; do
  t=$(basename "$t" .rs)
  case "$t" in real_pods | fuzz_corpus) ;; *) integration+=(--test "$t") ;; esac
done
cargo test --locked "${integration[@]}"

step "the agent as a real container: a node (hack/node.sh up), then tests/real_pods.rs"
node_started=1
hack/node.sh up
cargo test --locked --test real_pods
# Gone before anything else uses this testbed: later tests play the kubelet again.
hack/node.sh down
node_started=

if [ "$COMPAT_K8S_VERSION" != skip ]; then
  step "accounting and enforcement on the oldest supported version, Kubernetes $COMPAT_K8S_VERSION"
  (
    export TESTBED_DIR=$COMPAT_DIR TESTBED_K8S_VERSION=$COMPAT_K8S_VERSION
    hack/testbed.sh up
    eval "$(hack/testbed.sh env)"
    kubectl version
    cargo test --locked --test accounting --test enforcement --test schema
    hack/testbed.sh down
  )
fi

step "the testbed script: down without up, up twice, up after a crash"
hack/testbed-selftest.sh

step "the demo, once, on a testbed of its own"
env -u KUBECONFIG TESTBED_DIR="$REPO/.testbed-demo" hack/demo.sh --once

step "all checks passed in ${SECONDS}s"
