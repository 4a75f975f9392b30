"""A ``ports.ClusterClient`` over a directory, each CiliumNode a YAML file: runs without a cluster.

``make run`` (``ipledger up``) without a kubeconfig has no Kubernetes cluster to mirror into, yet
the mirroring should be visible: the sync worker then writes each CiliumNode it would apply to
``<dir>/<name>.yaml`` (``IPLEDGER_CILIUMNODE_DIR``; ``.data/ciliumnodes`` under ``make run``),
as the API server would store it, minus what only a server adds (uid, timestamps, managedFields),
so that ``kubectl create -f <dir>`` would create the same objects. Built by
``service.bootstrap.open_cluster_clients``; it passes the same contract suite as the real client
(tests/contract/test_cluster_client_contract.py), and what it writes is checked against Cilium's
CRD (tests/unit/test_ciliumnode_files.py).

A write reads the file, changes exactly ipledger's fields (``spec.ipam.podCIDRs``, the pod pools,
``status.ipam.operator-status.error``), keeps every other field (what a person or another tool
wrote), and replaces the file atomically: a temporary file in the same directory, flushed to
disk, renamed over the old one, so a reader (or a crash) sees the old object or the new one,
never half of one. The resource version is a digest of the file's bytes. Writes are serialised
by one lock and done in a worker thread; the files are small, and the sync worker's rate
limiter, not this adapter, decides how often they are written.

What a server would do and this cannot: tell who edited a field (a non-empty
``spec.ipam.podCIDRs`` is reported as ipledger's, the directory being ipledger's own output),
or report changes as they happen (``watch_nodes`` waits for ever; the sync worker's periodic
listing repairs a hand edit). There are no v1 Nodes and no pods: ``get_kube_node`` finds none,
so no ownerReference is written, and ``list_pods`` refuses rather than answer "none" (which
would make every held address look leaked). Unreadable files are errors
(``ClusterApiRejectedError``), not silently skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import yaml

from service import errors, ports
from service.adapters.kubernetes.client import API_VERSION, FIELD_MANAGER, KIND

SUFFIX = ".yaml"
# An RFC 1123 subdomain, which every CiliumNode name is (it is the node's name): also a file
# name that cannot leave the directory or hide as a dotfile.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_NAME = 253
_NO_CHANGES: tuple[Any, ...] = ()


class FileClusterClient:
    """``ports.ClusterClient`` over ``directory``, one ``<name>.yaml`` per CiliumNode."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.description = f"files in {directory}/ (no Kubernetes cluster)"
        self._lock = anyio.Lock()
        self._closed = False

    async def apply_pod_cidrs(
        self,
        name: str,
        pod_cidrs: Sequence[ports.Network],
        *,
        pod_ips: Mapping[ports.Address, str] | None = None,
    ) -> ports.ObservedNode:
        cidrs = [str(cidr) for cidr in pod_cidrs]

        def change(obj: dict[str, Any] | None) -> dict[str, Any]:
            node = obj if obj is not None else _new_object(name)
            ipam = _child(_child(node, "spec"), "ipam")
            ipam["podCIDRs"] = cidrs
            if pod_ips is not None:
                # As the real client: a family without addresses is left out, so the field goes.
                for key, version in (("pool", 4), ("ipv6-pool", 6)):
                    family = {
                        str(address): {"owner": owner}
                        for address, owner in sorted(pod_ips.items(), key=lambda item: int(item[0]))
                        if address.version == version
                    }
                    if family:
                        ipam[key] = family
                    else:
                        ipam.pop(key, None)
            return node

        return await self._write(name, change, create=True)

    async def apply_status_error(self, name: str, error: str) -> ports.ObservedNode:
        def change(obj: dict[str, Any] | None) -> dict[str, Any]:
            assert obj is not None  # _write raises NotFound first
            operator = _child(_child(_child(obj, "status"), "ipam"), "operator-status")
            operator["error"] = error
            return obj

        return await self._write(name, change, create=False)

    async def get_node(self, name: str) -> ports.ObservedNode | None:
        self._check_open()
        path = self._path(name)
        return await anyio.to_thread.run_sync(_read_observed, path)

    async def list_nodes(self) -> list[ports.ObservedNode]:
        self._check_open()
        return await anyio.to_thread.run_sync(self._list)

    async def delete_node(self, name: str) -> bool:
        self._check_open()
        path = self._path(name)
        async with self._lock:
            try:
                await anyio.to_thread.run_sync(path.unlink)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise errors.ClusterApiRejectedError(f"deleting {path}: {exc}") from exc
        return True

    async def list_nodes_at(self) -> ports.Listing[ports.ObservedNode]:
        return ports.Listing(tuple(await self.list_nodes()), "")

    async def watch_nodes(
        self, resource_version: str
    ) -> AsyncIterator[ports.Change[ports.ObservedNode]]:
        # Nothing but ipledger (and a person with an editor) writes these files: there is no
        # change to follow, and the worker's periodic listing repairs a hand edit.
        self._check_open()
        await anyio.sleep_forever()
        for change in _NO_CHANGES:  # an async generator that never yields
            yield change

    async def apply_owner(self, name: str, owner: ports.KubeNode) -> ports.ObservedNode:
        def change(obj: dict[str, Any] | None) -> dict[str, Any]:
            assert obj is not None  # _write raises NotFound first
            metadata = _child(obj, "metadata")
            reference = {"apiVersion": "v1", "kind": "Node", "name": owner.name, "uid": owner.uid}
            metadata["ownerReferences"] = [reference]
            return obj

        return await self._write(name, change, create=False)

    # --- v1 Nodes and pods: a directory of CiliumNodes has neither --------------------------

    async def get_kube_node(self, name: str) -> ports.KubeNode | None:
        self._check_open()
        return None

    async def list_kube_nodes(self) -> ports.Listing[ports.KubeNode]:
        self._check_open()
        return ports.Listing((), "")

    async def watch_kube_nodes(
        self, resource_version: str
    ) -> AsyncIterator[ports.Change[ports.KubeNode]]:
        self._check_open()
        await anyio.sleep_forever()
        for change in _NO_CHANGES:  # an async generator that never yields
            yield change

    async def set_kube_node_pod_cidrs(
        self, name: str, uid: str, pod_cidrs: Sequence[str]
    ) -> ports.KubeNode:
        self._check_open()
        raise errors.ClusterApiNotFoundError(
            f"Node {name} not found: CiliumNode files have no v1 Nodes", status=404
        )

    async def list_pods(self) -> frozenset[str]:
        # An empty answer would report every held address as leaked.
        raise errors.ClusterApiRejectedError(
            "CiliumNode files have no pods: checking for leaked addresses needs a cluster"
        )

    async def close(self) -> None:
        self._closed = True

    # --- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClusterApiError("the client is closed")

    def _path(self, name: str) -> Path:
        if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
            raise errors.ClusterApiRejectedError(f"{name!r} is not a valid CiliumNode name")
        return self.directory / f"{name}{SUFFIX}"

    async def _write(
        self,
        name: str,
        change: Any,
        *,
        create: bool,
    ) -> ports.ObservedNode:
        self._check_open()
        path = self._path(name)

        def write() -> ports.ObservedNode:
            current = _read_object(path)
            if current is None and not create:
                raise errors.ClusterApiNotFoundError(f"CiliumNode {name} not found", status=404)
            data = _dump(change(current))
            _replace(path, data)
            return _observed(name, yaml.safe_load(data), data)

        async with self._lock:
            return await anyio.to_thread.run_sync(write)

    def _list(self) -> list[ports.ObservedNode]:
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise errors.ClusterApiRejectedError(f"listing {self.directory}: {exc}") from exc
        nodes = []
        for path in entries:
            if path.name.startswith(".") or not path.name.endswith(SUFFIX):
                continue  # temporary files of a write in progress, anything else
            observed = _read_observed(path)
            if observed is not None:
                nodes.append(observed)
        return nodes


def _new_object(name: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}}


def _child(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        value = parent[key] = {}
    return value


def _dump(obj: Mapping[str, Any]) -> bytes:
    text: str = yaml.safe_dump(dict(obj), sort_keys=False, default_flow_style=False)
    return text.encode()


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise errors.ClusterApiRejectedError(f"reading {path}: {exc}") from exc


def _parse(path: Path, data: bytes) -> dict[str, Any]:
    try:
        obj = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise errors.ClusterApiRejectedError(f"{path} is not YAML: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("kind") != KIND:
        raise errors.ClusterApiRejectedError(f"{path} is not a {KIND} object")
    return obj


def _read_object(path: Path) -> dict[str, Any] | None:
    data = _read_bytes(path)
    return None if data is None else _parse(path, data)


def _read_observed(path: Path) -> ports.ObservedNode | None:
    data = _read_bytes(path)
    if data is None:
        return None
    return _observed(path.name.removesuffix(SUFFIX), _parse(path, data), data)


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a flushed temporary file renamed over it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise errors.ClusterApiRejectedError(f"writing {path}: {exc}") from exc


def _observed(name: str, obj: Mapping[str, Any], data: bytes) -> ports.ObservedNode:
    """The port's view of one stored object; fields of the wrong shape read as absent."""
    spec = _mapping(obj.get("spec"))
    ipam = _mapping(spec.get("ipam"))
    status_ipam = _mapping(_mapping(obj.get("status")).get("ipam"))
    operator = _mapping(status_ipam.get("operator-status"))
    error = operator.get("error")
    pod_cidrs = tuple(str(cidr) for cidr in ipam.get("podCIDRs") or ())
    addresses = spec.get("addresses") or ()
    owners = [
        reference.get("uid")
        for reference in _mapping(obj.get("metadata")).get("ownerReferences") or ()
        if isinstance(reference, dict) and reference.get("kind") == "Node"
    ]
    return ports.ObservedNode(
        name=name,
        pod_cidrs=pod_cidrs,
        error=error if isinstance(error, str) else None,
        pool=_owners(ipam.get("pool")),
        ipv6_pool=_owners(ipam.get("ipv6-pool")),
        addresses=tuple(
            str(entry["ip"]) for entry in addresses if isinstance(entry, dict) and entry.get("ip")
        ),
        pod_cidrs_managers=(FIELD_MANAGER,) if pod_cidrs else (),
        # Not an integer, so that nothing takes it for an etcd revision and orders by it.
        resource_version="sha256-" + hashlib.sha256(data).hexdigest()[:16],
        node_owner=str(owners[0]) if owners and owners[0] else None,
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _owners(pool: object) -> dict[str, str] | None:
    if not isinstance(pool, dict):
        return None
    return {
        str(address): str(_mapping(entry).get("owner") or "") for address, entry in pool.items()
    }
