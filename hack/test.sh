#!/usr/bin/env bash
# Runs every check: formatting, lints, unit tests, then the integration tests against a real
# Kubernetes control plane (hack/testbed.sh, its own instance under .testbed-test/), then the
# demo once on a testbed of its own. Stops whatever it started. This is what CI runs.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

step() { printf '\n==> %s\n' "$*"; }
SECONDS=0

step "installing what the tests need"
hack/testbed.sh install

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "unit tests"
cargo test --locked --lib --bins

export TESTBED_DIR=$REPO/.testbed-test
started=
cleanup() {
  if [ -n "$started" ]; then hack/testbed.sh down || true; fi
}
trap cleanup EXIT
if ! hack/testbed.sh status >/dev/null 2>&1; then started=1; fi
step "starting the testbed"
hack/testbed.sh up
eval "$(hack/testbed.sh env)"

step "integration tests against $(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
cargo test --locked --test '*'

step "the testbed script: down without up, up twice, up after a crash"
hack/testbed-selftest.sh

step "the demo, once, on a testbed of its own"
env -u KUBECONFIG -u TESTBED_DIR hack/demo.sh --once

step "all checks passed in ${SECONDS}s"
