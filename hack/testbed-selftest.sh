#!/usr/bin/env bash
# Checks that hack/testbed.sh behaves on the paths users hit: `down` without `up`, `up` twice,
# and `up` after a crashed run (its processes killed with SIGKILL, state left behind).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TESTBED_DIR
TESTBED_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tokenbudget-selftest.XXXXXX")
rmdir "$TESTBED_DIR"
tb() { "$REPO/hack/testbed.sh" "$@"; }
fail() { echo "testbed selftest: FAILED: $*" >&2; tb down >/dev/null 2>&1 || true; exit 1; }
trap 'tb down >/dev/null 2>&1 || true' EXIT
passed=0

tb down 2>/dev/null || fail "down without up"
tb status >/dev/null 2>&1 && fail "status says running before up"
passed=$((passed + 1))

tb up 2>/dev/null
first=$(tb env)
tb up 2>/dev/null
[ "$(tb env)" = "$first" ] || fail "a second up started another control plane"
pids=$(cat "$TESTBED_DIR"/*.pid)
kubectl --kubeconfig "$TESTBED_DIR/kubeconfig" get namespace default >/dev/null || fail "API not answering"
passed=$((passed + 1))

# A crash: every process gone at once, pid files and data left behind.
kill -9 $pids
for pid in $pids; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
tb status >/dev/null 2>&1 && fail "status says running after a crash"
tb up 2>/dev/null || fail "up after a crash"
kubectl --kubeconfig "$TESTBED_DIR/kubeconfig" get namespace default >/dev/null || fail "API not answering after recovery"
passed=$((passed + 1))

new_pids=$(cat "$TESTBED_DIR"/*.pid)
tb down 2>/dev/null
for pid in $new_pids; do kill -0 "$pid" 2>/dev/null && fail "process $pid survived down"; done
[ -e "$TESTBED_DIR" ] && fail "down left $TESTBED_DIR behind"
passed=$((passed + 1))
echo "testbed selftest: $passed passed, 0 failed"
