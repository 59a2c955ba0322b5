#!/usr/bin/env python3
"""Tests of the Helm chart charts/tokenbudget-operator, with the Helm v4 Go SDK (helm-python-sdk).

Offline: lints the chart and renders it with several sets of values, asserting on the objects
(security context, probes, RBAC rules exactly as listed below, no Secrets, CRDs identical to
crds/, values.schema.json rejecting bad values, the dashboard's and the alerts' PromQL parsing
and naming only metrics the operator exports, the Dockerfile as BuildKit parses it). With KUBECONFIG set (the testbed of hack/testbed.sh, or any
cluster you are admin of): installs the chart for real, checks what the API server holds,
asks the API server what the ServiceAccount may do, upgrades the CRDs through `helm upgrade`,
and checks that `helm uninstall` keeps the CRDs and the budgets.

    hack/test.sh                                    # runs this with the other checks
    .venv/bin/python hack/chart-test.py --offline   # lint and render only
    eval "$(hack/testbed.sh env)" && .venv/bin/python hack/chart-test.py

The venv: `python3 -m venv .venv && .venv/bin/pip install -r hack/chart-test-requirements.txt`.
Prints one line per check and ends with `N passed, N failed`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "tokenbudget-operator"
RELEASE = "tokenbudget-operator"
NAMESPACE = "tokenbudget-system"
FULLNAME = "tokenbudget-operator"  # the release name contains the chart name: not repeated

# The operator's permissions, exactly (docs/install.md explains each rule).
EXPECTED_RULES = [
    (["tokenbudget.io"], ["tokenbudgets"], ["get", "list", "watch", "patch"]),
    (["tokenbudget.io"], ["budgetbindings"], ["list", "watch"]),
    (["tokenbudget.io"], ["tokenbudgets/status", "budgetbindings/status"], ["patch"]),
    ([""], ["pods"], ["list", "watch", "patch"]),
    ([""], ["resourcequotas"], ["get", "create", "patch", "delete"]),
    (["apps"], ["deployments", "statefulsets"], ["list", "watch", "patch"]),
    (["apps"], ["deployments/scale", "statefulsets/scale"], ["patch"]),
    (["apps"], ["replicasets"], ["list", "watch"]),
    (["autoscaling"], ["horizontalpodautoscalers"], ["list", "watch"]),
    (["batch"], ["jobs", "cronjobs"], ["list", "watch", "patch"]),
    (["events.k8s.io"], ["events"], ["create"]),
]
# The agent API's reviews, in a ClusterRole of their own (cluster-scoped kinds: with
# watchNamespace too), only with agentApi.enabled.
REVIEW_RULES = [
    (["authentication.k8s.io"], ["tokenreviews"], ["create"]),
    (["authorization.k8s.io"], ["subjectaccessreviews"], ["create"]),
]
# What the chart's agent role grants: what the agent API asks of a caller.
AGENT_RULES = [(["tokenbudget.io"], ["tokenbudgets"], ["get"])]
# What namespace users get through Kubernetes' view, edit and admin roles.
VIEW_RULES = [(["tokenbudget.io"], ["tokenbudgets", "budgetbindings"], ["get", "list", "watch"])]
# What only the cluster-wide install has (a Role cannot grant cluster-scoped kinds): pools.
CLUSTER_RULES = [
    (["tokenbudget.io"], ["clustertokenbudgets"], ["list", "watch"]),
    (["tokenbudget.io"], ["clustertokenbudgets/status"], ["patch"]),
    ([""], ["namespaces"], ["list", "watch"]),
]
# What the ServiceAccount must not be able to do, asked of the API server. tests/rbac.rs makes
# the same point with real requests, as the ServiceAccount, after running the operator with it.
FORBIDDEN = [
    ("get", "secrets", ""),
    ("list", "secrets", ""),
    ("delete", "deployments", "apps"),
    ("update", "deployments", "apps"),
    ("update", "deployments/scale", "apps"),
    ("delete", "pods", ""),
    ("create", "pods", ""),
    ("update", "pods", ""),
    ("delete", "tokenbudgets", "tokenbudget.io"),
    ("create", "tokenbudgets", "tokenbudget.io"),
    ("update", "tokenbudgets", "tokenbudget.io"),
    ("update", "tokenbudgets/finalizers", "tokenbudget.io"),
    ("patch", "budgetbindings", "tokenbudget.io"),
    ("list", "resourcequotas", ""),
    ("create", "events", ""),
    ("patch", "events", "events.k8s.io"),
    ("list", "configmaps", ""),
    ("patch", "namespaces", ""),
    ("create", "clustertokenbudgets", "tokenbudget.io"),
    ("patch", "clustertokenbudgets", "tokenbudget.io"),
    ("delete", "clustertokenbudgets", "tokenbudget.io"),
    ("create", "clusterroles", "rbac.authorization.k8s.io"),
    ("create", "rolebindings", "rbac.authorization.k8s.io"),
]

# ---------------------------------------------------------------------------------------------
# A tiny runner: every check is a function; one line per check; a summary line at the end.

RESULTS: list[tuple[str, bool]] = []
STARTED = time.monotonic()


def check(name):
    def run(fn):
        start = time.monotonic()
        try:
            fn()
        except Exception:  # noqa: BLE001 - every failure is reported, the run goes on
            RESULTS.append((name, False))
            print(f"FAIL {name}")
            traceback.print_exc(file=sys.stdout)
        else:
            RESULTS.append((name, True))
            print(f"ok   {name} ({time.monotonic() - start:.1f}s)")
        sys.stdout.flush()
        return fn

    return run


def expect(cond, message):
    if not cond:
        raise AssertionError(message)


def equal(actual, wanted, what):
    if actual != wanted:
        raise AssertionError(f"{what}:\n  got    {actual!r}\n  wanted {wanted!r}")


# ---------------------------------------------------------------------------------------------
# Rendering.

CHART_OBJ = helm.Chart.load(CHART)


def render_all(values=None, *, name=RELEASE, namespace=NAMESPACE, chart=CHART_OBJ):
    """Renders the chart; returns (objects, hooks, notes, raw manifests by template): the
    release's objects, and apart from them the hooks (objects with a helm.sh/hook annotation)."""
    manifests = chart.render(values or {}, name=name, namespace=namespace)
    objects, hooks, notes = [], [], ""
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = template
                hook = "helm.sh/hook" in (doc["metadata"].get("annotations") or {})
                (hooks if hook else objects).append(doc)
    return objects, hooks, notes, manifests


def render(values=None, **options):
    """Renders the chart; returns (objects, notes, raw manifests by template), without hooks."""
    objects, _, notes, manifests = render_all(values, **options)
    return objects, notes, manifests


def render_hooks(values=None, **options):
    """The hooks the chart renders."""
    return render_all(values, **options)[1]


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind):
    found = by_kind(objects, kind)
    equal(len(found), 1, f"number of {kind} objects")
    return found[0]


def container(objects):
    deployment = one(objects, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    equal(len(containers), 1, "containers in the operator pod")
    return containers[0]


def normalize_rules(rules):
    return sorted(
        (tuple(r.get("apiGroups", [])), tuple(sorted(r.get("resources", []))), tuple(sorted(r.get("verbs", []))))
        for r in rules
    )


def check_rules(rules, cluster=True):
    """The rules are exactly EXPECTED_RULES (and CLUSTER_RULES for a cluster-wide install): no
    wildcard, no Secrets, nothing else."""
    for rule in rules:
        expect(set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected keys in rule {rule}")
        for key in ("apiGroups", "resources", "verbs"):
            expect("*" not in rule.get(key, []), f"wildcard in {rule}")
        expect(not any("secret" in r for r in rule.get("resources", [])), f"secrets in {rule}")
    expected = EXPECTED_RULES + (CLUSTER_RULES if cluster else [])
    wanted = [{"apiGroups": g, "resources": r, "verbs": v} for g, r, v in expected]
    equal(normalize_rules(rules), normalize_rules(wanted), "RBAC rules")


def named(objects, kind, name):
    """The one object of `kind` called `name`."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    expect(len(found) == 1, f"{len(found)} {kind} {name}, expected 1")
    return found[0]


def exact_rules(rules, wanted, what):
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            expect("*" not in rule.get(key, []), f"wildcard in {rule}")
        expect(not any("secret" in r for r in rule.get("resources", [])), f"secrets in {rule}")
    norm = lambda rs: sorted(json.dumps({k: sorted(v) for k, v in r.items()}, sort_keys=True) for r in rs)  # noqa: E731
    equal(norm(rules), norm(wanted), what)


def as_rules(expected):
    return [{"apiGroups": g, "resources": r, "verbs": v} for g, r, v in expected]


def read_crds(directory: Path):
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml"))}


def metric_names():
    """The metric names the operator registers, read from src/metrics.rs."""
    names = set(re.findall(r'"(tokenbudget_[a-z_]+)"', (REPO / "src" / "metrics.rs").read_text()))
    expect(len(names) >= 9, f"too few metric names found in src/metrics.rs: {names}")
    return names


def metrics_in(expr):
    return set(re.findall(r"\b(tokenbudget_[a-z_]+)", expr))


def parse_promql(expr, where):
    """Parses a PromQL expression (Grafana's variables replaced by sample values)."""
    import promql_parser

    sample = (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
              .replace("$namespace", ".*").replace("$budget", ".*"))
    try:
        promql_parser.parse(sample)
    except ValueError as e:
        raise AssertionError(f"{where}: invalid PromQL {expr!r}: {e}") from None


def known_metric(name, names):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in names or base in names


# ---------------------------------------------------------------------------------------------
# Offline checks.


@check("helm lint (strict), with the defaults and with every option on")
def _():
    for values in [None, {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
                          "prometheusRule": {"enabled": True}, "networkPolicy": {"enabled": True},
                          "grafanaDashboard": {"enabled": True}, "watchNamespace": "agents"}]:
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        equal(report["errors"], [], "lint errors")
        serious = [m for m in report["messages"] if m["severity"] >= 2]
        equal(serious, [], "lint warnings and errors")


@check("Chart.yaml: chart 0.2.0, appVersion 0.1.0, the operator's Cargo.toml version")
def _():
    meta = CHART_OBJ.metadata
    equal(meta["version"], "0.2.0", "chart version")
    equal(meta["appVersion"], "0.1.0", "appVersion")
    cargo_version = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    equal(meta["appVersion"], cargo_version, "appVersion vs Cargo.toml")


DEFAULTS, DEFAULT_NOTES, _raw = render()


@check("defaults: exactly the expected objects, all labelled, namespaced in the release namespace")
def _():
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in DEFAULTS)
    equal(kinds, sorted([
        ("ClusterRole", FULLNAME),
        ("ClusterRoleBinding", FULLNAME),
        ("ClusterRole", f"{FULLNAME}-reviews"),
        ("ClusterRoleBinding", f"{FULLNAME}-reviews"),
        ("ClusterRole", f"{FULLNAME}-agent"),
        ("ClusterRole", f"{FULLNAME}-view"),
        ("CustomResourceDefinition", "budgetbindings.tokenbudget.io"),
        ("CustomResourceDefinition", "clustertokenbudgets.tokenbudget.io"),
        ("CustomResourceDefinition", "tokenbudgets.tokenbudget.io"),
        ("Deployment", FULLNAME),
        ("PodDisruptionBudget", FULLNAME),
        ("Role", f"{FULLNAME}-leader-election"),
        ("RoleBinding", f"{FULLNAME}-leader-election"),
        ("Service", f"{FULLNAME}-metrics"),
        ("Service", f"{FULLNAME}-agent-api"),
        ("ServiceAccount", FULLNAME),
    ]), "rendered objects")
    for o in DEFAULTS:
        labels = o["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            expect(key in labels, f"{o['kind']} {o['metadata']['name']} lacks label {key}")
        equal(labels["app.kubernetes.io/instance"], RELEASE, "instance label")
        if o["kind"] in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Role", "RoleBinding"):
            equal(o["metadata"].get("namespace"), NAMESPACE, f"namespace of {o['kind']}")
        expect(o["kind"] != "Secret", "the chart renders a Secret")


@check("deployment: two replicas, rolling updates that never lower the ready ones, spread over nodes, hardened")
def _():
    deployment = one(DEFAULTS, "Deployment")
    equal(deployment["spec"]["replicas"], 2, "replicas")
    equal(deployment["spec"]["strategy"], {"type": "RollingUpdate",
                                           "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, "strategy")
    selector = deployment["spec"]["selector"]["matchLabels"]
    equal(deployment["spec"]["template"]["spec"]["topologySpreadConstraints"], [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": selector}}], "topologySpreadConstraints")
    pdb = one(DEFAULTS, "PodDisruptionBudget")
    equal((pdb["spec"]["maxUnavailable"], pdb["spec"]["selector"]["matchLabels"]), (1, selector), "PDB")
    pod = deployment["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    equal(psc.get("runAsNonRoot"), True, "pod runAsNonRoot")
    equal(psc.get("runAsUser"), 65532, "pod runAsUser")
    equal(psc.get("seccompProfile"), {"type": "RuntimeDefault"}, "pod seccompProfile")
    sc = container(DEFAULTS)["securityContext"]
    equal(sc.get("runAsNonRoot"), True, "runAsNonRoot")
    equal(sc.get("runAsUser"), 65532, "runAsUser")
    equal(sc.get("readOnlyRootFilesystem"), True, "readOnlyRootFilesystem")
    equal(sc.get("allowPrivilegeEscalation"), False, "allowPrivilegeEscalation")
    equal(sc.get("privileged"), False, "privileged")
    equal(sc.get("capabilities"), {"drop": ["ALL"]}, "capabilities")
    equal(sc.get("seccompProfile"), {"type": "RuntimeDefault"}, "seccompProfile")
    expect(not pod.get("hostNetwork") and not pod.get("hostPID"), "host namespaces")


@check("deployment: image, args, env, ports, probes, resources")
def _():
    c = container(DEFAULTS)
    equal(c["image"], "tokenbudget-operator:0.1.0", "image")
    equal(c["imagePullPolicy"], "IfNotPresent", "imagePullPolicy")
    equal(c["args"], ["--bind-address=0.0.0.0:8080", "--leader-election", f"--leader-election-namespace={NAMESPACE}",
                      f"--leader-election-lease-name={FULLNAME}", "--leader-election-lease-duration=15s",
                      "--leader-election-renew-deadline=10s", "--leader-election-retry-period=2s",
                      "--agent-api-bind-address=0.0.0.0:8082", "--agent-api-audience=tokenbudget.io"], "args")
    env = {e["name"]: e for e in c["env"]}
    equal(env["POD_NAME"]["valueFrom"], {"fieldRef": {"fieldPath": "metadata.name"}}, "POD_NAME")
    equal(env["RUST_LOG"]["value"], "info", "RUST_LOG")
    equal(env["LOG_FORMAT"]["value"], "json", "LOG_FORMAT")
    equal(c["ports"], [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"},
                       {"name": "agent-api", "containerPort": 8082, "protocol": "TCP"}], "ports")
    equal(c["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "metrics"}, "liveness probe")
    equal(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"}, "readiness probe")
    for kind in ("requests", "limits"):
        expect({"cpu", "memory"} <= set(c["resources"][kind]), f"resources.{kind} lacks cpu or memory")


@check("service account, bindings and service point at the right things")
def _():
    deployment = one(DEFAULTS, "Deployment")
    pod = deployment["spec"]["template"]
    sa = one(DEFAULTS, "ServiceAccount")
    equal(pod["spec"]["serviceAccountName"], sa["metadata"]["name"], "serviceAccountName")
    selector = deployment["spec"]["selector"]["matchLabels"]
    expect(selector.items() <= pod["metadata"]["labels"].items(), "the selector does not select the pod")
    for name in (FULLNAME, f"{FULLNAME}-reviews"):
        binding = named(DEFAULTS, "ClusterRoleBinding", name)
        equal(binding["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
              f"{name} roleRef")
        equal(binding["subjects"], [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                     "namespace": NAMESPACE}], f"{name} subjects")
    service = named(DEFAULTS, "Service", f"{FULLNAME}-metrics")
    expect(service["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "service selector")
    equal(service["spec"]["ports"], [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}],
          "service ports")
    agents = named(DEFAULTS, "Service", f"{FULLNAME}-agent-api")
    equal(agents["spec"]["selector"], service["spec"]["selector"], "agent API service selector")
    equal(agents["spec"]["ports"], [{"name": "agent-api", "port": 8082, "targetPort": "agent-api", "protocol": "TCP"}],
          "agent API service ports")
    ports = {p["name"]: p["containerPort"] for p in container(DEFAULTS)["ports"]}
    equal(ports, {"metrics": 8080, "agent-api": 8082}, "container ports")
    args = container(DEFAULTS)["args"]
    expect("--agent-api-bind-address=0.0.0.0:8082" in args and "--agent-api-audience=tokenbudget.io" in args,
           f"agent API args: {args}")


@check("RBAC: exactly the listed rules, no wildcard, no Secrets, in one template")
def _():
    check_rules(named(DEFAULTS, "ClusterRole", FULLNAME)["rules"])
    exact_rules(named(DEFAULTS, "ClusterRole", f"{FULLNAME}-reviews")["rules"], as_rules(REVIEW_RULES), "review rules")
    exact_rules(named(DEFAULTS, "ClusterRole", f"{FULLNAME}-agent")["rules"], as_rules(AGENT_RULES), "agent rules")
    view = named(DEFAULTS, "ClusterRole", f"{FULLNAME}-view")
    exact_rules(view["rules"], as_rules(VIEW_RULES), "view rules")
    for role in ("view", "edit", "admin"):
        equal(view["metadata"]["labels"].get(f"rbac.authorization.k8s.io/aggregate-to-{role}"), "true",
              f"aggregated to {role}")
    templates = {o["__template"] for o in DEFAULTS if o["kind"] in ("ClusterRole", "ClusterRoleBinding")}
    equal(templates, {"tokenbudget-operator/templates/rbac.yaml"}, "RBAC templates")
    lines = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("- apiGroups:"):
            expect(lines[i - 1].startswith("#"), f"rule without a comment: {line}")


@check("CRDs: files/crds/ byte-identical to crds/, rendered with only labels and keep added")
def _():
    repo_crds, chart_crds = read_crds(REPO / "crds"), read_crds(CHART / "files" / "crds")
    equal(sorted(chart_crds), sorted(repo_crds), "CRD files")
    for name, data in repo_crds.items():
        expect(chart_crds[name] == data, f"charts/tokenbudget-operator/files/crds/{name} differs from crds/{name}")
    expect(not (CHART / "crds").exists(), "a crds/ directory in the chart would be installed once, never upgraded")
    rendered = {o["metadata"]["name"]: o for o in by_kind(DEFAULTS, "CustomResourceDefinition")}
    for name, data in repo_crds.items():
        source = yaml.safe_load(data)
        crd = copy.deepcopy(rendered[source["metadata"]["name"]])
        del crd["__template"]
        meta = crd["metadata"]
        equal(meta.pop("annotations"), {"helm.sh/resource-policy": "keep"}, f"{name} annotations")
        equal(meta.pop("labels")["app.kubernetes.io/managed-by"], "Helm", f"{name} managed-by")
        equal(crd, source, f"rendered {name} vs crds/{name}")


@check("NOTES: what to do next")
def _():
    for text in ("kind: TokenBudget", "kind: BudgetBinding", "kubectl get tb", "rollout status"):
        expect(text in DEFAULT_NOTES, f"NOTES.txt lacks {text!r}")
    expect("restores every workload it paused" in DEFAULT_NOTES, "NOTES.txt does not tell what uninstall does")
    _, notes, _ = render({"uninstallHook": {"enabled": False}})
    expect("Uninstall:" not in notes, "NOTES.txt tells of a hook that is off")


MONITORING = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
              "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "alertLabels": {"team": "ml"}},
              "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "LLM"}}}


@check("monitoring on: ServiceMonitor selects the metrics Service, honours the budgets' labels")
def _():
    objects, _, _ = render(MONITORING)
    sm = one(objects, "ServiceMonitor")
    equal(sm["apiVersion"], "monitoring.coreos.com/v1", "apiVersion")
    equal(sm["metadata"]["labels"]["release"], "prom", "extra label")
    service = named(objects, "Service", f"{FULLNAME}-metrics")
    expect(sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(),
           "the ServiceMonitor does not select the metrics Service")
    agents = named(objects, "Service", f"{FULLNAME}-agent-api")
    expect(not sm["spec"]["selector"]["matchLabels"].items() <= agents["metadata"]["labels"].items(),
           "the ServiceMonitor selects the agent API's Service")
    equal(sm["spec"]["namespaceSelector"], {"matchNames": [NAMESPACE]}, "namespaceSelector")
    (endpoint,) = sm["spec"]["endpoints"]
    equal((endpoint["port"], endpoint["path"], endpoint["honorLabels"]), ("metrics", "/metrics", True), "endpoint")


ALERTS = ["TokenBudgetEnforcementFailing", "TokenBudgetExhausted", "TokenBudgetOperatorDown", "TokenBudgetScrapesFailing",
          "TokenBudgetStatusNotWritten", "TokenBudgetThresholdReached", "TokenBudgetWatchNotSynced"]
RUNBOOKS = "https://github.com/tokenbudget/tokenbudget-operator/blob/main/docs/operating.md"


def alerts_of(objects):
    (group,) = one(objects, "PrometheusRule")["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


def markdown_anchors(path: Path):
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for line in path.read_text().splitlines():
        m = re.match(r"^#+ (.+)$", line)
        if m:
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


@check("monitoring on: PrometheusRule alerts on thresholds, exhaustion, scrapes, the operator down, enforcement, watches, status")
def _():
    objects, _, _ = render(MONITORING)
    rule = one(objects, "PrometheusRule")
    alerts = alerts_of(objects)
    equal(sorted(alerts), ALERTS, "alerts")
    names = metric_names()
    anchors = markdown_anchors(REPO / "docs" / "operating.md")
    templated = 0
    for alert in alerts.values():
        parse_promql(alert["expr"], alert["alert"])
        for metric in metrics_in(alert["expr"]):
            expect(known_metric(metric, names), f"{alert['alert']} uses {metric}, which the operator does not export")
        equal(alert["labels"]["team"], "ml", "alertLabels")
        for key, text in alert["annotations"].items():
            # Prometheus' own templating survives Helm's; nothing else is left in braces.
            expect("{{" not in text or re.search(r"\{\{`?\s*\$(labels|value)", text), f"{alert['alert']} {key}: {text}")
        templated += any("{{ $" in t for t in alert["annotations"].values())
        runbook = alert["annotations"]["runbook_url"]
        equal(runbook, f"{RUNBOOKS}#{alert['alert'].lower()}", f"{alert['alert']} runbook_url")
        expect(alert["alert"].lower() in anchors, f"docs/operating.md has no heading for {alert['alert']}")
    expect(templated >= 5, "Prometheus templating was eaten by Helm")
    expect("tokenbudget_phase" in alerts["TokenBudgetThresholdReached"]["expr"], "threshold alert metric")
    expect(alerts["TokenBudgetThresholdReached"]["expr"].endswith("== 1"), "threshold alert: phase Warning")
    expect(alerts["TokenBudgetExhausted"]["expr"].endswith("== 2"), "exhausted alert: phase Exhausted")
    expect('tokenbudget_scrapes_total{result!="ok"}' in alerts["TokenBudgetScrapesFailing"]["expr"], "scrape alert")
    equal(alerts["TokenBudgetExhausted"]["labels"]["severity"], "critical", "exhausted severity")
    equal(alerts["TokenBudgetOperatorDown"]["labels"]["severity"], "critical", "operator down severity")
    equal(alerts["TokenBudgetOperatorDown"]["expr"],
          f'absent(up{{job="{FULLNAME}-metrics", namespace="{NAMESPACE}"}} == 1)', "operator down: the Service's job")
    expect("tokenbudget_enforcement_failures_total" in alerts["TokenBudgetEnforcementFailing"]["expr"], "enforcement")
    expect(alerts["TokenBudgetEnforcementFailing"]["expr"].endswith("> 5"), "enforcement threshold")
    expect("tokenbudget_watch_synced" in alerts["TokenBudgetWatchNotSynced"]["expr"], "watch alert")
    expect("tokenbudget_status_write_failures_total" in alerts["TokenBudgetStatusNotWritten"]["expr"], "status alert")
    equal(rule["metadata"]["labels"]["release"], "prom", "extra label")


@check("monitoring: TokenBudgetOperatorDown follows the PodMonitor's job, or prometheusRule.operatorJob")
def _():
    pod_only = {"metrics": {"podMonitor": {"enabled": True}}, "prometheusRule": {"enabled": True}}
    expr = alerts_of(render(pod_only)[0])["TokenBudgetOperatorDown"]["expr"]
    equal(expr, f'absent(up{{job="{NAMESPACE}/{FULLNAME}", namespace="{NAMESPACE}"}} == 1)', "PodMonitor job")
    custom = {"prometheusRule": {"enabled": True, "operatorJob": "tokenbudget", "operatorDownFor": "10m",
                                 "enforcementFailures": 20, "runbookBaseUrl": "https://wiki.example.com/tb"}}
    alerts = alerts_of(render(custom)[0])
    equal(alerts["TokenBudgetOperatorDown"]["expr"], f'absent(up{{job="tokenbudget", namespace="{NAMESPACE}"}} == 1)',
          "operatorJob")
    equal(alerts["TokenBudgetOperatorDown"]["for"], "10m", "operatorDownFor")
    expect(alerts["TokenBudgetEnforcementFailing"]["expr"].endswith("> 20"), "enforcementFailures")
    equal(alerts["TokenBudgetExhausted"]["annotations"]["runbook_url"], "https://wiki.example.com/tb#tokenbudgetexhausted",
          "runbookBaseUrl")


@check("monitoring on: alertLabels may set the severity, which replaces each alert's own")
def _():
    values = {"prometheusRule": {"enabled": True, "alertLabels": {"severity": "page", "team": "ml"}}}
    objects, _, raw = render(values)
    (group,) = one(objects, "PrometheusRule")["spec"]["groups"]
    for alert in group["rules"]:
        equal(alert["labels"], {"severity": "page", "team": "ml"}, f"{alert['alert']} labels")
    # A YAML reader keeps the last of two equal keys; Prometheus' rule loader refuses them.
    (text,) = [text for template, text in raw.items() if template.endswith("prometheusrule.yaml")]
    equal(len(re.findall(r"^ +severity: ", text, re.M)), len(group["rules"]), "severity keys, one per alert")
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    equal(report["errors"], [], "lint errors")


DASHBOARD_FILE = CHART / "dashboards" / "tokenbudget.json"


@check("monitoring on: dashboard ConfigMap with the sidecar label holds dashboards/tokenbudget.json")
def _():
    objects, _, _ = render(MONITORING)
    cm = one(objects, "ConfigMap")
    equal(cm["metadata"]["labels"]["grafana_dashboard"], "1", "sidecar label")
    equal(cm["metadata"]["annotations"], {"grafana_folder": "LLM"}, "annotations")
    equal(json.loads(cm["data"]["tokenbudget.json"]), json.loads(DASHBOARD_FILE.read_text()), "dashboard JSON")


@check("dashboard: datasource variable, namespace and budget variables, real metrics, the asked-for panels")
def _():
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    equal(variables["datasource"]["type"], "datasource", "datasource variable")
    equal(variables["datasource"]["query"], "prometheus", "datasource plugin")
    for name in ("namespace", "budget"):
        equal(variables[name]["datasource"]["uid"], "${datasource}", f"{name} variable datasource")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    equal(len({p["id"] for p in dashboard["panels"]}), len(dashboard["panels"]), "unique panel ids")
    names, used = metric_names(), set()
    for panel in panels:
        equal(panel["datasource"]["uid"], "${datasource}", f"datasource of {panel['title']}")
        for target in panel["targets"]:
            equal(target["datasource"]["uid"], "${datasource}", f"target datasource of {panel['title']}")
            parse_promql(target["expr"], f"panel {panel['title']!r}")
            for metric in metrics_in(target["expr"]):
                expect(known_metric(metric, names), f"panel {panel['title']!r} uses unknown metric {metric}")
                used.add(re.sub(r"_(bucket|sum|count)$", "", metric))
            if "name=" in target["expr"] or "name=~" in target["expr"]:
                expect('namespace=~"$namespace"' in target["expr"] and 'name=~"$budget"' in target["expr"],
                       f"panel {panel['title']!r} ignores the variables")
    for metric in ("tokenbudget_used_tokens", "tokenbudget_limit_tokens", "tokenbudget_used_cost",
                   "tokenbudget_phase", "tokenbudget_scrapes_total", "tokenbudget_scrape_duration_seconds"):
        expect(metric in used, f"no panel shows {metric}")
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    expect(any(e.startswith("rate(tokenbudget_used_tokens") for e in exprs), "no burn-rate panel")
    expect(any("tokenbudget_used_tokens" in e and "/ tokenbudget_limit_tokens" in e for e in exprs),
           "no percent-of-limit panel")
    expect(any("by (result)" in e and "tokenbudget_scrapes_total" in e for e in exprs), "no scrapes-by-result panel")


@check("dashboard: a Chargeback row of spend by team, by model, top workloads and tokens by model, from the counters")
def _():
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    (row,) = [r for r in rows if r["title"] == "Chargeback"]
    below = [r["gridPos"]["y"] for r in rows if r["gridPos"]["y"] > row["gridPos"]["y"]]
    end = min(below, default=10**6)
    panels = [p for p in dashboard["panels"] if p["type"] != "row" and row["gridPos"]["y"] < p["gridPos"]["y"] < end]
    targets = [(p, t) for p in panels for t in p["targets"]]
    for panel, target in targets:
        expr = target["expr"]
        expect("tokenbudget_tokens_total" in expr or "tokenbudget_cost_total" in expr,
               f"{panel['title']!r} does not read the chargeback counters")
        expect("increase(" in expr or "rate(" in expr, f"{panel['title']!r}: a counter read without rate/increase")
        expect('namespace=~"$namespace"' in expr and 'budget=~"$budget"' in expr,
               f"{panel['title']!r} ignores the variables")
        if "tokenbudget_cost_total" in expr:
            expect("currency" in expr and "{{currency}}" in target["legendFormat"],
                   f"{panel['title']!r}: cost without its currency in the legend")
    exprs = [t["expr"] for _, t in targets]
    expect(any("sum by (namespace, currency)" in e and "cost_total" in e for e in exprs), "no spend-by-team panel")
    expect(any("sum by (model, currency)" in e and "cost_total" in e for e in exprs), "no spend-by-model panel")
    expect(any(e.startswith("topk(") and "workload" in e and "[$__range]" in e for e in exprs),
           "no top-workloads-by-cost-in-the-range panel")
    expect(any("by (model, type)" in e and "tokenbudget_tokens_total" in e for e in exprs), "no tokens-by-model panel")
    # No two panels overlap on the grid.
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                expect((x, y) not in cells, f"{p['title']!r} overlaps another panel at {(x, y)}")
                cells.add((x, y))


@check("custom image, resources, scheduling, pod metadata and flags")
def _():
    resources = {"requests": {"cpu": "250m", "memory": "200Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
    objects, notes, _ = render({
        "image": {"repository": "registry.example.com/ml/tokenbudget-operator", "tag": "v9.9.9", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "resources": resources,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}]}}},
        "podAnnotations": {"example.com/owner": "platform"},
        "podLabels": {"team": "platform"},
        "priorityClassName": "system-cluster-critical",
        "operator": {"logLevel": "info,tokenbudget=debug", "logFormat": "text", "maxConcurrentScrapes": 128,
                     "maxConcurrentScrapesPerNamespace": 32, "maxBodyBytes": 33554432, "scrapeKeepAlive": "60s", "extraEnv": [{"name": "TZ", "value": "UTC"}]},
        "metrics": {"port": 9090, "service": {"port": 80}},
    })
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    c = container(objects)
    equal(c["image"], "registry.example.com/ml/tokenbudget-operator:v9.9.9", "image")
    equal(c["imagePullPolicy"], "Always", "pullPolicy")
    equal(c["resources"], resources, "resources")
    equal(pod["spec"]["imagePullSecrets"], [{"name": "regcred"}], "imagePullSecrets")
    equal(pod["spec"]["nodeSelector"], {"kubernetes.io/os": "linux"}, "nodeSelector")
    equal(pod["spec"]["tolerations"][0]["key"], "dedicated", "tolerations")
    expect("nodeAffinity" in pod["spec"]["affinity"], "affinity")
    equal(pod["spec"]["priorityClassName"], "system-cluster-critical", "priorityClassName")
    equal(pod["metadata"]["annotations"], {"example.com/owner": "platform"}, "podAnnotations")
    equal(pod["metadata"]["labels"]["team"], "platform", "podLabels")
    equal(c["args"][:5], ["--bind-address=0.0.0.0:9090", "--max-concurrent-scrapes=128",
                          "--max-concurrent-scrapes-per-namespace=32", "--max-body-bytes=33554432",
                          "--scrape-keep-alive=60s"], "args")
    env = {e["name"]: e.get("value") for e in c["env"]}
    equal((env["RUST_LOG"], "LOG_FORMAT" in env, env["TZ"]), ("info,tokenbudget=debug", False, "UTC"), "env")
    equal(c["ports"][0]["containerPort"], 9090, "container port")
    equal(named(objects, "Service", f"{FULLNAME}-metrics")["spec"]["ports"][0]["port"], 80, "service port")
    expect("registry.example.com/ml/tokenbudget-operator:v9.9.9" in notes, "NOTES shows the image")
    digest = "sha256:" + "ab" * 32
    objects, _, _ = render({"image": {"repository": "r.example.com/op", "tag": "v1", "digest": digest}})
    equal(container(objects)["image"], f"r.example.com/op@{digest}", "image by digest")


@check("watchNamespace: --namespace, a Role + RoleBinding in that namespace, cluster-wide only the reviews and the agent roles")
def _():
    objects, notes, _ = render({"watchNamespace": "agents"})
    equal(sorted((o["kind"], o["metadata"]["name"]) for o in objects if o["kind"].startswith("Cluster")),
          sorted([("ClusterRole", f"{FULLNAME}-reviews"), ("ClusterRoleBinding", f"{FULLNAME}-reviews"),
                  ("ClusterRole", f"{FULLNAME}-agent"), ("ClusterRole", f"{FULLNAME}-view")]),
          "cluster RBAC: the reviews (cluster-scoped kinds) and the roles for namespace users")
    exact_rules(named(objects, "ClusterRole", f"{FULLNAME}-reviews")["rules"], as_rules(REVIEW_RULES), "review rules")
    objects, _, _ = render({"watchNamespace": "agents", "agentApi": {"enabled": False},
                            "rbac": {"aggregateToView": False}})
    expect(not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding"),
           "cluster RBAC without the agent API and the view role")
    operator = [o for o in objects if not o["metadata"]["name"].endswith("-leader-election")]
    role, binding = one(operator, "Role"), one(operator, "RoleBinding")
    equal(role["metadata"]["namespace"], "agents", "Role namespace")
    equal(binding["metadata"]["namespace"], "agents", "RoleBinding namespace")
    check_rules(role["rules"], cluster=False)
    equal(binding["roleRef"]["kind"], "Role", "roleRef kind")
    equal(binding["subjects"][0]["namespace"], NAMESPACE, "subject namespace")
    expect("--namespace=agents" in container(objects)["args"], "--namespace flag")
    expect("namespace agents only" in notes, "NOTES says which namespace is watched")


@check("leader election: the Lease's Role in the release namespace only (get, update by name; create); off: one replica, Recreate")
def _():
    role = one(DEFAULTS, "Role")
    equal(role["metadata"]["namespace"], NAMESPACE, "Lease Role namespace")
    equal(role["rules"], [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [FULLNAME],
         "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ], "Lease rules")
    binding = one(DEFAULTS, "RoleBinding")
    equal((binding["metadata"]["namespace"], binding["roleRef"]["name"], binding["subjects"][0]["name"]),
          (NAMESPACE, role["metadata"]["name"], FULLNAME), "Lease RoleBinding")
    # With a watched namespace, the Lease still lives in the release namespace.
    objects, _, _ = render({"watchNamespace": "agents"})
    lease_role = [o for o in by_kind(objects, "Role") if o["metadata"]["name"].endswith("-leader-election")]
    equal([r["metadata"]["namespace"] for r in lease_role], [NAMESPACE], "Lease Role with watchNamespace")
    objects, _, _ = render({"replicaCount": 1, "leaderElection": {"enabled": False}})
    deployment = one(objects, "Deployment")
    equal((deployment["spec"]["replicas"], deployment["spec"]["strategy"]), (1, {"type": "Recreate"}), "one replica")
    expect(not any(a.startswith("--leader-election") for a in container(objects)["args"]), "election flags")
    equal([o["kind"] for o in objects if o["kind"] in ("Role", "RoleBinding", "PodDisruptionBudget")], [],
          "no Lease RBAC, no PDB")
    objects, _, _ = render({"replicaCount": 1})
    equal(by_kind(objects, "PodDisruptionBudget"), [], "no PDB for one replica")
    spread = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app": "x"}}}]
    objects, _, _ = render({"topologySpreadConstraints": spread})
    equal(one(objects, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"], spread, "spread")
    try:
        render({"replicaCount": 3, "leaderElection": {"enabled": False}})
    except Exception as e:  # noqa: BLE001 - the SDK's error for a template's `fail`
        expect("needs leaderElection.enabled" in str(e), f"the refusal says why: {e}")
    else:
        raise AssertionError("three replicas without leader election rendered")


@check("crds.install=false renders no CRD; crds.keep=false drops the keep annotation")
def _():
    objects, notes, _ = render({"crds": {"install": False}})
    equal(by_kind(objects, "CustomResourceDefinition"), [], "CRDs")
    expect("install them yourself" in notes, "NOTES tells to install the CRDs")
    objects, _, _ = render({"crds": {"keep": False}})
    for crd in by_kind(objects, "CustomResourceDefinition"):
        expect("annotations" not in crd["metadata"], "keep annotation with crds.keep=false")


@check("agentApi.enabled=false: no agent API, its port, Service, reviews or agent role")
def _():
    objects, _, _ = render({"agentApi": {"enabled": False}})
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for gone in (("Service", f"{FULLNAME}-agent-api"), ("ClusterRole", f"{FULLNAME}-reviews"),
                 ("ClusterRoleBinding", f"{FULLNAME}-reviews"), ("ClusterRole", f"{FULLNAME}-agent")):
        expect(gone not in names, f"{gone} without the agent API")
    c = container(objects)
    expect("--agent-api-bind-address=" in c["args"], f"the agent API turned off: {c['args']}")
    equal([p["name"] for p in c["ports"]], ["metrics"], "container ports")


@check("rbac.create=false and an existing ServiceAccount")
def _():
    objects, _, _ = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops-operator"}})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"):
        equal(by_kind(objects, kind), [], kind)
    equal(one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"], "ops-operator", "SA name")


@check("names: release and overrides")
def _():
    objects, _, _ = render(name="budgets")
    equal(one(objects, "Deployment")["metadata"]["name"], "budgets-tokenbudget-operator", "fullname")
    objects, _, _ = render({"fullnameOverride": "tbo"})
    equal({o["metadata"]["name"] for o in objects if o["kind"] in ("Deployment", "ServiceAccount", "ClusterRole")},
          {"tbo", "tbo-reviews", "tbo-agent", "tbo-view"}, "fullnameOverride")


# ---------------------------------------------------------------------------------------------
# The uninstall hook (templates/uninstall-hook.yaml): `tokenbudget-operator release`.

HOOK = f"{FULLNAME}-release"
# Stopping the operator, in the release namespace: its own Deployment's scale, by name.
EXPECTED_HOOK_STOP_RULES = [
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": [FULLNAME], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
]
# Restoring, in the operator's scope: what a deleted budget's cleanup calls.
EXPECTED_HOOK_RESTORE_RULES = [
    (["tokenbudget.io"], ["tokenbudgets"], ["list", "patch"]),
    ([""], ["pods"], ["list", "watch", "patch"]),
    ([""], ["resourcequotas"], ["get", "delete"]),
    (["apps"], ["deployments", "statefulsets"], ["list", "watch", "patch"]),
    (["apps"], ["deployments/scale", "statefulsets/scale"], ["patch"]),
    (["apps"], ["replicasets"], ["list", "watch"]),
    (["batch"], ["jobs", "cronjobs"], ["list", "watch", "patch"]),
    (["events.k8s.io"], ["events"], ["create"]),
]
HOOK_ARGS = ["release", f"--operator-deployment={FULLNAME}", f"--operator-namespace={NAMESPACE}", "--timeout=240"]


def hook_job(hooks):
    job = one(hooks, "Job")
    equal(job["metadata"]["name"], HOOK, "hook Job name")
    return job


@check("uninstall hook: pre-delete, ServiceAccount and RBAC before the Job, all deleted after it")
def _():
    hooks = render_hooks()
    kinds = sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in hooks)
    equal(kinds, sorted([
        ("ServiceAccount", HOOK, NAMESPACE),
        ("Role", f"{HOOK}-stop", NAMESPACE),
        ("RoleBinding", f"{HOOK}-stop", NAMESPACE),
        ("ClusterRole", HOOK, None),
        ("ClusterRoleBinding", HOOK, None),
        ("Job", HOOK, NAMESPACE),
    ]), "hook objects")
    for o in hooks:
        notes = o["metadata"]["annotations"]
        equal(notes["helm.sh/hook"], "pre-delete", f"{o['kind']} hook")
        policy = set(notes["helm.sh/hook-delete-policy"].split(","))
        if o["kind"] == "Job":
            # Kept when it fails, for `kubectl logs`; replaced by the next attempt.
            equal(policy, {"before-hook-creation", "hook-succeeded"}, "Job delete policy")
            equal(notes["helm.sh/hook-weight"], "0", "Job weight")
        else:
            equal(policy, {"before-hook-creation", "hook-succeeded", "hook-failed"}, f"{o['kind']} delete policy")
            equal(notes["helm.sh/hook-weight"], "-10", f"{o['kind']} weight: before the Job")
        expect(o["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, f"{o['kind']} instance label")


@check("uninstall hook: RBAC exactly what `release` calls, a subset of the operator's, bound to the hook's account")
def _():
    hooks = render_hooks()
    stop = one(hooks, "Role")
    exact_rules(stop["rules"], EXPECTED_HOOK_STOP_RULES, "stop rules")
    restore = one(hooks, "ClusterRole")
    exact_rules(restore["rules"], [{"apiGroups": g, "resources": r, "verbs": v} for g, r, v in EXPECTED_HOOK_RESTORE_RULES],
                "restore rules")
    operator = {(g, r, v) for groups, resources, verbs in EXPECTED_RULES for g in groups for r in resources for v in verbs}
    for groups, resources, verbs in EXPECTED_HOOK_RESTORE_RULES:
        for g, r, v in ((g, r, v) for g in groups for r in resources for v in verbs):
            expect((g, r, v) in operator, f"the hook may {v} {r}, which the operator itself may not")
    for kind, role in (("RoleBinding", stop), ("ClusterRoleBinding", restore)):
        binding = one(hooks, kind)
        equal(binding["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": role["kind"],
                                   "name": role["metadata"]["name"]}, f"{kind} roleRef")
        equal(binding["subjects"], [{"kind": "ServiceAccount", "name": HOOK, "namespace": NAMESPACE}], f"{kind} subjects")


@check("uninstall hook: the Job runs `release` as the operator's image, non-root, hardened, never matched by the operator's selector")
def _():
    hooks = render_hooks()
    job = hook_job(hooks)
    spec = job["spec"]
    equal((spec["backoffLimit"], spec["activeDeadlineSeconds"]), (1, 300), "backoffLimit, activeDeadlineSeconds")
    # The program's own failure fails the Job at once; a lost pod is tried again.
    equal(spec["podFailurePolicy"], {"rules": [{"action": "FailJob", "onExitCodes": {
        "containerName": "release", "operator": "In", "values": [1, 2]}}]}, "podFailurePolicy")
    pod = spec["template"]["spec"]
    equal(pod["restartPolicy"], "Never", "restartPolicy")
    equal(pod["serviceAccountName"], HOOK, "serviceAccountName")
    (c,) = pod["containers"]
    operator = container(DEFAULTS)
    equal(c["image"], operator["image"], "the operator's image")
    equal(c["args"], HOOK_ARGS, "args")
    # Every flag exists in the binary's `release` subcommand.
    release_rs = (REPO / "src" / "controller" / "release.rs").read_text()
    for arg in c["args"][1:]:
        field = arg.split("=")[0].removeprefix("--").replace("-", "_")
        expect(f"pub {field}:" in release_rs, f"{arg}: no such flag of `tokenbudget-operator release`")
    env = {e["name"]: e for e in c["env"]}
    equal(env["POD_NAME"]["valueFrom"], {"fieldRef": {"fieldPath": "metadata.name"}}, "POD_NAME")
    psc, sc = pod["securityContext"], c["securityContext"]
    equal((psc["runAsNonRoot"], psc["runAsUser"], psc["seccompProfile"]), (True, 65532, {"type": "RuntimeDefault"}),
          "pod security context")
    equal(sc, operator["securityContext"], "container security context: the operator's")
    equal((sc["runAsNonRoot"], sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["capabilities"]),
          (True, True, False, {"drop": ["ALL"]}), "container security context")
    expect({"cpu", "memory"} <= set(c["resources"]["limits"]), "hook resource limits")
    labels = spec["template"]["metadata"]["labels"]
    selectors = [one(DEFAULTS, "Deployment")["spec"]["selector"]["matchLabels"]]
    selectors += [service["spec"]["selector"] for service in by_kind(DEFAULTS, "Service")]
    selectors += [pdb["spec"]["selector"]["matchLabels"] for pdb in by_kind(DEFAULTS, "PodDisruptionBudget")]
    for o in selectors:
        expect(not o.items() <= labels.items(), f"the selector {o} matches the hook's pod: it would wait for itself")


@check("uninstall hook: watchNamespace, rbac.create=false, a timeout, and off")
def _():
    hooks = render_hooks({"watchNamespace": "agents", "uninstallHook": {"timeout": 100}})
    restore = [o for o in hooks if o["kind"] == "Role" and o["metadata"]["name"] == HOOK]
    equal(len(restore), 1, "a restore Role")
    equal(restore[0]["metadata"]["namespace"], "agents", "restore Role namespace")
    binding = [o for o in hooks if o["kind"] == "RoleBinding" and o["metadata"]["name"] == HOOK][0]
    equal(binding["metadata"]["namespace"], "agents", "restore RoleBinding namespace")
    expect(not by_kind(hooks, "ClusterRole"), "a ClusterRole with watchNamespace")
    stop = [o for o in hooks if o["kind"] == "Role" and o["metadata"]["name"] == f"{HOOK}-stop"][0]
    equal(stop["metadata"]["namespace"], NAMESPACE, "stop Role namespace")
    job = hook_job(hooks)
    equal(job["spec"]["template"]["spec"]["containers"][0]["args"],
          HOOK_ARGS[:3] + ["--timeout=100", "--namespace=agents"], "args with watchNamespace")
    equal(job["spec"]["activeDeadlineSeconds"], 160, "activeDeadlineSeconds")
    hooks = render_hooks({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops-operator"}})
    equal([o["kind"] for o in hooks], ["Job"], "hooks without rbac.create")
    equal(hook_job(hooks)["spec"]["template"]["spec"]["serviceAccountName"], "ops-operator", "hook SA without rbac")
    equal(render_hooks({"uninstallHook": {"enabled": False}}), [], "hooks when off")


# ---------------------------------------------------------------------------------------------
# Values users ask for.


@check("operator.extraArgs, extraVolumes and extraVolumeMounts: the scrape CA mounted and named")
def _():
    ca = "/etc/tokenbudget/scrape-ca/ca.crt"
    values = {"operator": {"extraArgs": [f"--scrape-ca-file={ca}"]},
              "extraVolumes": [{"name": "scrape-ca", "configMap": {"name": "agents-ca"}}],
              "extraVolumeMounts": [{"name": "scrape-ca", "mountPath": "/etc/tokenbudget/scrape-ca", "readOnly": True}]}
    objects, _, _ = render(values)
    c = container(objects)
    equal(c["args"], container(DEFAULTS)["args"] + [f"--scrape-ca-file={ca}"], "args: the chart's, then extraArgs")
    equal(c["volumeMounts"], values["extraVolumeMounts"], "volumeMounts")
    equal(one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"], values["extraVolumes"], "volumes")
    expect("scrape_ca_file" in (REPO / "src" / "controller" / "cli.rs").read_text(), "--scrape-ca-file is a flag")
    c = container(DEFAULTS)
    expect("volumeMounts" not in c and "volumes" not in one(DEFAULTS, "Deployment")["spec"]["template"]["spec"],
           "no volumes by default")


@check("livenessProbe and readinessProbe: the defaults, and any field replaced")
def _():
    c = container(DEFAULTS)
    equal(c["livenessProbe"], {"httpGet": {"path": "/healthz", "port": "metrics"}, "initialDelaySeconds": 5,
                               "periodSeconds": 20, "timeoutSeconds": 3, "failureThreshold": 3}, "liveness probe")
    equal(c["readinessProbe"], {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 10,
                                "timeoutSeconds": 3, "failureThreshold": 3}, "readiness probe")
    objects, _, _ = render({"livenessProbe": {"periodSeconds": 60, "failureThreshold": 5},
                            "readinessProbe": {"initialDelaySeconds": 2}})
    c = container(objects)
    equal((c["livenessProbe"]["periodSeconds"], c["livenessProbe"]["failureThreshold"],
           c["livenessProbe"]["httpGet"]["path"]), (60, 5, "/healthz"), "liveness probe tuned")
    equal((c["readinessProbe"]["initialDelaySeconds"], c["readinessProbe"]["httpGet"]["path"]), (2, "/readyz"),
          "readiness probe tuned")


@check("metrics.podMonitor: selects the operator's pod, port metrics, honours the budgets' labels")
def _():
    objects, _, _ = render({"metrics": {"podMonitor": {"enabled": True, "labels": {"release": "prom"}, "interval": "15s"}}})
    pm = one(objects, "PodMonitor")
    equal(pm["apiVersion"], "monitoring.coreos.com/v1", "apiVersion")
    equal(pm["metadata"]["labels"]["release"], "prom", "extra label")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    expect(pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "the PodMonitor does not select the pod")
    expect(not pm["spec"]["selector"]["matchLabels"].items()
           <= hook_job(render_hooks())["spec"]["template"]["metadata"]["labels"].items(), "it selects the hook's pod")
    equal(pm["spec"]["namespaceSelector"], {"matchNames": [NAMESPACE]}, "namespaceSelector")
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    equal((endpoint["port"], endpoint["path"], endpoint["honorLabels"], endpoint["interval"]),
          ("metrics", "/metrics", True, "15s"), "endpoint")
    equal(by_kind(DEFAULTS, "PodMonitor"), [], "no PodMonitor by default")


@check("prometheusSource: the flags, the token and CA mounted from their Secret and ConfigMap; nothing without a url")
def _():
    args = container(DEFAULTS)["args"]
    expect(not any(a.startswith("--prometheus") for a in args), f"Prometheus flags by default: {args}")
    objects, _, _ = render({"prometheusSource": {"bearerTokenSecret": {"name": "t", "key": "token"}}})
    expect(not any(a.startswith("--prometheus") for a in container(objects)["args"]), "a token without a url")
    expect("volumes" not in one(objects, "Deployment")["spec"]["template"]["spec"], "a volume without a url")
    objects, _, _ = render({"prometheusSource": {"url": "https://prom.monitoring:9090", "lookback": "5m",
                                                 "bearerTokenSecret": {"name": "prom-reader", "key": "token"},
                                                 "caConfigMap": {"name": "prom-ca", "key": "ca.crt"}},
                            "extraVolumes": [{"name": "scrape-ca", "configMap": {"name": "agents-ca"}}],
                            "extraVolumeMounts": [{"name": "scrape-ca", "mountPath": "/etc/tokenbudget/scrape-ca"}]})
    c = container(objects)
    wanted = ["--prometheus-url=https://prom.monitoring:9090", "--prometheus-lookback=5m",
              "--prometheus-bearer-token-file=/etc/tokenbudget/prometheus-token/token",
              "--prometheus-ca-file=/etc/tokenbudget/prometheus-ca/ca.crt"]
    equal([a for a in c["args"] if a.startswith("--prometheus")], wanted, "flags")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    equal(mounts, {"prometheus-token": "/etc/tokenbudget/prometheus-token",
                   "prometheus-ca": "/etc/tokenbudget/prometheus-ca",
                   "scrape-ca": "/etc/tokenbudget/scrape-ca"}, "mounts")
    volumes = {v["name"]: v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    equal(volumes["prometheus-token"]["secret"], {"secretName": "prom-reader", "items": [{"key": "token", "path": "token"}]},
          "token volume")
    equal(volumes["prometheus-ca"]["configMap"], {"name": "prom-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
          "CA volume")
    expect("scrape-ca" in volumes, "extraVolumes kept")


@check("networkPolicy: ingress to the metrics port only, from the peers given; egress open unless set")
def _():
    equal(by_kind(DEFAULTS, "NetworkPolicy"), [], "no NetworkPolicy by default")
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    objects, _, _ = render({"networkPolicy": {"enabled": True, "metricsFrom": peers}})
    np = one(objects, "NetworkPolicy")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    expect(np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items(), "the policy does not select the pod")
    equal(np["spec"]["policyTypes"], ["Ingress"], "policyTypes: egress left open")
    agents = {"ports": [{"port": "agent-api", "protocol": "TCP"}]}
    equal(np["spec"]["ingress"], [{"ports": [{"port": "metrics", "protocol": "TCP"}], "from": peers}, agents],
          "ingress: the metrics port from the peers, the agent API's from anywhere")
    expect("egress" not in np["spec"], "egress rules by default")
    objects, _, _ = render({"networkPolicy": {"enabled": True, "agentApiFrom": peers}, "agentApi": {"port": 9443}})
    equal(one(objects, "NetworkPolicy")["spec"]["ingress"],
          [{"ports": [{"port": "metrics", "protocol": "TCP"}]}, {**agents, "from": peers}],
          "ingress from anywhere to the metrics port, from the agents' peers to the agent API's")
    objects, _, _ = render({"networkPolicy": {"enabled": True}, "agentApi": {"enabled": False}})
    equal(one(objects, "NetworkPolicy")["spec"]["ingress"], [{"ports": [{"port": "metrics", "protocol": "TCP"}]}],
          "without the agent API: the metrics port only")
    egress = [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]
    objects, _, _ = render({"networkPolicy": {"enabled": True, "egress": egress}})
    np = one(objects, "NetworkPolicy")
    equal((np["spec"]["policyTypes"], np["spec"]["egress"]), (["Ingress", "Egress"], egress), "egress restricted")


BAD_VALUES = [
    {"image": {"pullPolicy": "Sometimes"}},
    {"image": {"repository": ""}},
    {"image": {"digest": "latest"}},
    {"watchNamespace": "Not_A_Namespace"},
    {"metrics": {"port": "8080"}},
    {"metrics": {"port": 70000}},
    {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
    {"resources": "small"},
    {"crds": {"install": "yes"}},
    {"operator": {"logFormat": "xml"}},
    {"operator": {"maxConcurrentScrapes": 0}},
    {"operator": {"maxConcurrentScrapesPerNamespace": 0}},
    {"prometheusRule": {"scrapeFailureRatio": 2}},
    {"imagePullSecrets": ["regcred"]},
    {"replicaCount": 0},
    {"replicas": 2},
    {"leaderElection": {"leaseDuration": "fifteen seconds"}},
    {"leaderElection": {"enable": True}},
    {"podDisruptionBudget": {"minAvailable": 1}},
    {"operator": {"extraArgs": ["scrape-ca-file=/x"]}},
    {"operator": {"extraArgs": "--max-body-bytes=1"}},
    {"extraVolumes": [{"configMap": {"name": "ca"}}]},
    {"extraVolumeMounts": [{"name": "ca"}]},
    {"extraVolumeMounts": [{"name": "ca", "mountPath": "relative"}]},
    {"livenessProbe": {"periodSeconds": 0}},
    {"readinessProbe": "/readyz"},
    {"metrics": {"podMonitor": {"enabled": "yes"}}},
    {"metrics": {"podMonitor": {"interval": "30 seconds"}}},
    {"networkPolicy": {"enabled": True, "metricsFrom": [{}]}},
    {"networkPolicy": {"ingress": []}},
    {"networkPolicy": {"enabled": True, "agentApiFrom": [{}]}},
    {"agentApi": {"port": 0}},
    {"agentApi": {"audience": ""}},
    {"agentApi": {"enable": True}},
    {"rbac": {"aggregateToView": "yes"}},
    {"operator": {"scrapeKeepAlive": "a minute"}},
    {"prometheusSource": {"url": "prometheus:9090"}},
    {"prometheusSource": {"lookback": "2 minutes"}},
    {"prometheusSource": {"bearerTokenSecret": {"name": "prom-reader"}}},
    {"prometheusSource": {"caConfigMap": {"name": "prom-ca", "key": "ca.crt", "optional": True}}},
    {"prometheusRule": {"runbookBaseUrl": "docs/operating.md"}},
    {"prometheusRule": {"enforcementFailures": -1}},
    {"uninstallHook": {"timeout": 1}},
    {"uninstallHook": {"enabled": "true"}},
]


@check("values.schema.json: defaults pass, bad values are rejected at install time")
def _():
    CHART_OBJ.validate_schema({})
    CHART_OBJ.validate_schema(MONITORING)
    for bad in BAD_VALUES:
        try:
            CHART_OBJ.validate_schema(bad)
        except helm.HelmValuesError:
            pass
        else:
            raise AssertionError(f"the schema accepts {bad}")
        try:
            render(bad)
        except helm.HelmValuesError:
            pass
        else:
            raise AssertionError(f"rendering accepts {bad}")


@check("docs: every value of values.yaml is in the chart README's table")
def _():
    readme = (CHART / "README.md").read_text()

    def leaves(values, prefix=""):
        for key, value in values.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in ("podSecurityContext", "securityContext",
                                                                   "resources", "grafanaDashboard.labels",
                                                                   "livenessProbe", "readinessProbe",
                                                                   "uninstallHook.resources"):
                yield from leaves(value, path + ".")
            else:
                yield path

    for path in leaves(CHART_OBJ.values):
        expect(f"`{path}`" in readme, f"charts/tokenbudget-operator/README.md does not document {path}")


@check("Dockerfile: cross-compiled on the build platform (amd64, arm64), dist profile, distroless non-root, port 8080, OCI labels")
def _():
    import dockerfile

    commands = dockerfile.parse_file(str(REPO / "Dockerfile"))
    froms = [c for c in commands if c.cmd == "FROM"]
    equal(len(froms), 2, "stages")
    equal(froms[0].flags, ("--platform=$BUILDPLATFORM",), "the build stage runs on the build platform")
    equal(froms[-1].value[0], "gcr.io/distroless/static-debian12:nonroot", "final base image")
    equal(froms[-1].flags, (), "the final stage is of the target platform")
    final = commands[commands.index(froms[-1]):]
    run = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    expect("cargo zigbuild --profile dist --locked --bin tokenbudget-operator" in run, "the build command")
    expect('TOKENBUDGET_GIT_COMMIT="$REVISION"' in run, "the commit of tokenbudget_build_info")
    for arch, target in (("amd64", "x86_64-unknown-linux-musl"), ("arm64", "aarch64-unknown-linux-musl")):
        expect(f"{arch}) target={target}" in run, f"no build for {arch}")
        expect(target in run.split("rustup target add", 1)[1].split("&&")[0], f"rustup lacks {target}")
    build_args = [c.value[0] for c in commands[:commands.index(froms[-1])] if c.cmd == "ARG"]
    expect("TARGETARCH" in build_args, "ARG TARGETARCH in the build stage")
    requirements = (REPO / "hack" / "release-requirements.txt").read_text()
    for arg in build_args:
        for name, tool in (("ZIG_VERSION", "ziglang"), ("CARGO_ZIGBUILD_VERSION", "cargo-zigbuild")):
            if arg.startswith(name + "="):
                expect(f"{tool}=={arg.split('=')[1]}" in requirements, f"{arg} differs from hack/release-requirements.txt")
    user = [c.value[0] for c in final if c.cmd == "USER"]
    equal(user, ["65532:65532"], "USER of the final stage")
    equal(int(user[0].split(":")[0]), CHART_OBJ.values["securityContext"]["runAsUser"], "USER vs runAsUser")
    equal([c.value for c in final if c.cmd == "EXPOSE"],
          [(str(CHART_OBJ.values["metrics"]["port"]), str(CHART_OBJ.values["agentApi"]["port"]))], "EXPOSE")
    equal([c.value for c in final if c.cmd == "ENTRYPOINT"], [("/usr/local/bin/tokenbudget-operator",)], "ENTRYPOINT")
    labels = {}
    for c in final:
        if c.cmd == "LABEL":
            labels.update(zip(c.value[::2], (v.strip('"') for v in c.value[1::2])))
    for key in ("title", "description", "version", "revision", "created", "licenses", "source", "documentation"):
        expect(f"org.opencontainers.image.{key}" in labels, f"no OCI label {key}")
    final_args = dict(c.value[0].split("=", 1) for c in final if c.cmd == "ARG")
    cargo_version = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    equal(final_args["VERSION"], cargo_version, "ARG VERSION vs Cargo.toml")
    equal(labels["org.opencontainers.image.version"], "${VERSION}", "version label")
    equal(labels["org.opencontainers.image.licenses"], CHART_OBJ.metadata["annotations"]["artifacthub.io/license"],
          "licenses label vs the chart's")
    rust = next(c.value[0] for c in commands if c.cmd == "ARG" and c.value[0].startswith("RUST_VERSION="))
    msrv = re.search(r'^rust-version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    expect(as_tuple(rust.split("=")[1]) >= as_tuple(msrv), f"{rust} is older than rust-version {msrv}")
    ignore = (REPO / ".dockerignore").read_text().split()
    for c in commands:
        if c.cmd == "COPY" and not c.flags:
            for source in c.value[:-1]:
                expect((REPO / source).exists(), f"COPY {source}: no such file")
                expect(f"!{source}" in ignore or f"!{source}/" in ignore, f".dockerignore leaves out {source}")


@check("Cargo.toml: the dist profile is release with LTO, one codegen unit, stripped; release itself unchanged")
def _():
    import tomllib

    profiles = tomllib.loads((REPO / "Cargo.toml").read_text())["profile"]
    equal(profiles["dist"], {"inherits": "release", "lto": "fat", "codegen-units": 1, "strip": "symbols"}, "dist")
    expect("lto" not in profiles["release"] and "strip" not in profiles["release"],
           "release has LTO or strip: cargo bench and release tests would pay for it")


@check("hack/release.sh: reproducible linux amd64/arm64 archives, SHA256SUMS, a krew manifest with their checksums")
def _():
    import hashlib
    import tarfile

    version = "v" + re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in ("amd64", "arm64"):
            binary = tmp / "bin" / f"linux_{arch}" / "kubectl-tokenbudget"
            binary.parent.mkdir(parents=True)
            binary.write_text(f"#!/bin/sh\necho {arch}\n")
            binary.chmod(0o755)
        runs = []
        for out in ("one", "two"):
            proc = subprocess.run([str(REPO / "hack" / "release.sh"), "--binaries", str(tmp / "bin"), "--out", str(tmp / out)],
                                  capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "RELEASE_BASE_URL": "https://dl.example.com/v"})
            equal(proc.returncode, 0, f"hack/release.sh: {proc.stderr}")
            runs.append(tmp / out)
        archives = [f"kubectl-tokenbudget_{version}_linux_{arch}.tar.gz" for arch in ("amd64", "arm64")]
        equal(sorted(p.name for p in runs[0].iterdir()), sorted(archives + ["SHA256SUMS", "tokenbudget.yaml"]), "files")
        sums = {}
        for name in archives:
            data = (runs[0] / name).read_bytes()
            equal(data, (runs[1] / name).read_bytes(), f"{name} is not reproducible")
            sums[name] = hashlib.sha256(data).hexdigest()
            with tarfile.open(runs[0] / name) as archive:
                (member,) = archive.getmembers()
                equal((member.name, member.mode, member.uid, member.mtime), ("kubectl-tokenbudget", 0o755, 0, 0),
                      f"{name} member")
                arch = name.rsplit("_", 1)[1].removesuffix(".tar.gz")
                equal(archive.extractfile(member).read().decode(), f"#!/bin/sh\necho {arch}\n", f"{name} content")
        equal((runs[0] / "SHA256SUMS").read_text(), "".join(f"{sums[n]}  {n}\n" for n in archives), "SHA256SUMS")
        manifest = yaml.safe_load((runs[0] / "tokenbudget.yaml").read_text())
        equal((manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]),
              ("krew.googlecontainertools.github.com/v1alpha2", "Plugin", "tokenbudget"), "manifest kind")
        spec = manifest["spec"]
        equal(spec["version"], version, "manifest version")
        for key in ("homepage", "shortDescription", "description"):
            expect(spec.get(key), f"manifest lacks {key}")
        expect(len(spec["shortDescription"]) <= 50, "krew: shortDescription is at most 50 characters")
        platforms = {p["selector"]["matchLabels"]["arch"]: p for p in spec["platforms"]}
        equal(sorted(platforms), ["amd64", "arm64"], "platforms")
        for arch, p in platforms.items():
            name = f"kubectl-tokenbudget_{version}_linux_{arch}.tar.gz"
            equal(p["selector"]["matchLabels"], {"os": "linux", "arch": arch}, "selector")
            equal(p["uri"], f"https://dl.example.com/v/{name}", "uri")
            equal(p["sha256"], sums[name], f"{arch} sha256")
            equal(p["bin"], "kubectl-tokenbudget", "bin")
            equal(p["files"], [{"from": "kubectl-tokenbudget", "to": "."}], "files")
    expect((REPO / "src" / "bin" / "kubectl-tokenbudget.rs").exists(), "the plugin's binary")


# ---------------------------------------------------------------------------------------------
# Against a real API server.


def kubectl(*args, check_rc=True, input_text=None):
    proc = subprocess.run(["kubectl", *args], capture_output=True, text=True, input=input_text, timeout=120)
    if check_rc and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def kubectl_json(*args):
    return json.loads(kubectl(*args, "-o", "json").stdout)


def exists(*args):
    return kubectl("get", *args, check_rc=False).returncode == 0


def access(questions, namespace, sa_namespace, sa):
    """Asks the API server, with one SubjectAccessReview per (verb, resource, group), whether
    the ServiceAccount may do each; returns the answers in order."""
    reviews = []
    for verb, resource, group in questions:
        base, _, sub = resource.partition("/")
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": base}
        if sub:
            attributes["subresource"] = sub
        reviews.append({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": f"system:serviceaccount:{sa_namespace}:{sa}",
                     "groups": ["system:serviceaccounts", f"system:serviceaccounts:{sa_namespace}",
                                "system:authenticated"],
                     "resourceAttributes": attributes}})
    out = kubectl("create", "-f", "-", "-o", "json",
                  input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": reviews})).stdout
    answers, decoder, pos = [], json.JSONDecoder(), 0
    while pos < len(out):
        if out[pos].isspace():
            pos += 1
            continue
        review, pos = decoder.raw_decode(out, pos)
        items = review["items"] if review.get("kind") == "List" else [review]
        answers.extend(bool(item["status"].get("allowed")) for item in items)
    equal(len(answers), len(questions), "number of access review answers")
    return answers


def helm_upgrade(cfg, chart, name, values, **options):
    """`Config.upgrade` with options the SDK's Python wrapper (0.2.2) does not pass on but its
    C library takes, such as force_conflicts (the CLI's --force-conflicts)."""
    if not options:
        return cfg.upgrade(chart, name, values, timeout=120)
    from helm_python import _native

    return json.loads(_native.call_string("helm_upgrade", cfg._raw(), _native.HANDLE(0), chart._raw(), None, name,
                                          json.dumps(values), json.dumps({"timeout_seconds": 120, **options})))


def uninstall_without_hooks(cfg, name):
    """`helm uninstall --no-hooks --ignore-not-found`: the SDK's Python wrapper (0.2.2) does not
    pass `disable_hooks` on, its C library takes it."""
    from helm_python import _native

    return _native.call_string("helm_uninstall", cfg._raw(), name,
                               json.dumps({"ignore_not_found": True, "disable_hooks": True, "timeout_seconds": 120}))


def wait_until(what, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def wait_value(what, get, timeout=60):
    """Waits until `get()` returns something; returns it."""
    found = []
    wait_until(what, lambda: bool(found.append(get()) or found[-1]), timeout)
    return found[-1]


OPERATOR_BIN = REPO / "target" / "debug" / "tokenbudget-operator"
# `helm uninstall` in a process of its own, so that the test can play the kubelet meanwhile.
UNINSTALL = """
import json, sys
import helm_python as helm
cfg = helm.Config(kubeconfig_path=sys.argv[1], namespace=sys.argv[2])
print(json.dumps(cfg.uninstall(sys.argv[3], timeout=int(sys.argv[4]))))
"""


def sa_token(namespace, account):
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    out = kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", "-f", "-",
                  input_text=json.dumps(request)).stdout
    return json.loads(out)["status"]["token"]


def sa_kubeconfig(path: Path, namespace, account):
    """A kubeconfig for the cluster of KUBECONFIG with the ServiceAccount's token as the only
    credential."""
    current = json.loads(kubectl("config", "view", "--minify", "--flatten", "-o", "json").stdout)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": current["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": sa_token(namespace, account)}}],
        "contexts": [{"name": account, "context": {"cluster": "cluster", "user": account}}],
        "current-context": account}))
    path.chmod(0o600)


def uninstall_playing_the_hook(release, namespace, fullname, timeout=240, fake_exits=()):
    """A real `helm uninstall`, with the test as the kubelet of its pre-delete hook: once the
    hook Job's pod exists, its container's command (the operator binary and the pod's args) runs
    here as a process with a token of the pod's ServiceAccount as its only credential; then the
    pod's status says it terminated with that exit status, and the Job controller and Helm take
    it from there. The first pods are reported terminated with the exit statuses of `fake_exits`
    without running (137: a node lost it; 1: the program gave up). Returns (the hook's exit status or None, its log, Helm's exit status, Helm's output)."""
    helm_proc = subprocess.Popen([sys.executable, "-c", UNINSTALL, os.environ["KUBECONFIG"], namespace, release,
                                  str(timeout)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hook, seen, hook_rc, hook_log = f"{fullname}-release", set(), None, ""

    def next_pod():
        if helm_proc.poll() is not None:
            return "helm is done"
        pods = kubectl_json("get", "pods", "-n", namespace, "-l", f"job-name={hook}")["items"]
        # Not the finished pods of an earlier attempt's Job (deleted with it, a little later).
        return next((p for p in pods if p["metadata"]["name"] not in seen and not p["metadata"].get("deletionTimestamp")
                     and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")), None)

    try:
        while (pod := wait_value(f"a pod of the hook Job {hook}", next_pod, timeout=90)) != "helm is done":
            spec, name = pod["spec"], pod["metadata"]["name"]
            seen.add(name)
            (c,) = spec["containers"]
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if len(seen) <= len(fake_exits):
                rc, log = fake_exits[len(seen) - 1], ""
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    config = Path(tmp) / "kubeconfig"
                    sa_kubeconfig(config, namespace, spec["serviceAccountName"])
                    env = {**{e["name"]: e["value"] for e in c.get("env", []) if "value" in e},
                           "POD_NAME": name, "KUBECONFIG": str(config), "PATH": os.environ["PATH"]}
                    run = subprocess.run([str(OPERATOR_BIN), *c["args"]], env=env, capture_output=True, text=True,
                                         timeout=300)
                rc, log = run.returncode, run.stdout + run.stderr
                hook_rc, hook_log = rc, log
            finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            terminated = {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error",
                          "startedAt": started, "finishedAt": finished}
            status = {"status": {"phase": "Succeeded" if rc == 0 else "Failed", "startTime": started,
                                 "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "",
                                                        "ready": False, "restartCount": 0,
                                                        "state": {"terminated": terminated}}]}}
            kubectl("patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))
            if rc == 0:
                break
        out, _ = helm_proc.communicate(timeout=timeout + 30)
        return hook_rc, hook_log, helm_proc.returncode, out
    finally:
        if helm_proc.poll() is None:
            helm_proc.kill()
            helm_proc.wait()


def previous_chart(directory: Path, version="0.1.0"):
    """The chart as it was at `version`, from git history: the newest commit that changed the
    chart while Chart.yaml said that version. Returns the commit."""
    git = lambda *args: subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True).stdout  # noqa: E731
    for rev in git("rev-list", "HEAD", "--", "charts/tokenbudget-operator").decode().split():
        meta = yaml.safe_load(git("show", f"{rev}:charts/tokenbudget-operator/Chart.yaml"))
        if meta["version"] == version:
            archive = git("archive", "--format=tar", rev, "charts/tokenbudget-operator")
            subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
            return rev
    raise AssertionError(f"no commit has chart version {version}")


def live_budget(namespace):
    """What a running operator leaves while a ScaleDown budget is exhausted, made by hand (no
    operator runs here; tests/release.rs has the real one): the budget with its finalizer and
    phase Exhausted, a binding, a Deployment scaled from 2 to 0 and a CronJob suspended, both
    annotated as the operator annotates them, and a Deployment of another budget at 3."""
    objects = [
        {"apiVersion": "tokenbudget.io/v1alpha1", "kind": "TokenBudget",
         "metadata": {"name": "research", "finalizers": ["tokenbudget.io/restore-workloads"]},
         "spec": {"limits": {"tokens": 100}, "enforcement": {"action": "ScaleDown"}}},
        {"apiVersion": "tokenbudget.io/v1alpha1", "kind": "BudgetBinding", "metadata": {"name": "research"},
         "spec": {"budgetRef": {"name": "research"}, "workloads": [{"kind": "Deployment", "name": "summarizer"},
                                                                  {"kind": "CronJob", "name": "nightly"}]}},
    ]
    paused = {"tokenbudget.io/budget": "research", "tokenbudget.io/state": "exhausted"}
    template = {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "agent", "image": "agent:latest"}], "restartPolicy": "Never"}}
    for name, replicas, notes in (("summarizer", 0, {**paused, "tokenbudget.io/paused-replicas": "2"}), ("other", 3, {})):
        objects.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "annotations": notes},
                        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                                 "template": {**template, "metadata": {"labels": {"app": name}},
                                              "spec": {**template["spec"], "restartPolicy": "Always"}}}})
    objects.append({"apiVersion": "batch/v1", "kind": "CronJob",
                    "metadata": {"name": "nightly", "annotations": {**paused, "tokenbudget.io/suspended": "true"}},
                    "spec": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": {"template": template}}}})
    kubectl("create", "-n", namespace, "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    kubectl("patch", "tb", "research", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Exhausted"}}))


def live_state(namespace):
    """The objects of `live_budget`, as the API server holds them: resourceVersion and all."""
    return {kind: {o["metadata"]["name"]: o for o in kubectl_json("get", kind, "-n", namespace)["items"]}
            for kind in ("tokenbudgets.tokenbudget.io", "budgetbindings.tokenbudget.io", "deployments", "cronjobs")}


def check_restored(namespace):
    """The state of `live_budget` after the uninstall hook: everything restored, the finalizer
    gone, the budget and binding kept, the other budget's Deployment untouched."""
    state = live_state(namespace)
    summarizer, nightly = state["deployments"]["summarizer"], state["cronjobs"]["nightly"]
    equal(summarizer["spec"]["replicas"], 2, "summarizer replicas: the paused count")
    equal(nightly["spec"]["suspend"], False, "nightly resumed")
    for o in (summarizer, nightly):
        equal([k for k in o["metadata"].get("annotations", {}) if k.startswith("tokenbudget.io/")], [],
              f"{o['metadata']['name']}: tokenbudget.io annotations")
    budget = state["tokenbudgets.tokenbudget.io"]["research"]
    equal(budget["metadata"].get("finalizers"), None, "the budget's finalizers")
    equal(budget["status"]["phase"], "Exhausted", "the budget's status, kept")
    expect("research" in state["budgetbindings.tokenbudget.io"], "the binding is kept")
    equal(state["deployments"]["other"]["spec"]["replicas"], 3, "another budget's Deployment")



def cluster_checks():
    kubeconfig = os.environ["KUBECONFIG"]
    cfg = helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE)
    scoped_ns, watch_ns, budgets_ns = "tokenbudget-scoped", "tokenbudget-chart-agents", "tokenbudget-chart-budgets"
    upgrade_ns, failed_ns = "tokenbudget-chart-upgrade", "tokenbudget-chart-failed-hook"
    crd_names = ["tokenbudgets.tokenbudget.io", "budgetbindings.tokenbudget.io", "clustertokenbudgets.tokenbudget.io"]

    # Leftovers of an interrupted run go first (without the hook: nobody plays its kubelet).
    for release, namespace in ((RELEASE, NAMESPACE), ("scoped", scoped_ns)):
        uninstall_without_hooks(helm.Config(kubeconfig_path=kubeconfig, namespace=namespace), release)
    for namespace in (budgets_ns, watch_ns, upgrade_ns, failed_ns):
        for budget in kubectl_json("get", "tb", "-n", namespace)["items"] if exists("crd", crd_names[0]) else []:
            # An interrupted run leaves budgets with the finalizer and no operator.
            kubectl("patch", "tb", budget["metadata"]["name"], "-n", namespace, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}')
        kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", "--timeout=60s")

    state = {}

    @check("cluster: the API server is reachable for Helm")
    def _():
        cfg.check_reachable()

    @check("cluster: CRDs that exist without Helm are adopted the documented way")
    def _():
        # A CRD applied with `kubectl apply -f crds/` (the tests, the demo, or a user before the
        # chart) belongs to no release: Helm refuses to take it over unless it carries the
        # release's ownership metadata. docs/install.md documents these two commands.
        present = [n for n in crd_names if exists("crd", n)]
        state["fresh"] = not present
        for name in present:
            kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
            kubectl("annotate", "crd", name, f"meta.helm.sh/release-name={RELEASE}",
                    f"meta.helm.sh/release-namespace={NAMESPACE}", "--overwrite")
        print(f"     CRDs were {'absent: fresh install' if not present else 'present: adopted'}")

    @check("cluster: helm install with the defaults")
    def _():
        release = cfg.install(CHART_OBJ, RELEASE, {}, create_namespace=True, timeout=120)
        equal(release["status"], "deployed", "release status")
        expect("kubectl get tb" in release["notes"], "the release's NOTES")

    @check("cluster: CRDs established, kept on uninstall, served (kubectl get tb)")
    def _():
        kubectl("wait", "--for=condition=established", "--timeout=60s", *[f"crd/{n}" for n in crd_names])
        for name in crd_names:
            crd = kubectl_json("get", "crd", name)
            equal(crd["metadata"]["annotations"].get("helm.sh/resource-policy"), "keep", f"{name} keep")
            equal(crd["metadata"]["labels"].get("app.kubernetes.io/instance"), RELEASE, f"{name} instance label")
            source = yaml.safe_load((REPO / "crds" / f"tokenbudget.io_{name.split('.')[0]}.yaml").read_text())
            equal(crd["spec"]["versions"][0]["schema"], source["spec"]["versions"][0]["schema"], f"{name} schema")
        kubectl("get", "tb,bb", "--all-namespaces")

    @check("cluster: ServiceAccount, ClusterRole (exact rules), ClusterRoleBinding, Deployment, Service exist")
    def _():
        for kind in ("serviceaccount", "deployment", "service"):
            name = f"{FULLNAME}-metrics" if kind == "service" else FULLNAME
            expect(exists(kind, name, "-n", NAMESPACE), f"{kind} {name} missing")
        check_rules(kubectl_json("get", "clusterrole", FULLNAME)["rules"])
        binding = kubectl_json("get", "clusterrolebinding", FULLNAME)
        equal(binding["subjects"][0]["name"], FULLNAME, "binding subject")
        deployment = kubectl_json("get", "deployment", FULLNAME, "-n", NAMESPACE)
        sc = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        equal((sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"]), (True, False), "security context")

    @check("cluster: the API server grants the ServiceAccount every listed verb, and nothing listed as forbidden")
    def _():
        granted = [(verb, resource, groups[0]) for groups, resources, verbs in EXPECTED_RULES + CLUSTER_RULES
                   for resource in resources for verb in verbs]
        answers = access(granted + FORBIDDEN, "default", NAMESPACE, FULLNAME)
        for question, allowed in zip(granted, answers[:len(granted)]):
            expect(allowed, f"the ServiceAccount may not {question}")
        for question, allowed in zip(FORBIDDEN, answers[len(granted):]):
            expect(not allowed, f"the ServiceAccount may {question}")

    @check("cluster: helm upgrade upgrades the CRDs (they are templates, not crds/)")
    def _():
        marker = "Upgraded by the chart test."
        with tempfile.TemporaryDirectory() as tmp:
            changed = Path(tmp) / "tokenbudget-operator"
            shutil.copytree(CHART, changed)
            crd_file = changed / "files" / "crds" / "tokenbudget.io_tokenbudgets.yaml"
            text = crd_file.read_text()
            crd = yaml.safe_load(text)
            old = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]
            expect(text.count(old) == 1, "the marker spot is not unique")
            crd_file.write_text(text.replace(old, marker))
            with helm.Chart.load(changed) as changed_chart:
                # Adopted CRDs still have fields owned by whoever applied them before: Helm 4's
                # server-side apply then needs --force-conflicts once (docs/install.md). A
                # fresh install owns every field and needs nothing.
                force = {} if state["fresh"] else {"force_conflicts": True}
                helm_upgrade(cfg, changed_chart, RELEASE, {}, **force)

        def description():
            crd = kubectl_json("get", "crd", "tokenbudgets.tokenbudget.io")
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]

        equal(description(), marker, "CRD description after the upgrade")
        cfg.upgrade(CHART_OBJ, RELEASE, {}, timeout=120)
        equal(description(), old, "CRD description after upgrading back")

    @check("cluster: helm uninstall runs its hook: workloads restored, finalizers gone, CRDs and budgets kept")
    def _():
        subprocess.run(["cargo", "build", "--locked", "--quiet", "--bin", "tokenbudget-operator"], cwd=REPO,
                       check=True, timeout=1800)
        kubectl("create", "namespace", budgets_ns)
        live_budget(budgets_ns)
        kubectl("apply", "-n", budgets_ns, "-f", str(REPO / "examples" / "minimal-budget.yaml"))
        budgets = kubectl_json("get", "tb", "-n", budgets_ns)["items"]
        hook_rc, hook_log, helm_rc, helm_out = uninstall_playing_the_hook(RELEASE, NAMESPACE, FULLNAME)
        equal(hook_rc, 0, f"the hook's exit status; its log:\n{hook_log}")
        equal(helm_rc, 0, f"helm uninstall's exit status; its output:\n{helm_out}")
        for line in ("the operator is stopped", "released", "Deployment/summarizer", "CronJob/nightly"):
            expect(line in hook_log, f"the hook's log lacks {line!r}:\n{hook_log}")
        expect("forbidden" not in hook_log.lower(), f"the hook met a 403:\n{hook_log}")
        check_restored(budgets_ns)
        for name in crd_names:
            expect(exists("crd", name), f"helm uninstall deleted CRD {name}")
        equal(len(kubectl_json("get", "tb", "-n", budgets_ns)["items"]), len(budgets), "budgets after uninstall")
        hook = f"{FULLNAME}-release"
        for args in (("clusterrole", FULLNAME), ("clusterrolebinding", FULLNAME),
                     ("serviceaccount", FULLNAME, "-n", NAMESPACE), ("deployment", FULLNAME, "-n", NAMESPACE),
                     ("job", hook, "-n", NAMESPACE), ("serviceaccount", hook, "-n", NAMESPACE),
                     ("role", f"{hook}-stop", "-n", NAMESPACE), ("rolebinding", f"{hook}-stop", "-n", NAMESPACE),
                     ("clusterrole", hook), ("clusterrolebinding", hook)):
            wait_until(f"{' '.join(args)} to be deleted", lambda args=args: not exists(*args))
        # No finalizer is left: the budgets' namespace goes at once, with no operator running.
        kubectl("delete", "namespace", budgets_ns, "--wait=true", "--timeout=60s")

    @check("cluster: upgrade from chart 0.1.0 (git history) with budgets live: nothing touched, nothing hooked")
    def _():
        with tempfile.TemporaryDirectory() as tmp:
            rev = previous_chart(Path(tmp))
            print(f"     chart 0.1.0 from commit {rev[:12]}")
            with helm.Chart.load(Path(tmp) / "charts" / "tokenbudget-operator") as previous:
                equal(previous.metadata["version"], "0.1.0", "previous chart version")
                release = cfg.install(previous, RELEASE, {}, timeout=120)
                equal(release["status"], "deployed", "0.1.0 installed")
        kubectl("create", "namespace", upgrade_ns)
        live_budget(upgrade_ns)
        before = live_state(upgrade_ns)
        release = cfg.upgrade(CHART_OBJ, RELEASE, {}, timeout=120)
        equal(release["status"], "deployed", "upgraded")
        helm_release = json.loads(json.dumps(release))
        expect("0.2.0" in json.dumps(helm_release.get("chart", helm_release)), "the release is chart 0.2.0")
        after = live_state(upgrade_ns)
        for kind, objects in before.items():
            for name, o in objects.items():
                equal(after[kind][name]["metadata"]["resourceVersion"], o["metadata"]["resourceVersion"],
                      f"{kind}/{name} was written by the upgrade")
                equal(after[kind][name].get("status"), o.get("status"), f"{kind}/{name} status")
        expect(not exists("job", f"{FULLNAME}-release", "-n", NAMESPACE), "the upgrade ran the uninstall hook")
        for name in crd_names:
            crd = kubectl_json("get", "crd", name)
            source = yaml.safe_load((REPO / "crds" / f"tokenbudget.io_{name.split('.')[0]}.yaml").read_text())
            equal(crd["spec"]["versions"][0]["schema"], source["spec"]["versions"][0]["schema"], f"{name} schema")
        # And the upgraded release uninstalls with its hook.
        hook_rc, hook_log, helm_rc, helm_out = uninstall_playing_the_hook(RELEASE, NAMESPACE, FULLNAME)
        equal((hook_rc, helm_rc), (0, 0), f"hook and helm exit statuses:\n{hook_log}\n{helm_out}")
        check_restored(upgrade_ns)

    @check("cluster: a hook that fails stops the uninstall (nothing deleted, its Job kept); uninstalling again completes")
    def _():
        cfg.install(CHART_OBJ, RELEASE, {}, timeout=120)
        kubectl("create", "namespace", failed_ns)
        live_budget(failed_ns)
        # The first pod is lost (137): tried again. The second gives up (1): the Job fails at once,
        # by its podFailurePolicy, whatever backoffLimit leaves.
        hook_rc, _, helm_rc, helm_out = uninstall_playing_the_hook(RELEASE, NAMESPACE, FULLNAME, fake_exits=(137, 1))
        equal(hook_rc, None, "the hook program never ran")
        expect(helm_rc != 0, f"helm uninstall succeeded with a failed hook:\n{helm_out}")
        hook = f"{FULLNAME}-release"
        expect(exists("deployment", FULLNAME, "-n", NAMESPACE), "the release's objects were deleted anyway")
        job = kubectl_json("get", "job", hook, "-n", NAMESPACE)
        failed = [c for c in job["status"].get("conditions", []) if c["type"] == "Failed" and c["status"] == "True"]
        equal([c["reason"] for c in failed], ["PodFailurePolicy"], "the Job failed by its podFailurePolicy, kept")
        wait_until("the hook's ServiceAccount to be deleted", lambda: not exists("serviceaccount", hook, "-n", NAMESPACE))
        budget = kubectl_json("get", "tb", "research", "-n", failed_ns)
        equal(budget["metadata"]["finalizers"], ["tokenbudget.io/restore-workloads"], "the finalizer, until a hook ran")
        hook_rc, hook_log, helm_rc, helm_out = uninstall_playing_the_hook(RELEASE, NAMESPACE, FULLNAME)
        equal((hook_rc, helm_rc), (0, 0), f"hook and helm exit statuses:\n{hook_log}\n{helm_out}")
        check_restored(failed_ns)
        wait_until("the Job to be deleted", lambda: not exists("job", hook, "-n", NAMESPACE))
        wait_until("the Deployment to be deleted", lambda: not exists("deployment", FULLNAME, "-n", NAMESPACE))

    @check("cluster: watchNamespace installs a Role + RoleBinding there, and grants nothing elsewhere")
    def _():
        kubectl("create", "namespace", watch_ns)
        scoped = helm.Config(kubeconfig_path=kubeconfig, namespace=scoped_ns)
        scoped.install(CHART_OBJ, "scoped", {"watchNamespace": watch_ns, "crds": {"install": False}},
                       create_namespace=True, timeout=120)
        name = "scoped-tokenbudget-operator"
        try:
            check_rules(kubectl_json("get", "role", name, "-n", watch_ns)["rules"], cluster=False)
            expect(exists("rolebinding", name, "-n", watch_ns), "RoleBinding missing")
            expect(not exists("clusterrole", name), "a ClusterRole with watchNamespace")
            expect(exists("crd", "tokenbudgets.tokenbudget.io"), "crds.install=false removed the CRDs")
            questions = [("list", "pods", ""), ("patch", "deployments/scale", "apps"),
                         ("patch", "tokenbudgets/status", "tokenbudget.io"), ("create", "events", "events.k8s.io")]
            equal(access(questions, watch_ns, scoped_ns, name), [True] * len(questions), "granted in the namespace")
            equal(access(questions, "default", scoped_ns, name), [False] * len(questions), "granted elsewhere")
        finally:
            hook_rc, hook_log, helm_rc, helm_out = uninstall_playing_the_hook("scoped", scoped_ns, name)
        equal((hook_rc, helm_rc), (0, 0), f"hook and helm exit statuses:\n{hook_log}\n{helm_out}")
        expect("the operator is stopped" in hook_log, f"the hook's log:\n{hook_log}")

    for namespace in (budgets_ns, watch_ns, upgrade_ns, failed_ns, scoped_ns, NAMESPACE):
        kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")


def main():
    offline = "--offline" in sys.argv[1:]
    if not offline:
        if not os.environ.get("KUBECONFIG"):
            print("KUBECONFIG is not set: run against a cluster (eval \"$(hack/testbed.sh env)\") or pass --offline")
            return 2
        try:
            cluster_checks()
        except Exception:  # noqa: BLE001 - setup failures count as a failed check
            RESULTS.append(("cluster setup", False))
            traceback.print_exc(file=sys.stdout)
    failed = [name for name, ok in RESULTS if not ok]
    print(f"chart tests took {time.monotonic() - STARTED:.1f}s")
    for name in failed:
        print(f"failed: {name}")
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
