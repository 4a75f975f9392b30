"""The CiliumNode files ``make run`` writes without a cluster (``FileClusterClient``).

Every object written is valid against the ``openAPIV3Schema`` of Cilium's CiliumNode CRD, of
every release the Kubernetes harness lists (taken from Cilium's Go module by ``make services``),
and has no field the schema does not declare: an API server would prune such a field, so the
file would not be what the cluster stores. Also: another writer's fields survive ipledger's
writes, writes leave no temporary file behind, and a name that is not a Kubernetes name never
becomes a path.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from service import errors
from service.adapters.kubernetes.files import FileClusterClient
from tests.ciliumnode_schema import assert_valid, crd_schema, undeclared
from tests.harness import kube

pytestmark = pytest.mark.anyio

V4 = ipaddress.IPv4Network("10.0.7.0/24")
V6 = ipaddress.IPv6Network("fd00::700/120")


@pytest.fixture(scope="module", params=kube.cilium_crd_versions())
def schema(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The CRD of every Cilium release the harness lists (compose/kube/cilium-crds.txt)."""
    return crd_schema(request.param)


async def test_written_objects_are_valid_ciliumnodes(
    tmp_path: Path, schema: dict[str, Any]
) -> None:
    client = FileClusterClient(tmp_path)
    pods = {
        ipaddress.ip_address("10.0.7.2"): "kube-system/coredns-1",
        ipaddress.ip_address("10.0.7.3"): "router",
        ipaddress.ip_address("fd00::702"): "kube-system/coredns-1",
    }
    await client.apply_pod_cidrs("worker-1", [V4, V6], pod_ips=pods)
    await client.apply_status_error("worker-1", "")
    await client.apply_pod_cidrs("worker-2", [])
    await client.apply_status_error("worker-2", "allocator full")

    first = assert_valid(tmp_path / "worker-1.yaml", schema)
    second = assert_valid(tmp_path / "worker-2.yaml", schema)
    assert first["metadata"] == {"name": "worker-1"}  # nothing only a server would add

    assert first["spec"]["ipam"] == {
        "podCIDRs": ["10.0.7.0/24", "fd00::700/120"],
        "pool": {"10.0.7.2": {"owner": "kube-system/coredns-1"}, "10.0.7.3": {"owner": "router"}},
        "ipv6-pool": {"fd00::702": {"owner": "kube-system/coredns-1"}},
    }
    assert first["status"] == {"ipam": {"operator-status": {"error": ""}}}
    assert second["status"] == {"ipam": {"operator-status": {"error": "allocator full"}}}
    # The check itself rejects what a server would prune.
    assert list(undeclared({"spec": {"ipam": {"podCIDR": []}}}, schema)) == [".spec.ipam.podCIDR"]


async def test_other_writers_fields_survive_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    client = FileClusterClient(tmp_path)
    path = tmp_path / "worker-1.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNode",
                "metadata": {"name": "worker-1", "labels": {"zone": "a"}},
                "spec": {"addresses": [{"type": "InternalIP", "ip": "192.0.2.1"}], "ipam": {}},
            }
        )
    )

    applied = await client.apply_pod_cidrs("worker-1", [V4])
    stored = yaml.safe_load(path.read_text())

    assert applied.addresses == ("192.0.2.1",)
    assert stored["metadata"]["labels"] == {"zone": "a"}
    assert stored["spec"]["ipam"]["podCIDRs"] == ["10.0.7.0/24"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-1.yaml"]
    assert (await client.get_node("worker-1")) == applied


async def test_a_name_that_is_no_kubernetes_name_is_refused(tmp_path: Path) -> None:
    client = FileClusterClient(tmp_path / "nodes")
    for name in ("../escape", ".hidden", "Upper", "a/b", ""):
        with pytest.raises(errors.ClusterApiRejectedError):
            await client.apply_pod_cidrs(name, [V4])
    assert not (tmp_path / "escape.yaml").exists()
    assert not (tmp_path / "nodes").exists()


async def test_a_file_that_is_not_a_ciliumnode_is_an_error_not_skipped(tmp_path: Path) -> None:
    client = FileClusterClient(tmp_path)
    (tmp_path / "worker-1.yaml").write_text("kind: ConfigMap\n")

    with pytest.raises(errors.ClusterApiRejectedError, match="not a CiliumNode"):
        await client.list_nodes()
