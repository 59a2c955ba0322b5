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

# Another version asked for while one runs: refused, the running one untouched.
running=$(sed -n 's/^running: Kubernetes \([^ ]*\) .*/\1/p' <<<"$(tb status)")
[ -n "$running" ] || fail "status does not name the version"
TESTBED_K8S_VERSION=0.0.0 tb up 2>/dev/null && fail "up of another version while $running runs"
[ "$(cat "$TESTBED_DIR"/*.pid)" = "$pids" ] || fail "up of another version touched the running one"
passed=$((passed + 1))

# A crash: every process gone at once, pid files and data left behind.
kill -9 $pids
for pid in $pids; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
tb status >/dev/null 2>&1 && fail "status says running after a crash"
tb up 2>/dev/null || fail "up after a crash"
kubectl --kubeconfig "$TESTBED_DIR/kubeconfig" get namespace default >/dev/null || fail "API not answering after recovery"
passed=$((passed + 1))

new_pids=$(cat "$TESTBED_DIR"/*.pid)
# A pid file whose pid now belongs to another program (pid reuse): down must spare it.
sleep 300 &
bystander=$!
real_etcd=$(cat "$TESTBED_DIR/etcd.pid")
echo "$bystander" >"$TESTBED_DIR/etcd.pid"
tb down 2>/dev/null
kill -0 "$bystander" 2>/dev/null || fail "down killed a process it did not start"
kill "$bystander" "$real_etcd" 2>/dev/null || true
for pid in $new_pids; do
  [ "$pid" = "$real_etcd" ] && continue
  kill -0 "$pid" 2>/dev/null && fail "process $pid survived down"
done
[ -e "$TESTBED_DIR" ] && fail "down left $TESTBED_DIR behind"
passed=$((passed + 1))
echo "testbed selftest: $passed passed, 0 failed"
