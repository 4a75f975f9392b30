"""The Helm chart (compose/helm/ipledger) with a real helm and a real Kubernetes API server.

helm is built from the Go module proxy by compose/helm/build.sh (`make services`); without it the
tests are skipped, and fail under ``CI=true``. What is checked:

- ``helm lint --strict`` with the defaults and with every optional part switched on;
- what ``helm template`` renders: the allocator pair, sync, API, Services, RBAC, the setup Job
  and its pool ConfigMap, and the ServiceMonitor only when asked for;
- the RBAC is compose/kubernetes/rbac.yaml's, rule for rule (that file is the one source and
  says why each verb is there), with ``delete`` only under ``sync.deleteOrphans``;
- every ``IPLEDGER_*`` variable a container gets is one the code reads and docs/configuration.md
  documents; the values Cilium also has keep Cilium's names;
- the pool.configured event the setup Job appends is a valid event that ``ipledger simulate``
  applies without error, for the defaults and for an IPv4-only pool;
- every rendered object passes ``kubectl apply --dry-run=server`` against the test API server
  (the ``kube_apiserver`` fixture: a real kube-apiserver with etcd), which validates built-in
  kinds against their schemas, strictly (an unknown field is refused, which the test also
  checks), and runs admission; the ServiceMonitor too, once the prometheus-operator's CRD
  (taken unmodified from its Go module by compose/helm/build.sh) is installed there.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import deployment
from tests.harness import kube

CHART = deployment.ROOT / "compose" / "helm" / "ipledger"
RBAC = deployment.ROOT / "compose" / "kubernetes" / "rbac.yaml"
OPTIONAL_RBAC = deployment.ROOT / "compose" / "kubernetes" / "rbac-optional.yaml"
RELEASE = "rel"
NAMESPACE = "default"
EVERYTHING_ON = {
    "prometheus.serviceMonitor.enabled": "true",
    "database.url": "postgresql://ipledger:secret@postgres:5432/ipledger",
    "database.apiUrl": "postgresql://ipledger_api:secret2@postgres:5432/ipledger",
    "sync.deleteOrphans": "true",
    "sync.mirrorPodIPs": "true",
    "sync.ownerReferences": "true",
    "watchNodes.enabled": "true",
    "watchNodes.mirrorNodePodCIDRs": "true",
}


@pytest.fixture(scope="module")
def helm() -> Path:
    return deployment.cached_tool("helm", "bin", "helm", build="compose/helm/build.sh")


def render(helm: Path, values: dict[str, str] | None = None) -> list[dict[str, Any]]:
    arguments = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for key, value in (values or {}).items():
        arguments += ["--set-string" if key.startswith("database.") else "--set", f"{key}={value}"]
    result = subprocess.run(arguments, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_helm_lint_strict(helm: Path, values: dict[str, str]) -> None:
    arguments = [str(helm), "lint", "--strict", str(CHART)]
    for key, value in values.items():
        arguments += ["--set-string" if key.startswith("database.") else "--set", f"{key}={value}"]
    result = subprocess.run(arguments, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_what_the_chart_renders(helm: Path) -> None:
    objects = render(helm)
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == {f"{RELEASE}-ipledger-{c}" for c in ("allocator", "sync", "api")}
    commands = {name: containers(d)[0]["args"] for name, d in deployments.items()}
    assert commands == {
        f"{RELEASE}-ipledger-allocator": ["run"],
        f"{RELEASE}-ipledger-sync": ["sync"],
        f"{RELEASE}-ipledger-api": ["api"],
    }
    allocators = deployments[f"{RELEASE}-ipledger-allocator"]["spec"]
    assert allocators["replicas"] == 2
    # An upgrade stops the old writers before the new ones migrate (docs/operations.md).
    assert allocators["strategy"] == {"type": "Recreate"}
    assert set(by_kind(objects, "Service")) == {
        f"{RELEASE}-ipledger-api",
        f"{RELEASE}-ipledger-allocator-metrics",
        f"{RELEASE}-ipledger-sync-metrics",
    }
    job = by_kind(objects, "Job")[f"{RELEASE}-ipledger-setup"]
    assert [c["args"][0] for c in containers(job)] == ["init", "append"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert by_kind(objects, "ServiceMonitor") == {}
    assert by_kind(objects, "Secret") == {}, "with database.existingSecret the chart makes none"
    for deployment_object in deployments.values():
        pod = deployment_object["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in containers(deployment_object):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["image"] == "ipledger:0.1.0"

    everything = render(helm, EVERYTHING_ON)
    monitor = by_kind(everything, "ServiceMonitor")[f"{RELEASE}-ipledger"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    secret = by_kind(everything, "Secret")[f"{RELEASE}-ipledger-database"]
    assert set(secret["stringData"]) == {"url", "api-url"}
    # `init` creates the API's role from the URL the API then connects with.
    job = by_kind(everything, "Job")[f"{RELEASE}-ipledger-setup"]
    api = by_kind(everything, "Deployment")[f"{RELEASE}-ipledger-api"]
    for pod in (job, api):
        refs = {e["name"]: e.get("valueFrom") for e in containers(pod)[0]["env"]}
        assert refs["IPLEDGER_API_DATABASE_URL"]["secretKeyRef"]["key"] == "api-url"

    without_sync = render(helm, {"sync.enabled": "false"})
    kinds = {obj["kind"] for obj in without_sync}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    assert f"{RELEASE}-ipledger-sync" not in by_kind(without_sync, "Deployment")


def test_the_rbac_is_compose_kubernetes_rbac(helm: Path) -> None:
    source = list(yaml.safe_load_all(RBAC.read_text(encoding="utf-8")))
    role = next(doc for doc in source if doc["kind"] == "ClusterRole")
    account = next(doc for doc in source if doc["kind"] == "ServiceAccount")

    objects = render(helm)
    rendered = by_kind(objects, "ClusterRole")[f"{RELEASE}-ipledger-sync"]
    assert rendered["rules"] == role["rules"]
    assert set(by_kind(objects, "ServiceAccount")) == {account["metadata"]["name"]}
    binding = by_kind(objects, "ClusterRoleBinding")[f"{RELEASE}-ipledger-sync"]
    assert binding["roleRef"]["name"] == rendered["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    sync = by_kind(objects, "Deployment")[f"{RELEASE}-ipledger-sync"]
    assert sync["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]

    # --delete-orphans needs delete, as the commented line of rbac.yaml says; nothing else moves.
    deleting = by_kind(render(helm, {"sync.deleteOrphans": "true"}), "ClusterRole")
    rules = deleting[f"{RELEASE}-ipledger-sync"]["rules"]
    assert rules[0]["verbs"] == [*role["rules"][0]["verbs"], "delete"]
    assert rules[1:] == role["rules"][1:]
    assert '# verbs: ["get", "list", "watch", "create", "patch", "delete"]' in RBAC.read_text()


def test_the_optional_rbac_is_compose_kubernetes_rbac_optional(helm: Path) -> None:
    source = list(yaml.safe_load_all(OPTIONAL_RBAC.read_text(encoding="utf-8")))
    roles = {doc["metadata"]["name"]: doc for doc in source if doc["kind"] == "ClusterRole"}
    bindings = {
        doc["metadata"]["name"]: doc for doc in source if doc["kind"] == "ClusterRoleBinding"
    }
    objects = render(helm, EVERYTHING_ON)
    rendered_roles = by_kind(objects, "ClusterRole")
    rendered_bindings = by_kind(objects, "ClusterRoleBinding")
    for name in (
        "ipledger-sync-owner-references",
        "ipledger-watch-nodes",
        "ipledger-watch-nodes-podcidrs",
    ):
        chart_name = f"{RELEASE}-ipledger-{name.removeprefix('ipledger-')}"
        assert rendered_roles[chart_name]["rules"] == roles[name]["rules"], name
        (subject,) = rendered_bindings[chart_name]["subjects"]
        (expected,) = bindings[name]["subjects"]
        assert subject["name"] == expected["name"], name
    watch = by_kind(objects, "Deployment")[f"{RELEASE}-ipledger-watch-nodes"]
    pod = watch["spec"]["template"]["spec"]
    assert watch["spec"]["replicas"] == 1, "watch-nodes is not meant to run twice"
    assert pod["serviceAccountName"] == "ipledger-watch-nodes"
    assert pod["containers"][0]["args"][0] == "watch-nodes"
    # Off by default: the base install grants nothing on v1 Nodes.
    default_roles = by_kind(render(helm), "ClusterRole").values()
    assert all(rule["resources"] != ["nodes"] for r in default_roles for rule in r["rules"])


def test_every_variable_set_is_one_the_code_reads_and_the_reference_documents(
    helm: Path,
) -> None:
    used: set[str] = set()
    for obj in render(helm, EVERYTHING_ON):
        if obj["kind"] in ("Deployment", "Job"):
            for container in containers(obj):
                used.update(deployment.environment_names(container.get("env", [])))
    assert used
    assert used - deployment.code_variables() == set(), "variables no code under service/ reads"
    assert used - deployment.documented_variables() == set(), "not in docs/configuration.md"


def test_values_named_like_ciliums(helm: Path) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    # Cilium's Helm defaults of cluster-pool mode, under Cilium's keys.
    assert values["ipam"]["operator"] == {
        "clusterPoolIPv4PodCIDRList": ["10.0.0.0/8"],
        "clusterPoolIPv4MaskSize": 24,
        "clusterPoolIPv6PodCIDRList": ["fd00::/104"],
        "clusterPoolIPv6MaskSize": 120,
    }
    assert values["cluster"]["name"] == "default"
    assert set(values["k8sClientRateLimit"]) == {"qps", "burst"}
    assert "serviceMonitor" in values["prometheus"]
    sync = by_kind(render(helm, {"cluster.name": "east"}), "Deployment")[f"{RELEASE}-ipledger-sync"]
    env = {e["name"]: e.get("value") for e in containers(sync)[0]["env"]}
    assert env["IPLEDGER_SYNC_CLUSTER"] == "east"
    assert (env["IPLEDGER_SYNC_QPS"], env["IPLEDGER_SYNC_BURST"]) == ("20", "40")


def _pool_event(objects: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = by_kind(objects, "ConfigMap")[f"{RELEASE}-ipledger-pool"]
    lines = configmap["data"]["pool.jsonl"].splitlines()
    assert len(lines) == 1
    event: dict[str, Any] = json.loads(lines[0])
    return event


@pytest.mark.parametrize(
    ("values", "ipv4", "ipv6"),
    [
        ({}, ["10.0.0.0/8"], ["fd00::/104"]),
        (
            {
                "cluster.name": "east",
                "ipam.operator.clusterPoolIPv4PodCIDRList": "{10.20.0.0/16,10.30.0.0/16}",
                "ipam.operator.clusterPoolIPv4MaskSize": "26",
                "ipam.operator.clusterPoolIPv6PodCIDRList": "null",
            },
            ["10.20.0.0/16", "10.30.0.0/16"],
            [],
        ),
    ],
    ids=["cilium-defaults", "ipv4-only"],
)
def test_the_setup_job_appends_a_pool_the_allocator_accepts(
    helm: Path, values: dict[str, str], ipv4: list[str], ipv6: list[str]
) -> None:
    event = _pool_event(render(helm, values))
    assert event["type"] == "pool.configured"
    assert event["clusterPoolIPv4PodCIDRList"] == ipv4
    assert event["clusterPoolIPv6PodCIDRList"] == ipv6
    node = {"type": "node.added", "id": "n1", "cluster": event["cluster"], "node": "worker-1"}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "simulate", "--decisions", "-"],
        input=f"{json.dumps(event)}\n{json.dumps(node)}\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=deployment.ROOT,
    )
    assert result.returncode == 0, result.stderr
    pool, added = (json.loads(line) for line in result.stdout.splitlines())
    assert pool["error"] is None, pool
    assert pool["id"] == event["id"]
    assert added["error"] is None, added
    assert len(added["podCIDRs"]) == (1 if not ipv6 else 2)
    # The same values give the same id, so an upgrade that changes nothing repeats the event.
    assert _pool_event(render(helm, values))["id"] == event["id"]


def _group(api_version: str) -> str:
    """The API group of an apiVersion: ``apps`` of ``apps/v1``, empty for the core ``v1``."""
    group, _, _ = api_version.rpartition("/")
    return group


@pytest.mark.kube
def test_every_rendered_object_passes_a_server_side_dry_run(
    helm: Path, kube_apiserver: kube.KubeAPIServer, tmp_path: Path
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    # The ServiceMonitor's CRD is prometheus-operator's, taken from its Go module by
    # compose/helm/build.sh; installed for real (a dry run of a CRD serves nothing).
    crd = deployment.cached_tool(
        "helm",
        "crds",
        "servicemonitors.monitoring.coreos.com.yaml",
        build="compose/helm/build.sh",
        executable=False,
    )
    for command in (
        ["apply", "--server-side", "--filename", str(crd)],
        [
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
        ],
    ):
        installed = subprocess.run(
            [kubectl, "--kubeconfig", str(kube_apiserver.kubeconfig_path), *command],
            capture_output=True,
            text=True,
            check=False,
            timeout=90,
        )
        assert installed.returncode == 0, installed.stderr
    checked = render(helm, EVERYTHING_ON)
    assert "ServiceMonitor" in {obj["kind"] for obj in checked}
    result = dry_run(kubectl, kube_apiserver, checked, tmp_path / "rendered.yaml")
    assert result.returncode == 0, result.stderr
    applied = sorted(result.stdout.split())
    expected = sorted(
        f"{obj['kind'].lower()}.{_group(obj['apiVersion'])}/{obj['metadata']['name']}".replace(
            "./", "/"
        )
        for obj in checked
    )
    assert applied == expected

    # The server does validate: one unknown field in a pod template is refused.
    broken = copy.deepcopy(by_kind(checked, "Deployment")[f"{RELEASE}-ipledger-allocator"])
    broken["spec"]["template"]["spec"]["containers"][0]["notAField"] = 1
    refused = dry_run(kubectl, kube_apiserver, [broken], tmp_path / "broken.yaml")
    assert refused.returncode != 0
    assert "notAField" in refused.stderr


def dry_run(
    kubectl: str, server: kube.KubeAPIServer, objects: list[dict[str, Any]], manifest: Path
) -> subprocess.CompletedProcess[str]:
    """``kubectl apply --dry-run=server`` of ``objects``: validated and admitted, not stored."""
    manifest.write_text(yaml.safe_dump_all(objects), encoding="utf-8")
    return subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(server.kubeconfig_path),
            "apply",
            "--dry-run=server",
            "--namespace",
            NAMESPACE,
            "--output",
            "name",
            "--filename",
            str(manifest),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
