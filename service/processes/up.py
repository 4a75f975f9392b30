"""``ipledger up`` (``make run``): the whole product on the embedded default, one supervised tree.

Called by ``service.cli`` (``cmd_up``). This process starts the embedded PostgreSQL (data under
``settings.data_dir``; as root, where ``embedded.place_cluster`` puts it), migrates it, configures
Cilium's Helm default pool on an empty table log, and then runs each part of the product as a
child process of its own, exactly the command a deployment runs: ``ipledger run`` (the
allocator), ``ipledger sync`` (the CiliumNode mirror) and ``ipledger api`` (the query API on
``IPLEDGER_API_ADDRESS``, 127.0.0.1:8080), all pointed at the embedded server by
``IPLEDGER_DATABASE_URL``. Separate processes rather than tasks of one: each part is stopped,
restarted and killed the way it is in production, and a part that crashes does not take the
others with it.

Without a kubeconfig given to ipledger itself (``IPLEDGER_KUBECONFIG``, ``--kubeconfig``,
``IPLEDGER_KUBECONFIGS``), the sync worker writes the CiliumNodes it would apply as files into
``<data dir>/ciliumnodes/``: ``make run`` never writes to whatever cluster a kubectl context
happens to name.

Supervision: the children's output comes out here, each line prefixed with the part's name. A
child that exits on its own is started again after a backoff; one that fails
``_FAST_FAILURES`` times in a row within ``_HEALTHY_AFTER_S`` of starting stops the whole tree
(it is misconfigured, and restarting it forever would hide that). SIGINT (Ctrl-C) or SIGTERM
stops the readers (API, sync) first, then the allocator, each with SIGTERM to its process group
(its clean stop: the allocator finishes its batch in flight) and SIGKILL after
``_STOP_TIMEOUT_S``; then the server. ``make run`` again continues where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from service import backoff, bootstrap, errors
from service.adapters import children  # signals only: the parts end with this supervisor
from service.processes import allocator, jobs
from service.settings import Settings

log = logging.getLogger("ipledger.up")

_STOP_TIMEOUT_S = 30.0
_HEALTHY_AFTER_S = 10.0
_FAST_FAILURES = 5
_RESTART_INITIAL_S = 0.5
_RESTART_MAX_S = 15.0


@dataclass(frozen=True, slots=True)
class Part:
    """One child: its name in the output, the ``ipledger`` sub-command, its extra environment."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    reader: bool  # stopped before the writer


async def run(
    settings: Settings,
    *,
    with_api: bool = True,
    with_sync: bool = True,
    config: Path | None = None,
) -> None:
    """Run the embedded server and the parts until SIGINT or SIGTERM (or a part keeps failing).

    ``config``: the configuration file this command was given, handed to the parts too.
    """
    server = bootstrap.Embedded.for_settings(settings, end_with_parent=True)
    # Started on this thread, blocking, as `ipledger run --embedded` does (see there why).
    dsn = server.start()
    try:
        here = dataclasses.replace(settings, database_url=dsn, log="table")
        # What `ipledger init` does: the schema and the query API's read-only role.
        await jobs.init(here)
        await _configure_default_pool(here)
        parts = plan(settings, dsn, with_api=with_api, with_sync=with_sync, config=config)
        _print_banner(settings, server.where, dsn, parts)
        await _supervise(parts)
    finally:
        server.stop()
    log.info("stopped: every part and PostgreSQL; `make run` again continues from here")


def plan(
    settings: Settings,
    dsn: str,
    *,
    with_api: bool,
    with_sync: bool,
    config: Path | None = None,
) -> list[Part]:
    """The children of the tree and their environment, writer first."""
    common = {"IPLEDGER_DATABASE_URL": dsn, "IPLEDGER_LOG": "table"}
    if config is not None:
        common["IPLEDGER_CONFIG"] = str(config)
    parts = [Part("allocator", ("run",), common, reader=False)]
    if with_sync:
        sync_env = dict(common)
        target = sync_target(settings)
        if isinstance(target, Path):
            sync_env["IPLEDGER_CILIUMNODE_DIR"] = str(target)
        # What `up --kubeconfig/--context` was given reaches the sync worker as its variables.
        if settings.kubeconfig is not None:
            sync_env["IPLEDGER_KUBECONFIG"] = str(settings.kubeconfig.absolute())
        if settings.kube_context is not None:
            sync_env["IPLEDGER_KUBE_CONTEXT"] = settings.kube_context
        parts.append(Part("sync", ("sync",), sync_env, reader=True))
    if with_api:
        parts.append(Part("api", ("api",), common, reader=True))
    return parts


def sync_target(settings: Settings) -> Path | str:
    """Where the sync worker mirrors to: a directory of files, or a description of the cluster."""
    if settings.ciliumnode_dir is not None:
        return settings.ciliumnode_dir.absolute()
    if settings.kube_clusters:
        return "the clusters of IPLEDGER_KUBECONFIGS"
    if settings.kubeconfig is not None:
        return f"the cluster of {settings.kubeconfig}"
    return (settings.data_dir / "ciliumnodes").absolute()


async def _configure_default_pool(settings: Settings) -> None:
    event_log = await bootstrap.open_log(settings)
    try:
        if all([await event_log.end_offset(p) == 0 for p in await event_log.partitions()]):
            await event_log.append([(b"default", allocator.HELM_DEFAULT_POOL)])
            log.info(
                "empty log: configured Cilium's Helm default pool (10.0.0.0/8 /24, fd00::/104 /120)"
            )
    finally:
        await event_log.close()


def _print_banner(settings: Settings, where: str, dsn: str, parts: list[Part]) -> None:
    names = {part.name for part in parts}
    target = sync_target(settings)
    lines = [
        "ipledger is running: " + ", ".join(part.name for part in parts) + ".",
        f"  PostgreSQL    {dsn} (data in {where})",
        "  event log     the PostgreSQL table log (no broker)",
    ]
    if "api" in names:
        url = f"http://{settings.api_address}"
        lines.append(f"  query API     {url}/docs (e.g. curl {url}/v1/clusters)")
    if "sync" in names:
        shown = f"{target}/ (one YAML file per node)" if isinstance(target, Path) else target
        lines.append(f"  CiliumNodes   {shown}")
    lines += [
        "In another shell:",
        "  .venv/bin/ipledger append examples/events.jsonl     # feed it events",
        "  .venv/bin/ipledger state --wait-caught-up           # see the state",
        "Ctrl-C stops everything; `make run` again continues where it left off.",
    ]
    print("\n".join(lines), flush=True)


async def _supervise(parts: list[Part]) -> None:
    stop = anyio.Event()
    failed: list[str] = []
    running = [_Child(part) for part in parts]
    async with anyio.create_task_group() as watching:
        watching.start_soon(_watch_signals, stop, running)
        # Done when every part has exited and its output is drained.
        async with anyio.create_task_group() as tasks:
            for child in running:
                tasks.start_soon(child.keep_running, stop, failed)
            tasks.start_soon(_stop_in_order, stop, running)
        watching.cancel_scope.cancel()
    if failed:
        raise errors.SupervisionError(
            f"{failed[0]} kept exiting right after it started; everything was stopped "
            "(its output is above)"
        )


async def _stop_in_order(stop: anyio.Event, running: list[_Child]) -> None:
    await stop.wait()
    log.info("stopping: the readers (API, sync worker) first, then the allocator")
    async with anyio.create_task_group() as stopping:
        for child in running:
            if child.part.reader:
                stopping.start_soon(child.terminate)
    for child in running:
        if not child.part.reader:
            await child.terminate()


async def _watch_signals(stop: anyio.Event, running: list[_Child]) -> None:
    """The first SIGINT or SIGTERM stops the tree in order; a second kills every part at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for _ in received:
            if not stop.is_set():
                stop.set()
                continue
            log.warning("signalled again while stopping: killing every part")
            for child in running:
                child.kill()


class _Child:
    """One part's process, started again when it exits on its own."""

    def __init__(self, part: Part) -> None:
        self.part = part
        self.process: anyio.abc.Process | None = None
        self.stopping = False

    async def keep_running(self, stop: anyio.Event, failed: list[str]) -> None:
        fast_failures = 0
        while not self.stopping:
            started = time.monotonic()
            code = await self._run_once()
            if self.stopping:
                return
            lived = time.monotonic() - started
            fast_failures = fast_failures + 1 if lived < _HEALTHY_AFTER_S else 1
            if fast_failures >= _FAST_FAILURES:
                log.error(
                    "%s exited %d times in a row right after starting",
                    self.part.name,
                    fast_failures,
                )
                failed.append(self.part.name)
                stop.set()
                return
            pause = backoff.delay(
                fast_failures,
                initial_s=_RESTART_INITIAL_S,
                max_s=_RESTART_MAX_S,
                jitter=random.uniform(0.5, 1.0),
            )
            log.warning(
                "%s exited with code %s; starting it again in %.1fs", self.part.name, code, pause
            )
            with anyio.move_on_after(pause):
                await stop.wait()

    async def _run_once(self) -> int:
        command = [sys.executable, "-m", "service.cli", *self.part.command]
        async with await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.part.env, children.SUPERVISOR_VARIABLE: str(os.getpid())},
            # A group of its own: the terminal's Ctrl-C reaches only this supervisor, which
            # stops the parts in order; terminate() signals the whole group.
            start_new_session=True,
        ) as process:
            self.process = process
            if self.stopping:  # terminate() ran while this one was being started
                _signal_group(process.pid, signal.SIGTERM)
            assert process.stdout is not None
            prefix = f"{self.part.name:>9} | ".encode()
            pending = b""
            async for chunk in process.stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    sys.stderr.buffer.write(prefix + line + b"\n")
                sys.stderr.buffer.flush()
            if pending:
                sys.stderr.buffer.write(prefix + pending + b"\n")
            return await process.wait()

    async def terminate(self) -> None:
        """SIGTERM to the part's group, SIGKILL if it has not exited in ``_STOP_TIMEOUT_S``."""
        self.stopping = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(_STOP_TIMEOUT_S) as waited:
            await process.wait()
        if waited.cancelled_caught:
            log.warning("%s did not stop in %.0fs; killing it", self.part.name, _STOP_TIMEOUT_S)
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()

    def kill(self) -> None:
        self.stopping = True
        if self.process is not None and self.process.returncode is None:
            _signal_group(self.process.pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)
