"""The ``ipledger`` command: parses the arguments and calls one function per sub-command.

Each sub-command builds the ``Settings`` (environment, then flags) and calls one function of
``service.processes`` (``run``: ``processes.allocator.run``; ``sync``: ``processes.sync.run``;
``init``, ``append``, ``adopt``: ``processes.jobs``; ``state`` reads the projection through
``service.bootstrap``), then prints the outcome; ``simulate`` and ``schema`` need only the pure
core. So that those two run with nothing but the core's dependencies installed (msgspec and
sortedcontainers), nothing this module imports at module level needs more than the standard
library and those (``service.domain``,
``service.errors``, ``service.settings``; ``tests/unit/test_python_versions.py`` checks it); the
event loop and the service stack are imported by the commands that use them. Nothing is read
from the environment or opened at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from service import configuration, errors, logs
from service.adapters import children  # standard library only: signals and child processes
from service.domain import allocation, document, events, state
from service.settings import Settings, redacted_url

if TYPE_CHECKING:
    from anyio import CancelScope

    from service import ports

_T = TypeVar("_T")


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers; a line is read whole whatever its length."""
    for number, line in enumerate(stream, start=1):
        stripped = line.strip()
        if stripped:
            yield number, stripped


def _open(path: str) -> BinaryIO:
    """The events file (``-``: standard input), or ``CommandError`` saying why it cannot be read."""
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:  # a directory, a missing file, no permission
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None


def _run_async(main: Callable[[], Awaitable[_T]], *, uvloop: bool = False) -> _T:
    """Run ``main`` on an event loop until it returns (anyio is imported only here); on
    uvloop's when asked (the query API: a fraction of asyncio's CPU per request)."""
    import anyio

    if uvloop:
        return anyio.run(main, backend_options={"use_uvloop": True})
    return anyio.run(main)


class CommandError(Exception):
    """A command cannot run as asked; ``main`` prints the message and exits 2."""


def cmd_simulate(args: argparse.Namespace) -> int:
    """Apply a JSON-lines file of events with the pure core and print the result."""
    current = state.State()
    out = sys.stdout.buffer
    rejected = 0
    with _open(args.events) as stream:
        for number, line in _lines(stream):
            decision, event = allocation.apply_record(current, line)
            if event is None:
                rejected += 1
                print(f"line {number}: {decision.error}", file=sys.stderr)
            if args.decisions:
                out.write(events.encode_decision(decision) + b"\n")
    if not args.decisions:
        out.write(document.encode_document(document.state_document(current)) + b"\n")
    out.flush()
    if rejected:
        print(f"{rejected} malformed line(s) rejected", file=sys.stderr)
    return 0


# The ``Settings`` fields each command's flags may set (``service_options``, ``kube_options``).
_SERVICE_FLAGS = ("database_url", "log", "kafka_bootstrap", "partitions")
_API_FLAGS = ("api_address",)
_KUBE_FLAGS = (
    "kubeconfig",
    "kube_context",
    "sync_cluster",
    "sync_qps",
    "sync_burst",
    "sync_concurrency",
    "resync_interval_s",
    "create_missing",
    "delete_orphans",
    "mirror_pod_ips",
    "owner_references",
    "mirror_node_pod_cidrs",
)


def _effective(
    args: argparse.Namespace, flags: Sequence[str] = _SERVICE_FLAGS
) -> configuration.Effective:
    """The settings from the command's ``flags`` over the environment over the file."""
    return configuration.load(
        env=os.environ,
        flags={name: getattr(args, name, None) for name in flags},
        path=getattr(args, "config", None),
    )


def _settings(args: argparse.Namespace) -> Settings:
    return _effective(args).settings


def cmd_init(args: argparse.Namespace) -> int:
    """Create or upgrade the database schema and, with Kafka, the topics."""
    from service.processes import jobs

    settings = _settings(args)
    _run_async(lambda: jobs.init(settings))
    print("ipledger: database migrated" + (", topics ready" if settings.log == "kafka" else ""))
    return 0


def cmd_append(args: argparse.Namespace) -> int:
    """Validate events and append the valid ones to the log, keyed by their cluster."""
    from service.processes import jobs

    settings = _settings(args)
    valid: list[tuple[bytes | None, bytes]] = []
    invalid = 0
    with _open(args.events) as stream:
        for number, line in _lines(stream):
            event = events.decode(line)
            if isinstance(event, events.DecodeFailure):
                invalid += 1
                print(f"line {number}: {event.reason} (not appended)", file=sys.stderr)
                continue
            valid.append((event.cluster.encode(), line))
    appended = _run_async(lambda: jobs.append(settings, valid)) if valid else 0
    print(f"ipledger: appended {appended} event(s), {invalid} invalid line(s) not appended")
    return 1 if invalid else 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the allocator for every partition until SIGINT or SIGTERM."""
    from service.processes import allocator as allocator_process

    settings = _settings(args)
    if args.embedded:
        # The server is this process's child: a SIGTERM must unwind through the `finally` that
        # stops it, also while it starts, where Python's default would just end the process.
        children.terminate_as_interrupt()
    _run_async(lambda: allocator_process.run(settings, embedded=args.embedded))
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    """Print the projection as the same state document ``simulate`` prints."""
    import anyio

    from service import bootstrap

    settings = _settings(args)

    async def read() -> bytes:
        reader = bootstrap.open_reader(settings)
        try:
            if args.wait_caught_up:
                await _wait_caught_up(settings, reader, args.timeout)
            return document.encode_document(await reader.state_document())
        finally:
            await reader.close()

    sys.stdout.buffer.write(anyio.run(read) + b"\n")
    return 0


async def _wait_caught_up(
    settings: Settings, reader: ports.ProjectionReader, timeout: float
) -> None:
    """Wait until the allocator has applied everything appended so far.

    Lag from two ports: the log's end offsets, the read side's consumed offsets.
    """
    import anyio

    from service import bootstrap

    event_log = await bootstrap.open_log(settings)
    try:
        targets = {p: await event_log.end_offset(p) for p in await event_log.partitions()}
    finally:
        await event_log.close()
    deadline = time.monotonic() + timeout
    while True:
        consumed = {
            position.partition: position.next_offset for position in await reader.positions()
        }
        if all(consumed.get(p, 0) >= end for p, end in targets.items()):
            return
        if time.monotonic() > deadline:
            raise errors.IpledgerError(
                f"not caught up after {timeout:.0f}s: applied {consumed}, log ends at {targets}"
            )
        await anyio.sleep(0.1)


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of one log record."""
    print(json.dumps(events.json_schema(), indent=2, sort_keys=True))
    return 0


# --- Kubernetes sync: `ipledger sync` and `ipledger adopt` (service.sync; docs/sync.md) ---------


def _kube_settings(args: argparse.Namespace) -> Settings:
    """The settings with the Kubernetes sub-commands' flags too."""
    return _effective(args, (*_SERVICE_FLAGS, *_KUBE_FLAGS)).settings


def cmd_sync(args: argparse.Namespace) -> int:
    """Mirror the projection onto CiliumNode objects until SIGINT or SIGTERM."""
    from service.processes import sync as sync_process

    settings = _kube_settings(args)
    _run_async(lambda: sync_process.run(settings))
    return 0


def cmd_adopt(args: argparse.Namespace) -> int:
    """Append ``node.adopted`` events for the CIDRs existing CiliumNodes already have."""
    from service.processes import jobs

    settings = _kube_settings(args)
    plans = _run_async(lambda: jobs.adopt(settings, dry_run=args.dry_run))
    refused = 0
    verb = "would append" if args.dry_run else "appended"
    for plan in plans:
        print(
            f"ipledger: cluster {plan.cluster}: {verb} {len(plan.events)} node.adopted event(s); "
            f"{len(plan.already)} already adopted, {len(plan.empty)} without podCIDRs, "
            f"{len(plan.refused)} refused"
        )
        for name, reason in plan.refused:
            print(f"  refused {name}: {reason}")
        for name in plan.empty:
            print(f"  no podCIDRs (allocated when its node.added arrives): {name}")
        refused += len(plan.refused)
    if refused:
        print(f"ipledger: {refused} CiliumNode(s) not adopted, see above", file=sys.stderr)
    return 1 if refused else 0


# --- what operators ask: `ipledger status`, `check`, `config` (docs/operations.md) ------------


def cmd_config(args: argparse.Namespace) -> int:
    """Print the settings in effect, where each one came from, secrets redacted."""
    effective = _effective(args, (*_SERVICE_FLAGS, "kubeconfig", "kube_context"))
    if args.json:
        path = None if effective.path is None else str(effective.path)
        print(json.dumps({"file": path, "settings": effective.describe()}, indent=2))
    else:
        sys.stdout.write(configuration.as_toml(effective))
    return 0


def _what_next(exc: errors.IpledgerError, settings: Settings | None) -> str:
    """``exc``'s message with where to look: which database, log or cluster failed."""
    if isinstance(exc, errors.ProjectionError):
        where = (
            redacted_url(settings.database_url)
            if settings is not None and settings.database_url
            else "the embedded database"
        )
        return (
            f"cannot read the projection at {where} ({exc}): is PostgreSQL running, and the "
            "database URL (--database-url, IPLEDGER_DATABASE_URL) right?"
        )
    if isinstance(exc, errors.LogError):
        where = f" at {settings.kafka_bootstrap}" if settings and settings.kafka_bootstrap else ""
        return f"cannot read the log's end offsets{where} ({exc}): is the log reachable?"
    if isinstance(exc, errors.ClusterApiError):
        return (
            f"cannot list the CiliumNodes ({exc}): is the API server reachable with this "
            "kubeconfig and context, and may it list ciliumnodes (compose/kubernetes/rbac.yaml)?"
        )
    return str(exc)


class _CtrlC:
    """Ctrl-C (SIGINT) for ``status --watch``: cancels ``scope``, the refreshing, once; raises
    ``KeyboardInterrupt`` in a write that waits and at a second Ctrl-C.

    The handler is the watch's own, whatever SIGINT's disposition was: asyncio's Runner installs
    its handler (the first Ctrl-C cancels the main task) only over Python's default, and Python
    installs that only where SIGINT was not ignored, as it is in a background job of a shell
    without job control (CI's one red test_status_watch_reads_again_until_ctrl_c: the watch
    went on refreshing, its pipe filled). ``run``, ``up`` and the API take their signals from
    the loop (``anyio.open_signal_receiver``) for the same reason; the watch cannot: a write(2)
    blocked on a pipe whose reader stopped reading (``status --watch | less`` scrolled back)
    never returns to the loop to hear of it, so ``write`` is interrupted in the handler itself.
    The bytes go to the descriptor unbuffered: nothing is left in ``sys.stdout``'s buffer for
    the interpreter's exit to block on (a document cut short by Ctrl-C stays cut short).
    """

    def __init__(self) -> None:
        self.scope: CancelScope | None = None  # made on entering, in the event loop
        self.pressed = False
        self._writing = False
        self._wake: Callable[[Callable[[], object]], object] | None = None
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        import asyncio
        import signal

        import anyio

        self.scope = anyio.CancelScope()
        self._wake = asyncio.get_running_loop().call_soon_threadsafe
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        import signal

        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._writing or self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        assert self._wake is not None and self.scope is not None
        self._wake(self.scope.cancel)

    def write(self, text: str) -> None:
        """``text`` to standard output, nothing once Ctrl-C was pressed."""
        data = text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict")
        sys.stdout.flush()
        try:
            descriptor = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
            sys.stdout.write(text)
            return
        self._writing = True
        try:
            # Checked after ``_writing`` is set: a Ctrl-C before it has cancelled ``scope``.
            if self.pressed:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
        finally:
            self._writing = False


def cmd_status(args: argparse.Namespace) -> int:
    """Print pool use, nodes needing attention, log lag, writers and rejections."""
    from rich.console import Console

    from service.processes import status

    settings = _settings(args)
    console = Console(highlight=False)
    if args.limit < 0 or args.rejections < 0:
        raise CommandError("--limit and --rejections must be 0 or more")
    options = {"cluster": args.cluster, "limit": args.limit, "rejections": args.rejections}

    def show(report: status.Status) -> None:
        if args.json:
            text = json.dumps(status.as_json(report)) + "\n"
        else:
            with console.capture() as captured:
                if args.watch is not None:
                    if console.is_terminal:
                        console.clear()
                    else:
                        console.print(f"--- {report.read_at:%Y-%m-%d %H:%M:%S} UTC", markup=False)
                status.render(report, console)
            text = captured.get()
        if args.watch is None:
            sys.stdout.write(text)
        else:
            ctrl_c.write(text)

    if args.watch is not None and args.watch <= 0:
        raise CommandError("--watch takes a number of seconds greater than 0")
    try:
        if args.watch is None:
            show(_run_async(lambda: status.read(settings, **options)))
            return 0
        ctrl_c = _CtrlC()

        async def watch() -> None:
            with ctrl_c as pressing:
                await status.watch(
                    settings, every_s=args.watch, show=show, until=pressing.scope, **options
                )

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
            _run_async(watch)
    except (errors.ProjectionError, errors.LogError) as exc:
        raise errors.IpledgerError(_what_next(exc, settings)) from None
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Compare the projection with the CiliumNodes; exit 1 when anything differs."""
    from service.processes import check

    if not args.kubernetes:
        raise CommandError("say what to check against: --kubernetes")
    # The Kubernetes client logs every request at INFO: noise in a report.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    settings: Settings | None = None
    try:
        settings = _kube_settings(args)
        report = _run_async(
            lambda: check.kubernetes(settings, cluster=args.cluster, leaks=args.leaks)
        )
    except errors.IpledgerError as exc:
        # Exit 2, not 1: "could not check" must not read as "found problems".
        raise CommandError(f"could not check: {_what_next(exc, settings)}") from None
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 1 if report.problems else 0


def add_status_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    service_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``status``, ``check`` and ``config`` (called by ``build_parser``)."""
    show = commands.add_parser(
        "status",
        help="pool use per element, nodes waiting or failing, log lag, writers, rejections",
        description="Read the projection (and the log's end offsets) and print, per cluster and "
        "pool element, the node CIDRs used and free and the pod addresses used; the nodes "
        "waiting for a CIDR, in error or in conflict; per log partition the lag, the writer "
        "and its lease, and the last rejected records. Changes nothing.",
    )
    service_options(show)
    show.add_argument("--cluster", help="only this cluster (and its partition)")
    show.add_argument(
        "--json",
        action="store_true",
        help="one JSON document (with --watch, one per line); shape in docs/operations.md",
    )
    show.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="read again every SECONDS (default 2) until Ctrl-C",
    )
    show.add_argument(
        "--limit", type=int, default=10, help="nodes named per list (default 10; all counted)"
    )
    show.add_argument(
        "--rejections", type=int, default=5, help="last rejected records per partition (5)"
    )
    show.set_defaults(func=cmd_status)

    check = commands.add_parser(
        "check",
        help="report where Kubernetes disagrees with ipledger (like calicoctl ipam check)",
        description="Compare the projection with another system and list every difference, "
        "then 'found N problems'. Exit status: 0 none, 1 problems found, 2 could not check. "
        "--kubernetes: CiliumNodes whose spec.ipam.podCIDRs or "
        "status.ipam.operator-status.error differ from ipledger's, nodes without a CiliumNode, "
        "CiliumNodes ipledger does not know; in every cluster `ipledger sync` mirrors.",
    )
    service_options(check)
    check.add_argument(
        "--kubernetes",
        action="store_true",
        help="compare with the CiliumNodes of the clusters ipledger mirrors",
    )
    check.add_argument(
        "--leaks",
        action="store_true",
        help="with --kubernetes, also report addresses whose owner pod no longer exists and "
        "print the ip.released events that would give them back; releases nothing (lists "
        "pods: the ClusterRole ipledger-leak-check)",
    )
    check.add_argument("--kubeconfig", type=Path, help="env IPLEDGER_KUBECONFIG")
    check.add_argument("--context", dest="kube_context", help="env IPLEDGER_KUBE_CONTEXT")
    check.add_argument(
        "--cluster",
        help="only this ipledger cluster (one of IPLEDGER_KUBECONFIGS, else the one cluster "
        "mirrored; env IPLEDGER_SYNC_CLUSTER, default 'default')",
    )
    check.add_argument(
        "--json", action="store_true", help="one JSON document; shape in docs/operations.md"
    )
    check.set_defaults(func=cmd_check)

    config = commands.add_parser(
        "config",
        help="print the settings in effect and where each came from (secrets redacted)",
        description="Print every setting as a TOML file, each with its source: a flag, the "
        "environment (IPLEDGER_*), the configuration file (--config / IPLEDGER_CONFIG) or the "
        "default, in that order of precedence. Passwords in URLs and keys are redacted.",
    )
    service_options(config)
    config.add_argument("--kubeconfig", type=Path, help="env IPLEDGER_KUBECONFIG")
    config.add_argument("--context", dest="kube_context", help="env IPLEDGER_KUBE_CONTEXT")
    config.add_argument(
        "--json", action="store_true", help="one JSON document: {file, settings: [...]}"
    )
    config.set_defaults(func=cmd_config)


def add_sync_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    service_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``sync`` and ``adopt`` (called by ``build_parser``)."""

    def kube_options(sub: argparse.ArgumentParser) -> None:
        service_options(sub)
        sub.add_argument("--kubeconfig", type=Path, help="env IPLEDGER_KUBECONFIG")
        sub.add_argument("--context", dest="kube_context", help="env IPLEDGER_KUBE_CONTEXT")
        sub.add_argument(
            "--cluster",
            dest="sync_cluster",
            help="the ipledger cluster when no IPLEDGER_KUBECONFIGS mapping is set "
            "(env IPLEDGER_SYNC_CLUSTER, default 'default')",
        )

    mirror = commands.add_parser(
        "sync", help="mirror the allocations onto CiliumNode objects (one instance at a time)"
    )
    kube_options(mirror)
    mirror.add_argument("--qps", dest="sync_qps", type=float, help="env IPLEDGER_SYNC_QPS (20)")
    mirror.add_argument("--burst", dest="sync_burst", type=int, help="env IPLEDGER_SYNC_BURST (40)")
    mirror.add_argument(
        "--concurrency", dest="sync_concurrency", type=int, help="env IPLEDGER_SYNC_CONCURRENCY (8)"
    )
    mirror.add_argument(
        "--resync-interval", dest="resync_interval_s", type=float, help="seconds (300)"
    )
    mirror.add_argument(
        "--create-missing",
        action=argparse.BooleanOptionalAction,
        help="create CiliumNodes that do not exist (default: yes)",
    )
    mirror.add_argument(
        "--delete-orphans",
        action=argparse.BooleanOptionalAction,
        help="delete the CiliumNode of a deleted node (default: leave it to Kubernetes GC)",
    )
    mirror.add_argument(
        "--mirror-pod-ips",
        action=argparse.BooleanOptionalAction,
        help="also write spec.ipam.pool / ipv6-pool with the pod addresses and owners",
    )
    mirror.add_argument(
        "--owner-references",
        action=argparse.BooleanOptionalAction,
        help="give the CiliumNodes it creates an ownerReference to their v1 Node, so that "
        "garbage collection deletes them with it (reads Nodes: an optional ClusterRole; env "
        "IPLEDGER_SYNC_OWNER_REFERENCES, default: no)",
    )
    mirror.set_defaults(func=cmd_sync)

    adopt = commands.add_parser(
        "adopt", help="append node.adopted events for the podCIDRs existing CiliumNodes have"
    )
    kube_options(adopt)
    adopt.add_argument(
        "--from-kubernetes",
        action="store_true",
        required=True,
        help="read spec.ipam.podCIDRs of every CiliumNode (the only source so far)",
    )
    adopt.add_argument(
        "--dry-run", action="store_true", help="report what would be appended; append nothing"
    )
    adopt.set_defaults(func=cmd_adopt)


# --- the whole product on the embedded default: `ipledger up` (make run; service.processes.up) -


def cmd_up(args: argparse.Namespace) -> int:
    """Run the embedded PostgreSQL, the allocator, the sync worker and the API as one tree."""
    from service.processes import up

    settings = _kube_settings(args)
    # The server is this process's child, as for `run --embedded`: SIGTERM must unwind.
    children.terminate_as_interrupt()
    config = getattr(args, "config", None)
    _run_async(
        lambda: up.run(
            settings,
            with_api=args.api,
            with_sync=args.sync,
            config=Path(config).absolute() if config else None,
        )
    )
    return 0


def add_up_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    service_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``up`` (called by ``build_parser``)."""
    whole = commands.add_parser(
        "up",
        help="the whole product on an embedded PostgreSQL: allocator, sync worker, query API "
        "(what `make run` does)",
        description="Start the embedded PostgreSQL under the data dir, migrate it, configure "
        "Cilium's Helm default pool on an empty log, and run `ipledger run`, `ipledger sync` "
        "and `ipledger api` as supervised children until Ctrl-C. Without --kubeconfig (or "
        "IPLEDGER_KUBECONFIG) the CiliumNodes are written as YAML files into "
        "<data dir>/ciliumnodes/.",
    )
    service_options(whole)
    whole.add_argument("--kubeconfig", type=Path, help="mirror into this cluster, not files")
    whole.add_argument("--context", dest="kube_context", help="env IPLEDGER_KUBE_CONTEXT")
    whole.add_argument(
        "--api", action=argparse.BooleanOptionalAction, default=True, help="run the query API"
    )
    whole.add_argument(
        "--sync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the sync worker",
    )
    whole.set_defaults(func=cmd_up)


# --- v1 Nodes: `ipledger watch-nodes` (service.producers; docs/operations.md) ---------------


def cmd_watch_nodes(args: argparse.Namespace) -> int:
    """Append node.added / node.deleted for the v1 Nodes of each cluster until stopped."""
    from service.processes import watch_nodes

    settings = _kube_settings(args)
    _run_async(
        lambda: watch_nodes.run(
            settings,
            allow_deleting_all=args.allow_deleting_all,
            metrics_port=args.metrics_port,
        )
    )
    return 0


def add_node_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    service_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``watch-nodes`` (called by ``build_parser``)."""
    watch = commands.add_parser(
        "watch-nodes",
        help="append node.added / node.deleted for the cluster's v1 Nodes (a producer)",
        description="Watch the v1 Nodes of each mapped cluster and append node.added (with "
        "their InternalIP and ExternalIP addresses) and node.deleted to the log; every start "
        "first reconciles the Nodes with what the log says, so a restart appends nothing twice.",
    )
    service_options(watch)
    watch.add_argument("--kubeconfig", type=Path, help="env IPLEDGER_KUBECONFIG")
    watch.add_argument("--context", dest="kube_context", help="env IPLEDGER_KUBE_CONTEXT")
    watch.add_argument(
        "--cluster",
        dest="sync_cluster",
        help="the ipledger cluster when no IPLEDGER_KUBECONFIGS mapping is set "
        "(env IPLEDGER_SYNC_CLUSTER, default 'default')",
    )
    watch.add_argument(
        "--mirror-node-podcidrs",
        dest="mirror_node_pod_cidrs",
        action=argparse.BooleanOptionalAction,
        help="also write each node's CIDRs to its Node's spec.podCIDRs, for Cilium's "
        "ipam.mode=kubernetes (patches Nodes; env IPLEDGER_MIRROR_NODE_PODCIDRS)",
    )
    watch.add_argument(
        "--allow-deleting-all",
        action="store_true",
        help="append node.deleted for every node even when the API server lists no Node",
    )
    watch.add_argument("--metrics-port", type=int, help="serve the counters on 127.0.0.1:PORT")
    watch.set_defaults(func=cmd_watch_nodes)


# --- Audits: `ipledger replay` and `ipledger audit` (service.audit; docs/audits.md) -----------


def _parse_until(text: str) -> tuple[int | None, datetime.datetime | None]:
    """``--until``: a record count (an offset: the state before it) or an RFC 3339 time."""
    if text.isdigit():
        return int(text), None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--until {text!r} is neither an offset nor an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise CommandError(f"--until {text!r}: an RFC 3339 time needs its offset (Z, +02:00)")
    return None, moment


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the log with the allocator's core and batch code; verify, rebuild, or stop early.

    Exit 0: everything matches (or the state was written); 1: a difference, the first one
    printed; 2: the log or a database could not be read.
    """
    from service.audit import replay as replaying
    from service.processes import replay

    settings = _settings(args)
    if not (args.verify or args.until or args.into):
        raise CommandError("replay needs --verify, --until (with --output) or --into")
    if args.until and not args.output:
        raise CommandError("--until needs --output FILE (- for standard output)")
    until = None
    if args.until:
        records, moment = _parse_until(args.until)
        until = replaying.Until(records=records, time=moment)
    children.terminate_as_interrupt()
    job = replay.Job(into=args.into, until=until, public_key=args.public_key)
    try:
        outcome = replay.run(settings, job, show_progress=not args.quiet)
    except errors.ConfigurationError as exc:
        print(f"ipledger: {exc}", file=sys.stderr)
        return 2
    except (errors.LogError, errors.ProjectionError) as exc:
        print(f"ipledger: cannot read: {exc}", file=sys.stderr)
        return 2
    if outcome is None:
        print("ipledger: replay interrupted", file=sys.stderr)
        return 130
    if outcome.unreadable is not None:
        print(f"ipledger: cannot read: {outcome.unreadable}", file=sys.stderr)
        return 2
    if until is not None:
        merged: dict[str, object] = {}
        for report in outcome.reports:
            assert report.document is not None
            merged.update(report.document["clusters"])
        text = document.encode_document({"clusters": dict(sorted(merged.items()))}) + b"\n"
        if args.output == "-":
            sys.stdout.buffer.write(text)
        else:
            Path(args.output).write_bytes(text)
        stops = ", ".join(f"{r.partition}: {r.stopped_at}" for r in outcome.reports)
        print(f"ipledger: state after {stops} record(s) (partition: records)", file=sys.stderr)
        return 0
    diverged = [r.divergence for r in outcome.reports if r.divergence is not None]
    for divergence in diverged:
        print(f"ipledger: DIFFERENCE at {divergence.describe()}", file=sys.stderr)
    records = sum(r.records for r in outcome.reports)
    heads = sum(r.heads_checked for r in outcome.reports)
    digests = sum(r.digests_checked for r in outcome.reports)
    verb = "rebuilt into the target and verified" if args.into else "verified"
    if diverged:
        print(f"ipledger: {len(diverged)} partition(s) differ from the log", file=sys.stderr)
        return 1
    print(
        f"ipledger: {verb}: {records} record(s) over {len(outcome.reports)} partition(s), "
        f"{heads} tree head(s) checked ({digests} with a state digest), "
        f"{outcome.seconds:.1f}s ({records / max(outcome.seconds, 1e-9):,.0f} records/s)"
    )
    return 0


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _read_json(path: str) -> object:
    try:
        with _open(path) as stream:
            return json.loads(stream.read())
    except ValueError as exc:
        raise CommandError(f"{path} is not JSON: {exc}") from None


def _head_argument(text: str) -> object:
    """``P:SIZE`` (a stored head) or a file holding a head (or a proof document with one)."""
    from service.domain import merkle

    partition, sep, size = text.partition(":")
    if sep and partition.isdigit() and size.isdigit():
        return int(partition), int(size)
    raw = _read_json(text)
    if isinstance(raw, dict) and "head" in raw:
        raw = raw["head"]
    try:
        return merkle.decode_head(raw)
    except merkle.ProofError as exc:
        raise CommandError(f"{text}: {exc}") from None


def cmd_audit_proof(args: argparse.Namespace) -> int:
    """Print the inclusion proof of one decision (JSON, checked by ``audit verify-proof``)."""
    from service.processes import audit

    settings = _settings(args)
    found = _run_async(lambda: audit.proof(settings, args.partition, args.offset, args.size))
    _print_json(found)
    return 0


def cmd_audit_verify_proof(args: argparse.Namespace) -> int:
    """Check a proof document offline: no database, no log. Exit 0 if it holds, 1 if not."""
    from service.audit import proofs, signing
    from service.domain import merkle

    key = signing.load_public_key(args.public_key) if args.public_key else None
    kept = None
    if args.head:
        raw = _read_json(args.head)
        if isinstance(raw, dict) and "head" in raw:
            raw = raw["head"]
        try:
            kept = merkle.decode_head(raw)
        except merkle.ProofError as exc:
            raise CommandError(f"{args.head}: {exc}") from None
    try:
        print(proofs.check_document(_read_json(args.file), public_key=key, kept_head=kept))
    except errors.AuditError as exc:
        print(f"ipledger: the proof does NOT hold: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_audit_consistency(args: argparse.Namespace) -> int:
    """Print the consistency proof of two heads, after checking it against the stored tree."""
    from service.processes import audit

    settings = _settings(args)
    old, new = _head_argument(args.head_a), _head_argument(args.head_b)
    try:
        found = _run_async(lambda: audit.consistency(settings, old, new))  # type: ignore[arg-type]
    except errors.AuditError as exc:
        print(f"ipledger: NOT consistent: {exc}", file=sys.stderr)
        return 1
    _print_json(found)
    return 0


def cmd_audit_story(args: argparse.Namespace) -> int:
    """The history of an address, an owner or a node, each change with its event and decision."""
    from service.processes import audit

    settings = _settings(args)
    at = None
    if args.at:
        _, at = _parse_until(args.at)
        if at is None:
            raise CommandError("--at takes an RFC 3339 time")
    story = _run_async(
        lambda: audit.story(
            settings, args.kind, args.subject, cluster=args.cluster, at=at, prove=args.prove
        )
    )
    if args.json:
        _print_json(story)
        return 0
    changes = story["changes"]
    print(f"{args.kind} {args.subject} (cluster {args.cluster}): {len(changes)} change(s)")
    for change in changes:
        who = " ".join(
            f"{k}={','.join(v) if isinstance(v, list) else v}"
            for k in ("address", "node", "owner", "podCIDRs")
            if (v := change.get(k)) is not None and v != []
        )
        error = (change.get("decision") or {}).get("error")
        print(
            f"  {change['time']}  {change['change']:<14} {who}  "
            f"[partition {change['partition']}, offset {change['offset']}, "
            f"event {change.get('event')!r}]"
            + (f"  error: {error}" if error else "")
            + ("  (proof attached: --json)" if "proof" in change else "")
        )
    return 0


def add_audit_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    service_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``replay`` and ``audit`` (called by ``build_parser``)."""
    again = commands.add_parser(
        "replay", help="replay the log: verify the projection, rebuild it, or a past state"
    )
    service_options(again)
    again.add_argument(
        "--verify", action="store_true", help="compare everything committed with the replay"
    )
    again.add_argument(
        "--until", help="stop at an offset (the state before it) or an RFC 3339 log time"
    )
    again.add_argument("--output", help="with --until: write the state document here (- stdout)")
    again.add_argument(
        "--into", metavar="DATABASE_URL", help="rebuild a projection in that database, then verify"
    )
    again.add_argument(
        "--public-key", type=Path, help="check the tree heads' signatures with this key (PEM)"
    )
    again.add_argument("--quiet", action="store_true", help="no progress display")
    again.set_defaults(func=cmd_replay)

    audit = commands.add_parser("audit", help="proofs and histories from the evidence")
    verbs = audit.add_subparsers(dest="audit_command", required=True)
    proof = verbs.add_parser("proof", help="the inclusion proof of one decision (JSON)")
    service_options(proof)
    proof.add_argument("--partition", type=int, default=0)
    proof.add_argument("--offset", type=int, required=True)
    proof.add_argument("--size", type=int, help="against the head of this size (default: latest)")
    proof.set_defaults(func=cmd_audit_proof)

    check = verbs.add_parser("verify-proof", help="check a proof document offline")
    check.add_argument("file", help="the proof document (JSON), or - for standard input")
    check.add_argument("--public-key", type=Path, help="the head must be signed by this key")
    check.add_argument("--head", help="a head you kept (JSON): the proof must be against it")
    check.set_defaults(func=cmd_audit_verify_proof)

    consistent = verbs.add_parser(
        "consistency", help="prove that head B's tree extends head A's (nothing rewritten)"
    )
    service_options(consistent)
    consistent.add_argument("head_a", help="a head file (JSON) or PARTITION:SIZE of a stored one")
    consistent.add_argument("head_b", help="likewise, the later head")
    consistent.set_defaults(func=cmd_audit_consistency)

    for kind, what in (
        ("ip", "an address"),
        ("owner", "an owner (namespace/pod)"),
        ("node", "a node"),
    ):
        story = verbs.add_parser(kind, help=f"the history of {what}, each change with its event")
        service_options(story)
        story.add_argument("subject", help=what)
        story.add_argument("--cluster", default="default")
        story.add_argument("--at", help="RFC 3339 time: the state of things then")
        story.add_argument(
            "--prove", action="store_true", help="attach each decision's inclusion proof"
        )
        story.add_argument("--json", action="store_true", help="JSON for scripts")
        story.set_defaults(func=cmd_audit_story, kind=kind)


# --- the query API: `ipledger api` (service.api; docs/api.md) ------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the read-only query API until SIGINT or SIGTERM."""
    from service.processes import api as api_process

    settings = _effective(args, (*_SERVICE_FLAGS, *_API_FLAGS)).settings
    _run_async(lambda: api_process.run(settings), uvloop=True)
    return 0


def add_api_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    service_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``api`` (called by ``build_parser``)."""
    serve = commands.add_parser(
        "api",
        help="serve the read-only HTTP query API (docs/api.md)",
        description="Serve the read-only HTTP JSON query API over the projection: clusters, "
        "pools, nodes, addresses, owners, decisions and rejections, as of any log offset. It "
        "connects as the read-only role `ipledger init` creates (IPLEDGER_API_DATABASE_URL) "
        "and refuses a role that can write.",
    )
    service_options(serve)
    serve.add_argument(
        "--address",
        dest="api_address",
        metavar="HOST:PORT",
        help="where to listen (env IPLEDGER_API_ADDRESS, default 127.0.0.1:8080)",
    )
    serve.set_defaults(func=cmd_api)


_SETTINGS_EPILOG = (
    "Settings: a flag beats its IPLEDGER_* variable, which beats the --config file, which beats "
    "the default; `ipledger config` prints what is in effect (docs/configuration.md)."
)


def _describe(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Give each sub-command without a description its one-line help as one, and those that
    read settings the precedence as an epilog, so that every ``--help`` says what it does."""
    helps = {action.dest: action.help for action in commands._choices_actions}
    for name, sub in commands.choices.items():
        if sub.description is None and helps.get(name):
            text = str(helps[name])
            sub.description = text[0].upper() + text[1:] + "."
        if sub.epilog is None and any("--config" in a.option_strings for a in sub._actions):
            sub.epilog = _SETTINGS_EPILOG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipledger",
        description="Event-sourced IPAM for Kubernetes (Cilium cluster-pool allocation).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser(
        "simulate", help="apply a JSON-lines event file in memory and print the final state"
    )
    simulate.add_argument("events", help="JSON-lines file of events, or - for standard input")
    simulate.add_argument(
        "--decisions", action="store_true", help="print one decision per line instead"
    )
    simulate.set_defaults(func=cmd_simulate)

    schema = commands.add_parser("schema", help="print the JSON Schema of the event contract")
    schema.set_defaults(func=cmd_schema)

    def service_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="TOML configuration file (env IPLEDGER_CONFIG); flags override the "
            "environment, which overrides the file (docs/configuration.md)",
        )
        sub.add_argument(
            "--database-url",
            metavar="URL",
            help="postgresql://user:password@host:port/db (env IPLEDGER_DATABASE_URL; default: "
            "the embedded server of `make run`)",
        )
        sub.add_argument(
            "--log",
            choices=["table", "kafka"],
            help="the event log: a PostgreSQL table or Kafka (env IPLEDGER_LOG; default table)",
        )
        sub.add_argument(
            "--kafka-bootstrap",
            metavar="HOST:PORT[,...]",
            help="Kafka brokers (env IPLEDGER_KAFKA_BOOTSTRAP)",
        )
        sub.add_argument(
            "--partitions",
            type=int,
            metavar="N",
            help="partitions of the log, fixed once it is in use (env IPLEDGER_PARTITIONS; 1)",
        )

    init = commands.add_parser("init", help="migrate the database; create Kafka topics")
    service_options(init)
    init.set_defaults(func=cmd_init)

    append = commands.add_parser("append", help="validate events and append them to the log")
    append.add_argument("events", help="JSON-lines file of events, or - for standard input")
    service_options(append)
    append.set_defaults(func=cmd_append)

    run = commands.add_parser("run", help="run the allocator (writer or hot standby)")
    run.add_argument(
        "--embedded",
        action="store_true",
        help="start the embedded PostgreSQL under the data dir (what `make run` does)",
    )
    service_options(run)
    run.set_defaults(func=cmd_run)

    show = commands.add_parser("state", help="print the state document from the projection")
    show.add_argument(
        "--wait-caught-up",
        action="store_true",
        help="first wait until everything appended so far has been applied",
    )
    show.add_argument("--timeout", type=float, default=60.0, help="seconds to wait at most")
    service_options(show)
    show.set_defaults(func=cmd_state)
    add_sync_commands(commands, service_options)
    add_audit_commands(commands, service_options)
    add_node_commands(commands, service_options)
    add_up_commands(commands, service_options)
    add_status_commands(commands, service_options)
    add_api_commands(commands, service_options)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=None,
        help=f"human (the default) or json: one JSON object per line (${logs.FORMAT_VARIABLE})",
    )
    _describe(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        log_format = args.log_format or logs.parse_format(
            os.environ.get(logs.FORMAT_VARIABLE) or "human", logs.FORMAT_VARIABLE
        )
    except ValueError as exc:
        print(f"ipledger: {exc}", file=sys.stderr)
        return 2
    logs.configure(str(args.log_level), log_format)
    # aiokafka logs every failed reconnect at ERROR; the allocator reports failures itself.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # alembic announces each of its plugins at INFO when it is imported, which the commands do
    # only after this point (so that simulate and schema need none of it).
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # A part of `ipledger up` stops (SIGTERM) when up dies, even by SIGKILL.
    if not children.end_with_supervisor(os.environ):
        print("ipledger: the `ipledger up` that started this process is gone", file=sys.stderr)
        return children.Terminated.exit_code
    try:
        code: int = args.func(args)
    except (CommandError, FileNotFoundError) as exc:
        print(f"ipledger: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except errors.IpledgerError as exc:
        print(f"ipledger: {logs.redact(str(exc))}", file=sys.stderr)
        return 1
    except children.Terminated:
        return children.Terminated.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
