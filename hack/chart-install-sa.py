#!/usr/bin/env python3
"""Installs the Helm chart for real and writes a kubeconfig that acts as its ServiceAccount.

tests/rbac.rs uses it to run the operator binary with exactly the RBAC the chart grants, and to
show what that ServiceAccount may not do. With the Helm v4 Go SDK (helm-python-sdk) of
hack/chart-test-requirements.txt; kubectl and KUBECONFIG (an admin of the cluster) as for the
other tests.

    .venv/bin/python hack/chart-install-sa.py install RELEASE NAMESPACE KUBECONFIG_OUT [--watch-namespace NS]
    .venv/bin/python hack/chart-install-sa.py uninstall RELEASE NAMESPACE
    .venv/bin/python hack/chart-install-sa.py render RELEASE NAMESPACE

install: installs the chart as RELEASE into NAMESPACE (which must exist) with
`crds.install=false` (the tests install the CRDs), asks the TokenRequest API for a token of its
ServiceAccount, writes a kubeconfig with the cluster of the current KUBECONFIG context and that token to
KUBECONFIG_OUT, and prints one JSON line: {"serviceAccount": ..., "namespace": ..., "kubeconfig": ...}.
uninstall: removes the release (no error if it is not there), without running its uninstall hook.
render: prints the objects the chart renders with its default values as one JSON list, for
tests that apply a part of it (tests/agent_api.rs: the ClusterRole `<fullname>-agent`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "tokenbudget-operator"


def kubectl(*args: str, input_text: str | None = None) -> str:
    proc = subprocess.run(["kubectl", *args], capture_output=True, text=True, input=input_text, timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def config(namespace: str) -> helm.Config:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        raise SystemExit("KUBECONFIG is not set: eval \"$(hack/testbed.sh env)\" first")
    return helm.Config(kubeconfig_path=kubeconfig, namespace=namespace)


def service_account(manifest: str) -> str:
    accounts = [d["metadata"]["name"] for d in yaml.safe_load_all(manifest) if d and d.get("kind") == "ServiceAccount"]
    if len(accounts) != 1:
        raise SystemExit(f"the release has {len(accounts)} ServiceAccounts, expected 1")
    return accounts[0]


def token(namespace: str, account: str) -> str:
    """A token of the ServiceAccount from the TokenRequest API, valid for an hour."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 3600}}
    out = kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                  "-f", "-", input_text=json.dumps(request))
    return json.loads(out)["status"]["token"]


def write_kubeconfig(path: Path, account: str, bearer: str) -> None:
    """The current context's cluster (server, and its CA or insecure-skip-tls-verify, as the
    admin kubeconfig has it), with the ServiceAccount's token as the only credential."""
    current = json.loads(kubectl("config", "view", "--minify", "--flatten", "-o", "json"))
    cluster = current["clusters"][0]["cluster"]
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": bearer}}],
        "contexts": [{"name": account, "context": {"cluster": "cluster", "user": account}}],
        "current-context": account,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)


def install(release: str, namespace: str, out: Path, watch_namespace: str) -> None:
    values = {"crds": {"install": False}}
    if watch_namespace:
        values["watchNamespace"] = watch_namespace
    with helm.Chart.load(CHART) as chart:
        result = config(namespace).install(chart, release, values, timeout=120)
    if result.get("info", {}).get("status", result.get("status")) not in (None, "deployed"):
        raise SystemExit(f"release {release} is not deployed: {result.get('info')}")
    account = service_account(result["manifest"])
    write_kubeconfig(out, account, token(namespace, account))
    print(json.dumps({"serviceAccount": account, "namespace": namespace, "kubeconfig": str(out)}))


def uninstall(release: str, namespace: str) -> None:
    """`helm uninstall --no-hooks`: the tests that use this script run no node, so the chart's
    uninstall hook (a Job) would never run; hack/chart-test.py tests the hook. The SDK's Python
    wrapper (0.2.2) does not pass `disable_hooks` on, its C library takes it."""
    from helm_python import _native

    _native.call_string("helm_uninstall", config(namespace)._raw(), release,
                        json.dumps({"ignore_not_found": True, "disable_hooks": True, "timeout_seconds": 120}))


def render(release: str, namespace: str) -> None:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render({}, name=release, namespace=namespace)
    objects = [d for name, text in sorted(manifests.items()) if not name.endswith("NOTES.txt")
               for d in yaml.safe_load_all(text) if d]
    print(json.dumps(objects))


def main(argv: list[str]) -> None:
    usage = __doc__.split("\n\n")[1]
    if len(argv) >= 4 and argv[0] == "install":
        rest = argv[4:]
        watch = ""
        if rest[:1] == ["--watch-namespace"] and len(rest) == 2:
            watch = rest[1]
        elif rest:
            raise SystemExit(usage)
        install(argv[1], argv[2], Path(argv[3]), watch)
    elif len(argv) == 3 and argv[0] == "uninstall":
        uninstall(argv[1], argv[2])
    elif len(argv) == 3 and argv[0] == "render":
        render(argv[1], argv[2])
    else:
        raise SystemExit(usage)


if __name__ == "__main__":
    main(sys.argv[1:])
