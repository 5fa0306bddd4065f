"""The deployment kit in deploy/, offline: the Kustomize base and its overlays rendered without
kubectl and validated against the Kubernetes schemas that ``kubernetes-validate`` ships; the
"restricted" Pod Security Standard on every pod; probes, port, user and folders that match the
daemon and the Dockerfile; alerts and dashboard on metrics the daemon exports. promtool checks
and unit-tests the rules in .ci/run (``promtool test rules deploy/prometheus/tests.yaml``)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reconciler.daemon.metrics import Metrics
from reconciler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KITS = {
    "base": DEPLOY / "kubernetes",
    "git-sync": DEPLOY / "overlays" / "git-sync",
    "monitoring": DEPLOY / "overlays" / "monitoring",
}
RULES = DEPLOY / "prometheus" / "rules.yaml"
DASHBOARD = DEPLOY / "grafana" / "reconcile.json"
# The oldest Kubernetes still maintained upstream when this kit was written, and the newest the
# schemas cover: a field that one of them lacks or renamed fails here.
VERSIONS = ("1.32", kubernetes_validate.latest_version())
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}  # CRDs: no schema ships; checked below

Resource = dict[str, Any]


# -- rendering: kustomization.yaml's resources, then its JSON patches ----------------------


def render(folder: Path) -> list[Resource]:
    """The resources ``kubectl kustomize folder`` would give, for the subset the kit uses:
    resources (files or kustomization folders) and RFC 6902 patches aimed by kind and name."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    assert not unknown, f"{folder}: render() does not apply {sorted(unknown)}; teach it first"
    resources: list[Resource] = []
    for entry in kustomization["resources"]:
        path = (folder / entry).resolve()
        if path.is_dir():
            resources += render(path)
        else:
            resources += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        (resource,) = [
            r for r in resources
            if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
        ]  # fmt: skip
        patched = _json_patch(resource, yaml.safe_load(patch["patch"]))
        resources[resources.index(resource)] = patched
    return resources


def _json_patch(document: Resource, operations: list[dict[str, Any]]) -> Resource:
    """``document`` with RFC 6902's test, add, replace and remove applied (a copy)."""
    document = copy.deepcopy(document)
    for operation in operations:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]
        ]
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        op = operation["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op == "test":
                assert node[index] == operation["value"], operation
            elif op == "add":
                node.insert(index, operation["value"])
            elif op == "replace":
                node[index] = operation["value"]
            elif op == "remove":
                del node[index]
        elif op == "test":
            assert node[last] == operation["value"], operation
        elif op in ("add", "replace"):
            assert op == "add" or last in node, operation
            node[last] = operation["value"]
        elif op == "remove":
            del node[last]
        else:
            raise AssertionError(f"unsupported patch operation {operation}")
    return document


RENDERED = {name: render(folder) for name, folder in KITS.items()}


def _one(kit: str, kind: str) -> Resource:
    (found,) = [r for r in RENDERED[kit] if r["kind"] == kind]
    return found


def _pod(kit: str) -> Resource:
    pod: Resource = _one(kit, "Deployment")["spec"]["template"]["spec"]
    return pod


def _containers(pod: Resource) -> Iterator[Resource]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def _reconcile(kit: str) -> Resource:
    (container,) = [c for c in _pod(kit)["containers"] if c["name"] == "reconcile"]
    return container


def _env(container: Resource) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _dockerfile() -> tuple[str, dict[str, str]]:
    """The Dockerfile's USER and its ENV settings."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    (user,) = re.findall(r"(?m)^USER\s+(\S+)", text)
    env = dict(
        item.split("=", 1)
        for line in re.findall(r"(?m)^ENV\s+(.*)$", text)
        for item in line.split()
    )
    return user, env


# -- the manifests --------------------------------------------------------------------------


def test_the_kits_hold_what_they_say() -> None:
    """The base is the workload alone (it applies on any cluster); monitoring adds the operator's
    two kinds; git-sync changes the Deployment only."""
    kinds = {name: sorted(r["kind"] for r in rendered) for name, rendered in RENDERED.items()}
    base = ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    assert kinds["base"] == base
    assert kinds["git-sync"] == base
    assert kinds["monitoring"] == sorted([*base, "PrometheusRule", "ServiceMonitor"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("kit", "resource"),
    [
        pytest.param(kit, r, id=f"{kit}-{r['kind']}-{r['metadata']['name']}")
        for kit, rendered in RENDERED.items()
        for r in rendered
        if r["kind"] not in OPERATOR_KINDS
    ],
)
def test_each_resource_validates_against_the_kubernetes_schema(
    kit: str, resource: Resource, version: str
) -> None:
    """Every built-in resource passes the API's schema, strictly (an unknown or misspelt field
    fails), on the oldest maintained and the newest Kubernetes the schemas cover."""
    kubernetes_validate.validate(resource, version, strict=True)


def test_the_service_monitor_scrapes_the_service() -> None:
    """The ServiceMonitor (a CRD: no schema ships with kubernetes-validate) selects the Service
    by its labels and scrapes /metrics on a port the Service names."""
    monitor, service = _one("monitoring", "ServiceMonitor"), _one("monitoring", "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}


def test_the_prometheus_rule_carries_the_rules_file() -> None:
    """The PrometheusRule's spec is rules.yaml, the file promtool checks and tests."""
    rule = _one("monitoring", "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), (
        "deploy/prometheus/prometheusrule.yaml differs from rules.yaml: copy rules.yaml under spec"
    )


@pytest.mark.parametrize("kit", ["base", "git-sync"])
def test_every_pod_meets_the_restricted_pod_security_standard(kit: str) -> None:
    """The "restricted" profile's checks, on the pod and each of its containers, init ones too:
    non-root, RuntimeDefault seccomp, no privilege escalation, every capability dropped, no host
    namespaces or host paths; and a read-only root file system, as the image allows."""
    pod = _pod(kit)
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"hostNetwork", "hostPID", "hostIPC", "hostUsers"} & set(pod)
    for volume in pod["volumes"]:
        kind = set(volume) - {"name"}
        assert kind <= {"configMap", "secret", "emptyDir", "projected", "downwardAPI"}, volume
    for container in _containers(pod):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc.get("privileged", False) is False, container["name"]
        assert sc.get("runAsNonRoot", context["runAsNonRoot"]) is True, container["name"]
        assert sc.get("runAsUser", context["runAsUser"]) != 0, container["name"]
        assert sc.get("seccompProfile", context["seccompProfile"]) == {"type": "RuntimeDefault"}
        assert not any("hostPort" in p for p in container.get("ports", [])), container["name"]


@pytest.mark.parametrize("kit", ["base", "git-sync"])
def test_the_writable_folders_are_volumes(kit: str) -> None:
    """On a read-only root, the image's state folder and /tmp are emptyDir volumes; the
    schedules folder is a directory mount (never subPath: the kubelet would not update it)."""
    _, env = _dockerfile()
    pod, container = _pod(kit), _reconcile(kit)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in (env["RECONCILER_STATE_DIR"], "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
        assert not mounts[path].get("readOnly", False)
    assert not any("subPath" in m for c in _containers(pod) for m in c.get("volumeMounts", []))
    schedules = _env(container).get("RECONCILER_SCHEDULES_DIR", env["RECONCILER_SCHEDULES_DIR"])
    assert any(Path(schedules).is_relative_to(path) for path in mounts), schedules


def test_the_probes_and_port_match_the_daemon() -> None:
    """Liveness asks /healthz and readiness /readyz, routes the daemon's app serves, on the
    container port 8080 that RECONCILER_HTTP_ADDRESS binds on every interface; the Service
    forwards to it."""
    container = _reconcile("base")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    address = _env(container)["RECONCILER_HTTP_ADDRESS"]
    assert address == "0.0.0.0:8080"
    routes = {route.path for route in _app_routes()}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert path in routes
        assert ports.get(get["port"], get["port"]) == 8080
    (service_port,) = _one("base", "Service")["spec"]["ports"]
    assert ports[service_port["targetPort"]] == 8080


def _app_routes() -> list[Any]:
    from reconciler.daemon.http import build_app

    return list(build_app(Metrics()).routes)


def test_the_image_user_and_settings_match_the_dockerfile() -> None:
    """runAsUser and runAsGroup are the Dockerfile's USER; the image is this version's."""
    user, _ = _dockerfile()
    uid, _, gid = user.partition(":")
    for kit in ("base", "git-sync"):
        pod = _pod(kit)
        for context in [pod["securityContext"]] + [c["securityContext"] for c in _containers(pod)]:
            assert str(context.get("runAsUser", uid)) == uid
            assert str(context.get("runAsGroup", gid or uid)) == (gid or uid)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _reconcile("base")["image"] == f"reconcile:{version}"


def test_the_deployment_shape() -> None:
    """Two replicas spread over nodes, a PodDisruptionBudget that keeps one, resources, the
    database URL and API key from a Secret, and a termination grace above the shutdown grace."""
    deployment, pod, container = _one("base", "Deployment"), _pod("base"), _reconcile("base")
    assert deployment["spec"]["replicas"] == 2
    labels = deployment["spec"]["selector"]["matchLabels"]
    affinity = pod["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == labels
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    budget = _one("base", "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"] == labels
    assert budget["maxUnavailable"] == 1
    assert {"requests", "limits"} <= set(container["resources"])
    env = _env(container)
    for name in ("RECONCILER_DATABASE_URL", "RECONCILER_API_KEY"):
        assert env[name]["secretKeyRef"]["name"] == "reconcile"
    grace = int(env.get("RECONCILER_SHUTDOWN_GRACE", Settings().shutdown_grace))
    assert grace == Settings().shutdown_grace
    # Beyond the grace: the process records the runs it interrupted and closes its sessions.
    assert pod["terminationGracePeriodSeconds"] >= grace + 10


def test_the_example_documents_validate() -> None:
    """The schedules ConfigMap holds valid documents, their schedules disabled, and names the
    known_hosts file where the Deployment mounts it."""
    from reconciler.model.loading import load_files

    (schedules,) = [
        r for r in RENDERED["base"] if r["metadata"]["name"] == "reconcile-schedules"
    ]  # fmt: skip
    files = [(name, text.encode()) for name, text in schedules["data"].items()]
    loaded = load_files(files)
    assert loaded.ok, [str(f) for f in loaded.findings]
    documents = [d for _, text in files for d in yaml.safe_load_all(text)]
    assert all(d["spec"]["enabled"] is False for d in documents if d["kind"] == "Schedule")
    mounts = {m["name"]: m["mountPath"] for m in _reconcile("base")["volumeMounts"]}
    for d in documents:
        if d["kind"] == "Project" and "sftp" in d["spec"]:
            assert d["spec"]["sftp"]["known_hosts_file"] == f"{mounts['known-hosts']}/known_hosts"


def test_git_sync_shares_its_checkout_with_reconcile() -> None:
    """In the git-sync overlay the schedules folder is the synced link inside the volume that
    git-sync writes (an init container first, so the first load sees the files)."""
    pod, container = _pod("git-sync"), _reconcile("git-sync")
    (volume,) = [v for v in pod["volumes"] if v["name"] == "schedules"]
    assert "emptyDir" in volume
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "schedules"]
    syncers = [c for c in _containers(pod) if c["name"].startswith("git-sync")]
    assert [c["name"] for c in syncers] == ["git-sync-init", "git-sync"]
    for syncer in syncers:
        env = _env(syncer)
        (root,) = [m["mountPath"] for m in syncer["volumeMounts"] if m["name"] == "schedules"]
        assert env["GITSYNC_ROOT"] == root
        folder = Path(_env(container)["RECONCILER_SCHEDULES_DIR"])
        assert folder.relative_to(mount["mountPath"]).parts[0] == env["GITSYNC_LINK"]
    assert _env(syncers[0])["GITSYNC_ONE_TIME"] == "true"


# -- alerts and dashboard -------------------------------------------------------------------


def _exported() -> set[str]:
    """The sample names the daemon's registry can expose."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def _rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        rule.get("alert", rule.get("record")): rule["expr"]
        for group in groups
        for rule in group["rules"]
    }


def _dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        f"{panel['title']} {target['refId']}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }


@pytest.mark.parametrize(
    "expressions", [_rule_expressions, _dashboard_expressions], ids=["rules", "dashboard"]
)
def test_alerts_and_dashboard_use_metrics_the_daemon_exports(expressions: Any) -> None:
    """Every reconcile_* (and process_*) name in a rule or a panel is one the daemon exports (or
    a recording rule of rules.yaml): a renamed metric cannot leave a silent alert behind."""
    known = _exported() | set(_rule_expressions())
    for name, expr in expressions().items():
        used = set(re.findall(r"\b(?:reconcile[_:]|process_)[A-Za-z0-9_:]*", expr))
        assert used, name
        assert used <= known, f"{name}: {sorted(used - known)} not exported"


def test_the_alerts_are_the_documented_ones() -> None:
    """The alerts the README lists, each unit-tested in tests.yaml both ways."""
    alerts = {n for n in _rule_expressions() if not n.startswith("reconcile:")}
    assert alerts == {
        "ReconcileScheduleNotSucceeding", "ReconcileRunsFailing", "ReconcileConfigLoadFailing",
        "ReconcileNoLeader", "ReconcileAbsent", "ReconcileDatabaseDown",
        "ReconcileStartLatenessHigh",
    }  # fmt: skip
    readme = (ROOT / "README.md").read_text()
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests.yaml").read_text())["tests"]
    for alert in alerts:
        assert f"`{alert}`" in readme
        cases = [
            case["exp_alerts"]
            for test in tests
            for case in test.get("alert_rule_test", [])
            if case["alertname"] == alert
        ]
        assert [] in cases, f"{alert}: no case where it does not fire"
        assert any(cases), f"{alert}: no case where it fires"


def test_the_dashboard_queries_parse() -> None:
    """Each panel's query is valid PromQL (promtool parses them as recording rules), with the
    dashboard's variables set."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (.ci/install-system-deps installs it)")
    values = {"$namespace": "imports", "$job": "reconcile", "$__rate_interval": "5m"}
    rules = []
    for index, query in enumerate(_dashboard_expressions().values()):
        expr = re.sub(r"\$\w+", lambda m: values[m.group()], query)
        rules.append({"record": f"dashboard:panel{index}", "expr": expr})
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "job"}
    check = subprocess.run(
        [promtool, "check", "rules", "/dev/stdin"],
        input=yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}),
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
