"""The CiliumNode files ``make run`` writes, taken by a real kube-apiserver as they are.

``FileClusterClient`` writes nodes of both families with pod pools, a status error and a
cleared one; each file is then created on the session's API server (Cilium's CRD installed):
its spec by a create, its status through the status subresource, as ``kubectl create -f`` and a
status update would. The server validates both against the CRD's schema, and prunes what the
schema does not declare, so the object read back must hold exactly the file's spec and status.
tests/unit/test_ciliumnode_files.py checks the same against every listed release's schema
offline; this is the server's own word on the default one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import AsyncClient, KubeConfig

from service.adapters.kubernetes import client as kube_client
from service.adapters.kubernetes.files import FileClusterClient
from tests.harness.kube import KubeAPIServer

pytestmark = [pytest.mark.kube, pytest.mark.anyio]
CiliumNode = kube_client.CiliumNode


@pytest.fixture
async def raw(kube_apiserver: KubeAPIServer) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(config=KubeConfig.from_file(kube_apiserver.kubeconfig_path))
    await client.deletecollection(CiliumNode)
    try:
        yield client
    finally:
        await client.deletecollection(CiliumNode)
        await client.close()


async def test_the_files_are_stored_by_the_api_server_unchanged(
    raw: AsyncClient, tmp_path: Path
) -> None:
    files = FileClusterClient(tmp_path)
    pods: dict[Any, str] = {
        ipaddress.ip_address("10.0.1.2"): "kube-system/coredns-1",
        ipaddress.ip_address("10.0.1.3"): "router",
        ipaddress.ip_address("fd00::102"): "kube-system/coredns-1",
    }
    await files.apply_pod_cidrs(
        "worker-a",
        [ipaddress.ip_network("10.0.1.0/24"), ipaddress.ip_network("fd00::100/120")],
        pod_ips=pods,
    )
    await files.apply_status_error("worker-a", "")
    await files.apply_pod_cidrs("lab-3", [])
    await files.apply_status_error("lab-3", "allocator full")
    await files.apply_pod_cidrs("plain", [ipaddress.ip_network("10.0.2.0/24")])

    for path in sorted(tmp_path.glob("*.yaml")):
        written = yaml.safe_load(path.read_text())
        status = written.pop("status", None)
        await raw.create(CiliumNode(written), field_manager="kubectl-create")
        if status is not None:
            await raw.apply(
                CiliumNode.Status(
                    {**written, "status": status},
                ),
                field_manager="kubectl-status",
                force=True,
            )
        stored = (await raw.get(CiliumNode, path.stem)).to_dict()
        assert stored["spec"] == written["spec"], path.name
        assert stored.get("status") == status, path.name
