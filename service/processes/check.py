"""``ipledger check``: a consistency report, in the manner of ``calicoctl ipam check``.

Called by ``service.cli``. Each check compares what ipledger committed with what another
system holds and returns ``Problem``s; the report ends with ``found N problems`` and the command
exits 1 when N > 0. The one check so far is ``--kubernetes``: for every cluster ipledger
mirrors (``service.bootstrap.open_cluster_clients``, the same clusters ``ipledger sync``
writes), the live nodes of the projection (``ports.ProjectionReader.nodes``) against the
CiliumNodes (``ports.ClusterClient.list_nodes``):

- ``pod_cidrs``: the CiliumNode's ``spec.ipam.podCIDRs`` are not the node's (IPv4 first, the
  text ipledger writes; the comparison ``ipledger sync`` makes);
- ``error``: its ``status.ipam.operator-status.error`` is not the node's error (none = "");
- ``missing``: a node with no CiliumNode;
- ``unknown``: a CiliumNode of no live node (never known, or deleted: then left to Kubernetes'
  garbage collection unless the sync worker deletes orphans).

Each problem says whether the sync worker has mirrored the node's current version
(``ports.ProjectionReader.sync_progress``): not yet means the difference may just be in flight,
mirrored means someone else changed the CiliumNode since. ``compare`` is pure; more checks
are further functions returning ``Problem`` lists for the same report.

With ``leaks`` (``--leaks``), also the leak check (``service.producers.find_leaks``): every
address held by an owner ``namespace/pod`` whose pod the API server does not list is a ``leaked``
problem, and the report carries the ``ip.released`` event an operator may append for each
(``releases``). Reads only; writes nothing anywhere, releases nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from service import bootstrap, errors, ports, producers
from service.domain import events
from service.settings import Settings

VERSION = 1
POD_CIDRS = "pod_cidrs"
ERROR = "error"
MISSING = "missing"
UNKNOWN = "unknown"
LEAKED = "leaked"
LEAKS = "leaks"


@dataclass(frozen=True, slots=True)
class Problem:
    """One difference found by a check: which check, where, what, and both sides.

    ``ipledger`` and ``other`` are JSON-ready values of the field that differs (None when that
    side has no such object); ``note`` says what is likely behind it.
    """

    check: str
    cluster: str
    name: str
    kind: str
    message: str
    ipledger: Any = None
    other: Any = None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "cluster": self.cluster,
            "name": self.name,
            "kind": self.kind,
            "message": self.message,
            "ipledger": self.ipledger,
            "other": self.other,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Checked:
    """One cluster a check looked at, and how many objects on each side."""

    check: str
    cluster: str
    ipledger: int
    other: int


@dataclass(slots=True)
class Report:
    """Everything the checks looked at and found, in the order they ran."""

    checked: list[Checked] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # The ip.released an operator may append, one per leaked address (the leak check).
    releases: list[events.IpReleased] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` document (docs/operations.md, "ipledger check"): stable, additive."""
        document = {
            "version": VERSION,
            "checked": [dataclasses.asdict(c) for c in self.checked],
            "problems": [p.as_json() for p in self.problems],
            "found": len(self.problems),
        }
        if self.releases:
            document["releases"] = [msgspec.to_builtins(e) for e in self.releases]
        return document

    def lines(self) -> list[str]:
        """The report for people: what was checked, one line per problem, ``found N problems``."""
        out = []
        for checked in self.checked:
            if checked.check == LEAKS:
                counted = f"{checked.ipledger} address(es) held, {checked.other} pod(s)"
            else:
                counted = f"{checked.ipledger} node(s) in ipledger, {checked.other} CiliumNode(s)"
            out.append(f"{checked.check}: cluster {checked.cluster}: {counted}")
            for problem in self.problems:
                if (problem.check, problem.cluster) == (checked.check, checked.cluster):
                    note = f" ({problem.note})" if problem.note else ""
                    out.append(f"  {problem.name}: {problem.message}{note}")
        if self.releases:
            out.append(
                "ip.released events that give the leaked addresses back; nothing was released: "
                "append them (ipledger append -) once the pods are known to be gone for good"
            )
            out.extend(events.encode_event(e).decode() for e in self.releases)
        found = len(self.problems)
        out.append(f"found {found} problem{'' if found == 1 else 's'}")
        return out


def compare(
    cluster: str,
    nodes: Sequence[ports.NodeView],
    observed: Sequence[ports.ObservedNode],
    progress: Mapping[str, ports.NodeSync],
) -> list[Problem]:
    """The differences between ``cluster``'s live nodes and its CiliumNodes, by node name.

    ``progress`` is the sync worker's record per node (tombstones too), for the notes.
    """
    live = {node.name: node for node in nodes}
    listed = {item.name: item for item in observed}
    problems = []
    for name in sorted(live.keys() | listed.keys()):
        node, item = live.get(name), listed.get(name)
        synced = progress.get(name)
        if item is None:
            assert node is not None
            problems.append(
                Problem(
                    "kubernetes",
                    cluster,
                    name,
                    MISSING,
                    "no CiliumNode",
                    ipledger=[str(c) for c in node.pod_cidrs],
                    note=_mirrored(node, synced, missing=True),
                )
            )
            continue
        if node is None:
            note = "never in ipledger: `ipledger adopt --from-kubernetes` takes its podCIDRs over"
            if synced is not None and synced.deleted:
                note = (
                    f"deleted in ipledger at offset {synced.version}; left to Kubernetes' garbage "
                    "collection unless `ipledger sync --delete-orphans`"
                )
            problems.append(
                Problem(
                    "kubernetes",
                    cluster,
                    name,
                    UNKNOWN,
                    "a CiliumNode ipledger does not know",
                    other=list(item.pod_cidrs),
                    note=note,
                )
            )
            continue
        wanted = tuple(str(c) for c in node.pod_cidrs)
        if item.pod_cidrs != wanted:
            problems.append(
                Problem(
                    "kubernetes",
                    cluster,
                    name,
                    POD_CIDRS,
                    f"spec.ipam.podCIDRs are {_list(item.pod_cidrs)}, ipledger has {_list(wanted)}",
                    ipledger=list(wanted),
                    other=list(item.pod_cidrs),
                    note=_mirrored(node, synced),
                )
            )
        if (item.error or "") != (node.error or ""):
            problems.append(
                Problem(
                    "kubernetes",
                    cluster,
                    name,
                    ERROR,
                    f"status.ipam.operator-status.error is {_text(item.error)}, ipledger has "
                    f"{_text(node.error)}",
                    ipledger=node.error,
                    other=item.error or None,
                    note=_mirrored(node, synced),
                )
            )
    return problems


def _mirrored(node: ports.NodeView, synced: ports.NodeSync | None, *, missing: bool = False) -> str:
    if synced is None or synced.synced_version is None:
        return "the sync worker has not mirrored this node yet: is `ipledger sync` running?"
    if synced.synced_version < node.version:
        return (
            f"the sync worker has mirrored version {synced.synced_version}, not yet "
            f"{node.version}: it may be in flight"
        )
    if synced.error:
        return f"the sync worker's last write failed: {synced.error}"
    if missing:
        return "mirrored, then deleted by someone else; `ipledger sync` recreates it"
    return "mirrored, then changed by someone else; the sync worker's resync repairs it"


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _text(value: str | None) -> str:
    return repr(value) if value else "empty"


def leak_problems(found: producers.LeakReport) -> list[Problem]:
    """The leak check's outcome as problems of the report (one per leaked address)."""
    return [
        Problem(
            LEAKS,
            found.cluster,
            leak.address,
            LEAKED,
            f"held by {leak.owner} on node {leak.node}, and no such pod exists",
            ipledger=leak.owner,
            note="its ip.released is below",
        )
        for leak in found.leaks
    ]


async def kubernetes(
    settings: Settings, *, cluster: str | None = None, leaks: bool = False
) -> Report:
    """Check every mirrored cluster (or ``cluster`` alone) against its CiliumNodes, and with
    ``leaks`` its held addresses against its pods."""
    settings = _only(settings, cluster)
    report = Report()
    reader = bootstrap.open_reader(settings)
    clients = bootstrap.open_cluster_clients(settings)
    try:
        for name, client in clients.items():
            nodes = await reader.nodes(name)
            observed = await client.list_nodes()
            progress = {p.name: p for p in await reader.sync_progress(name)}
            report.checked.append(Checked("kubernetes", name, len(nodes), len(observed)))
            report.problems.extend(compare(name, nodes, observed, progress))
            if leaks:
                found = await _find_leaks(name, reader, client)
                report.checked.append(Checked(LEAKS, name, found.held, found.pods))
                report.problems.extend(leak_problems(found))
                report.releases.extend(leak.release() for leak in found.leaks)
    finally:
        for client in clients.values():
            await client.close()
        await reader.close()
    return report


async def _find_leaks(
    cluster: str, reader: ports.ProjectionReader, client: ports.ClusterClient
) -> producers.LeakReport:
    try:
        return await producers.find_leaks(cluster, reader, client)
    except errors.ClusterApiRejectedError as exc:
        raise errors.ClusterApiRejectedError(
            f"{exc} (--leaks lists pods: the ClusterRole ipledger-leak-check of "
            "compose/kubernetes/rbac-optional.yaml)",
            status=exc.status,
        ) from exc


def _only(settings: Settings, cluster: str | None) -> Settings:
    """The settings narrowed to ``cluster``: one of the mapped clusters, else the one mirrored."""
    if cluster is None:
        return settings
    if settings.kube_clusters:
        if cluster not in settings.kube_clusters:
            raise errors.ConfigurationError(
                f"cluster {cluster!r} is not among the mapped clusters "
                f"({', '.join(sorted(settings.kube_clusters))}): see IPLEDGER_KUBECONFIGS"
            )
        return dataclasses.replace(
            settings, kube_clusters={cluster: settings.kube_clusters[cluster]}
        )
    return dataclasses.replace(settings, sync_cluster=cluster)
