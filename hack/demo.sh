#!/usr/bin/env bash
# The quick start. Brings up a local Kubernetes control plane (or uses the cluster KUBECONFIG
# points at), installs the CRDs and the operator, starts three simulated AI agents that spend
# tokens at different rates, applies two budgets, and shows through `kubectl tokenbudget` how
# usage rises, crosses its warning thresholds, runs out, and how the budget's Deployments are
# scaled down. Ctrl-C stops everything it started.
#
#   hack/demo.sh          run until Ctrl-C
#   hack/demo.sh --once   stop once the scale-down is shown (used by the tests); fails if it
#                         does not happen within DEMO_TIMEOUT seconds (default 240)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
ONCE=
[ "${1:-}" = "--once" ] && ONCE=1
NAMESPACE=${DEMO_NAMESPACE:-agents}
TIMEOUT=${DEMO_TIMEOUT:-240}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

started_testbed=
operator_pids=()
agent_pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${agent_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${operator_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${operator_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$started_testbed" ]; then hack/testbed.sh down; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

real_cluster=
if [ -n "${KUBECONFIG:-}" ] && [ -z "${DEMO_ON_TESTBED:-}" ]; then
  real_cluster=1
  say "using the cluster of KUBECONFIG=$KUBECONFIG"
  command -v kubectl >/dev/null || { echo "kubectl is needed: see README.md" >&2; exit 1; }
  log_dir=$REPO/target/demo
else
  hack/testbed.sh status >/dev/null 2>&1 || started_testbed=1
  say "starting a local control plane (the first run builds it from the Kubernetes sources: about 10 minutes)"
  hack/testbed.sh up
  eval "$(hack/testbed.sh env)"
  log_dir=${TESTBED_DIR:-$REPO/.testbed}
fi
mkdir -p "$log_dir"

say "building the operator, the simulated agent and the kubectl plugin"
cargo build --locked --quiet --bin tokenbudget-operator --bin agent-sim --bin kubectl-tokenbudget
export PATH=$REPO/target/debug:$PATH # so that `kubectl tokenbudget` finds the plugin

say "installing the CRDs"
kubectl apply -f crds/
kubectl wait --for condition=established --timeout=60s \
  crd/tokenbudgets.tokenbudget.io crd/budgetbindings.tokenbudget.io

if [ -n "$real_cluster" ] && [ -n "${DEMO_IMAGE:-}" ] && command -v helm >/dev/null; then
  say "installing the operator with Helm (image $DEMO_IMAGE)"
  helm upgrade --install tokenbudget charts/tokenbudget-operator --namespace tokenbudget-system \
    --create-namespace --set image.repository="${DEMO_IMAGE%:*}" --set image.tag="${DEMO_IMAGE##*:}" --wait
else
  # Two replicas, as the chart runs them: one leads, the other stands by with warm caches
  # (docs/high-availability.md). Their Lease is in the namespace `default`.
  say "starting two operator replicas on this machine (logs: $log_dir/operator-{a,b}.log)"
  for replica in a b; do
    POD_NAME=demo-$replica RUST_LOG=${RUST_LOG:-info} target/debug/tokenbudget-operator \
      --bind-address 127.0.0.1:0 --agent-api-bind-address 127.0.0.1:0 \
      --leader-election --leader-election-namespace default \
      >"$log_dir/operator-$replica.log" 2>&1 &
    operator_pids+=($!)
  done
  for _ in $(seq 1 60); do
    leader=$(kubectl get lease tokenbudget-operator -n default -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
    [ -n "$leader" ] && break
    sleep 1
  done
  say "the leader is ${leader:-not elected yet} (kubectl get lease tokenbudget-operator -n default)"
fi

say "creating the agents in namespace $NAMESPACE"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n "$NAMESPACE" -f hack/demo/workloads.yaml

# name, model, tokens per second (per pod), replicas (as in hack/demo/workloads.yaml)
agents=("summarizer gpt-4o-mini 300 2" "researcher claude-3-5-sonnet 250 1" "support-bot gpt-4o-mini 40 1")
if [ -n "$real_cluster" ]; then
  # Real nodes run the pods: a small Python agent (hack/demo/agent.py) in a stock image.
  kubectl create configmap demo-agent -n "$NAMESPACE" --from-file=hack/demo/agent.py \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  for spec in "${agents[@]}"; do
    read -r app model rate _ <<<"$spec"
    kind=deployment; [ "$app" = support-bot ] && kind=statefulset
    kubectl patch -n "$NAMESPACE" "$kind/$app" --type=json -p "[
      {\"op\":\"replace\",\"path\":\"/spec/template/spec/containers/0/image\",\"value\":\"python:3.12-alpine\"},
      {\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/command\",\"value\":[\"python\",\"/agent/agent.py\"]},
      {\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/env\",\"value\":[{\"name\":\"MODEL\",\"value\":\"$model\"},{\"name\":\"RATE\",\"value\":\"$rate\"}]},
      {\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/volumeMounts\",\"value\":[{\"name\":\"agent\",\"mountPath\":\"/agent\"}]},
      {\"op\":\"add\",\"path\":\"/spec/template/spec/volumes\",\"value\":[{\"name\":\"agent\",\"configMap\":{\"name\":\"demo-agent\"}}]}]" >/dev/null
  done
else
  # The testbed has no kubelet: play it. Each pod gets an agent-sim process on a loopback
  # address of its own, and its status says Running with that IP.
  say "playing the kubelet: one agent-sim process per pod"
  ip_index=0
  for spec in "${agents[@]}"; do
    read -r app model rate want <<<"$spec"
    for _ in $(seq 100); do
      mapfile -t pods < <(kubectl get pods -n "$NAMESPACE" -l "app=$app" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
      [ "${#pods[@]}" -ge "$want" ] && break
      sleep 0.2
    done
    for pod in "${pods[@]}"; do
      ip_index=$((ip_index + 1))
      ip=127.77.$((ip_index / 250)).$((1 + ip_index % 250))
      target/debug/agent-sim --listen "$ip:9464" --model "$model" --rate "$rate" >/dev/null &
      agent_pids+=($!)
      now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
      kubectl patch pod "$pod" -n "$NAMESPACE" --subresource=status --type=merge -p "{\"status\":{
        \"phase\":\"Running\",\"podIP\":\"$ip\",\"podIPs\":[{\"ip\":\"$ip\"}],\"startTime\":\"$now\",
        \"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}],
        \"containerStatuses\":[{\"name\":\"agent\",\"ready\":true,\"restartCount\":0,\"image\":\"agent-sim:demo\",
          \"imageID\":\"agent-sim\",\"started\":true,\"state\":{\"running\":{\"startedAt\":\"$now\"}}}]}}" >/dev/null
      echo "  $pod: agent-sim on $ip:9464, $rate tokens/s of $model"
    done
  done
fi

say "applying the budgets (hack/demo/budgets.yaml)"
# API discovery can lag a freshly established CRD by a moment: retry until kubectl knows the kinds.
for attempt in $(seq 50); do
  if out=$(kubectl apply -n "$NAMESPACE" -f hack/demo/budgets.yaml 2>&1); then echo "$out"; break; fi
  if [ "$attempt" = 50 ] || ! grep -q "no matches for kind\|doesn't have a resource type" <<<"$out"; then
    echo "$out" >&2; exit 1
  fi
  sleep 0.2
done

say "watching: research runs out in about a minute and its Deployments are scaled to 0"
shown_events=" "
scaled_down=
started=$SECONDS
while true; do
  echo
  date +%T
  kubectl tokenbudget status -n "$NAMESPACE"
  # New Events of the budgets, once each.
  while IFS=$'\t' read -r uid reason object note; do
    [ -z "$uid" ] && continue
    case "$shown_events" in *" $uid "*) continue ;; esac
    shown_events="$shown_events$uid "
    printf '  \033[1mEvent\033[0m %-16s %-20s %s\n' "$reason" "$object" "$note"
  done < <(kubectl get events -n "$NAMESPACE" --field-selector involvedObject.kind=TokenBudget \
    --sort-by=.metadata.creationTimestamp \
    -o jsonpath='{range .items[*]}{.metadata.uid}{"\t"}{.reason}{"\t"}{.involvedObject.name}{"\t"}{.message}{"\n"}{end}')
  replicas=$(kubectl get deploy -n "$NAMESPACE" summarizer researcher -o jsonpath='{.items[*].spec.replicas}')
  if [ "$replicas" = "0 0" ] && [ -z "$scaled_down" ]; then
    scaled_down=1
    say "research is exhausted and its Deployments are scaled to 0 ($((SECONDS - started)) s after the budgets were applied):"
    kubectl get deploy,sts -n "$NAMESPACE" \
      -o custom-columns='KIND:.kind,NAME:.metadata.name,REPLICAS:.spec.replicas,STATE:.metadata.annotations.tokenbudget\.io/state,PAUSED-REPLICAS:.metadata.annotations.tokenbudget\.io/paused-replicas'
    echo
    kubectl tokenbudget top -n "$NAMESPACE"
    [ -n "$ONCE" ] && exit 0
    say "raise the limit to see the exact restore, in another shell:"
    echo "  kubectl patch tb research -n $NAMESPACE --type=merge -p '{\"spec\":{\"limits\":{\"tokens\":5000000}}}'"
    say "press Ctrl-C to stop everything this started"
  fi
  if [ -n "$ONCE" ] && [ $((SECONDS - started)) -gt "$TIMEOUT" ]; then
    echo "the demo did not reach the scale-down within ${TIMEOUT}s; operator logs: $log_dir/operator-{a,b}.log" >&2
    exit 1
  fi
  sleep 5
done
