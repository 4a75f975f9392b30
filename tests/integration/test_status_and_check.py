"""``ipledger status`` and ``ipledger check --kubernetes`` against real services.

The real allocator (``PartitionAllocator`` over the PostgreSQL table log) applies a small story
to the projection: a two-block pool that two nodes fill, so that a third waits (``allocator
full``), an adoption refused, a node whose own address lies in the pool (a conflict), pod
addresses, a malformed record; and a second cluster. The commands run as the ``ipledger``
entry point does (``cli.main``, in a thread of its own since each runs its own event loop; one
``--watch`` run as a real child process stopped with Ctrl-C), reading PostgreSQL through the
read port, and, for ``check``, the CiliumNodes of the test Kubernetes API server with Cilium's
CRD (shared by the session: each test starts and ends with none). Nothing is mocked; the
expected figures follow from the story (docs/allocation.md's rules), not from the code read.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from service import allocator, cli, configuration
from service.adapters.kubernetes.client import KubernetesClusterClient
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import table_log
from tests import waiting
from tests.harness.kube import KubeAPIServer

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]
ROOT = Path(__file__).resolve().parents[2]


def _event(type_: str, id_: str, cluster: str = "default", **fields: Any) -> bytes:
    return json.dumps({"type": type_, "id": id_, "cluster": cluster, **fields}).encode()


def _key(value: bytes) -> bytes | None:
    """The record key the contract asks for: the event's cluster (none for a malformed one)."""
    try:
        return str(json.loads(value).get("cluster", "default")).encode()
    except ValueError:
        return None


STORY = [
    _event(
        "pool.configured",
        "pool",
        clusterPoolIPv4PodCIDRList=["10.0.0.0/23"],
        clusterPoolIPv4MaskSize=24,
    ),
    _event("node.added", "a", node="alpha"),
    _event("node.added", "b", node="bravo"),
    _event("node.added", "c", node="charlie"),
    _event("ip.requested", "i1", node="alpha", owner="shop/cart-1"),
    _event("ip.requested", "i2", node="alpha", owner="shop/cart-2"),
    _event("ip.requested", "i3", node="bravo", owner="ops/probe"),
    _event("node.adopted", "d", node="delta", podCIDRs=["10.0.0.0/24"]),
    _event("node.added", "e", node="echo", addresses=["10.0.1.77"]),
    b"this is not JSON",
    _event(
        "pool.configured",
        "east-pool",
        cluster="east",
        clusterPoolIPv4PodCIDRList=["10.8.0.0/16"],
        clusterPoolIPv4MaskSize=24,
    ),
    _event("node.added", "east-1", cluster="east", node="e1"),
]
MALFORMED_OFFSET = 9


def _hourly(values: list[bytes]) -> list[bytes]:
    """The story one event an hour from 2026-11-20T00:00Z (its n-th record at n o'clock), so
    that the forecast's window has a length; the malformed record has no time of its own."""
    timed = []
    for hour, value in enumerate(values):
        try:
            body = json.loads(value)
        except ValueError:
            timed.append(value)
            continue
        timed.append(json.dumps({**body, "time": f"2026-11-20T{hour:02d}:00:00Z"}).encode())
    return timed


STORY = _hourly(STORY)
FULL = "allocator full"
REFUSED = "requested CIDR (10.0.0.0/24) is already allocated"


class Ledger:
    """The real allocator over the PostgreSQL table log, running while the test runs."""

    def __init__(self, dsn: str) -> None:
        self.log = table_log.PostgresTableLog.from_dsn(dsn)
        self.projection = pg_projection.PostgresProjection.from_dsn(
            dsn, log_name="table", holder="status-test-writer"
        )
        self.worker = allocator.PartitionAllocator(
            self.log, self.projection, 0, settings=allocator.LoopSettings(batch_max_wait_s=0.01)
        )
        self.stop = anyio.Event()
        self.stopped = anyio.Event()

    async def run(self) -> None:
        try:
            await self.worker.run(self.stop)
        finally:
            self.stopped.set()

    async def append(self, records: Sequence[bytes]) -> None:
        """Append and wait until the allocator has committed everything."""
        await self.log.append([(_key(value), value) for value in records])
        end = await self.log.end_offset(0)
        await waiting.until(
            lambda: self.worker.metrics.next_offset.get(0, -1) >= end,
            timeout=60,
            what=f"the allocator to commit up to offset {end}",
        )

    async def halt(self) -> None:
        """Stop the allocator cleanly (it gives its lease up)."""
        self.stop.set()
        await waiting.until(self.stopped.is_set, timeout=30, what="the allocator to stop")


@pytest.fixture
async def ledger(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Ledger]:
    # The commands read settings from the environment: none of the caller's may leak in (the
    # harness's own variables, IPLEDGER_CACHE and the like, are not settings and stay).
    for option in configuration.OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    monkeypatch.delenv(configuration.CONFIG_VARIABLE, raising=False)
    monkeypatch.setenv("COLUMNS", "160")  # rich draws for a terminal this wide
    ledger = Ledger(pg_dsn)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ledger.run)
            await ledger.append(STORY)
            yield ledger
            ledger.stop.set()
    finally:
        await ledger.projection.close()
        await ledger.log.close()


async def ipledger(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``ipledger argv`` as the entry point does; its exit code, stdout and stderr.

    ``main`` configures logging onto this test's captured stderr: undone afterwards, so that no
    later test logs into a closed stream.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code = await anyio.to_thread.run_sync(cli.main, list(argv))
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


# --- status -----------------------------------------------------------------------------------


async def test_status_json_reports_pools_nodes_lag_writer_and_rejections(
    ledger: Ledger, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await ipledger(capsys, "status", "--database-url", pg_dsn, "--json")
    assert code == 0
    status = json.loads(out)
    assert status["version"] == 1
    assert status["log"] == "table"
    default, east = status["clusters"]
    assert (default["name"], default["partition"], default["nodes"]) == ("default", 0, 5)
    assert default["pool"] == [
        {
            "family": "ipv4",
            "cidr": "10.0.0.0/23",
            "mask_size": 24,
            "node_cidrs": {"total": 2, "used": 2, "free": 0, "used_percent": 100.0},
            # alpha's two pods and bravo's one, in two /24s of 254 addresses each.
            "pod_addresses": {"used": 3, "capacity": 508},
            # Two blocks in the 11 hours since the pool came (younger than the day's window):
            # none left, so it runs out at the last record's time.
            "forecast": {
                "window_seconds": 86_400.0,
                "node_cidrs_per_day": pytest.approx(2 / 11 * 24),
                "seconds_left": 0.0,
                "exhausts_at": "2026-11-20T11:00:00Z",
            },
        }
    ]
    assert default["waiting"] == {"count": 2, "nodes": ["charlie", "echo"]}
    assert default["in_error"] == {
        "count": 3,
        "nodes": [
            {"name": "charlie", "error": FULL},
            {"name": "delta", "error": REFUSED},
            {"name": "echo", "error": FULL},
        ],
    }
    assert default["in_conflict"]["count"] == 1
    ((conflicted,),) = [default["in_conflict"]["nodes"]]
    assert conflicted["name"] == "echo" and "10.0.1.77" in conflicted["conflict"]
    assert east["pool"][0]["node_cidrs"] == {
        "total": 256,
        "used": 1,
        "free": 255,
        "used_percent": 0.4,
    }
    # One block in the hour since east's pool came: 255 more hours.
    assert east["pool"][0]["forecast"] == {
        "window_seconds": 86_400.0,
        "node_cidrs_per_day": pytest.approx(24.0),
        "seconds_left": pytest.approx(255 * 3600),
        "exhausts_at": "2026-12-01T02:00:00Z",
    }
    (partition,) = status["partitions"]
    assert partition["partition"] == 0
    assert partition["end_offset"] == partition["consumed_offset"] == len(STORY)
    assert partition["lag"] == 0
    assert partition["writer"]["holder"] == "status-test-writer"
    assert partition["writer"]["expired"] is False
    ((rejection,),) = [partition["last_rejections"]]
    assert rejection["offset"] == MALFORMED_OFFSET
    assert "JSON is malformed" in rejection["reason"]


async def test_status_shows_lag_and_no_writer_once_the_allocator_stopped(
    ledger: Ledger, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await ledger.halt()
    late = [_event("node.added", f"late-{n}", node=f"late-{n}") for n in range(3)]
    await ledger.log.append([(_key(value), value) for value in late])
    code, out, _ = await ipledger(capsys, "status", "--database-url", pg_dsn, "--json")
    assert code == 0
    (partition,) = json.loads(out)["partitions"]
    assert (partition["end_offset"], partition["consumed_offset"], partition["lag"]) == (
        len(STORY) + 3,
        len(STORY),
        3,
    )
    assert partition["writer"]["expired"] is True
    code, out, _ = await ipledger(capsys, "status", "--database-url", pg_dsn)
    assert code == 0
    assert "expired: no writer" in out


async def test_status_text_is_a_table_per_cluster_and_element(
    ledger: Ledger, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await ipledger(capsys, "status", "--database-url", pg_dsn, "--limit", "1")
    assert code == 0
    lines = out.splitlines()
    assert any(
        line.startswith("Cluster default") and "5 node(s), 2 waiting for a CIDR, 3 in error" in line
        for line in lines
    )
    (row,) = [line for line in lines if line.lstrip().startswith("10.0.0.0/23")]
    assert row.split() == [
        "10.0.0.0/23",
        "/24",
        "2",
        "/",
        "2",
        "0",
        "100.0%",
        "3",
        "/",
        "508",
        "now",
    ]
    (east_row,) = [line for line in lines if line.lstrip().startswith("10.8.0.0/16")]
    assert east_row.split()[-3:] == ["10.6", "days", "(2026-12-01)"]
    assert "  Waiting for a CIDR: 2" in lines
    assert "    charlie" in lines
    assert "    ... and 1 more (--limit, or --json)" in lines
    assert f"    charlie  {FULL}" in lines
    assert "Last rejections, partition 0" in out
    (rejected,) = [line for line in lines if line.startswith(f"  offset {MALFORMED_OFFSET} ")]
    assert "JSON is malformed" in rejected
    (log_row,) = [line for line in lines if "status-test-writer" in line]
    assert log_row.split()[:4] == ["0", str(len(STORY)), str(len(STORY)), "0"]
    assert "expires in" in log_row


async def test_status_of_one_cluster_and_of_an_unknown_one(
    ledger: Ledger, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await ipledger(
        capsys, "status", "--database-url", pg_dsn, "--cluster", "east", "--json"
    )
    assert code == 0
    status = json.loads(out)
    assert [c["name"] for c in status["clusters"]] == ["east"]
    assert [p["partition"] for p in status["partitions"]] == [0]
    code, out, err = await ipledger(capsys, "status", "--database-url", pg_dsn, "--cluster", "west")
    assert (code, out) == (1, "")
    assert "no cluster 'west' in the projection" in err
    assert "without --cluster lists the clusters" in err


# How the watch is started: as from a terminal, or with SIGINT ignored, as a background job of a
# shell without job control starts it (and all a CI run started so starts); Python then installs
# no Ctrl-C handler of its own, nor asyncio's Runner its. CI's one red run of this test was so.
_STARTS = {
    "sigint-default": [sys.executable],
    "sigint-ignored": [
        sys.executable,
        "-c",
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
    ],
}


@contextlib.contextmanager
def _watch(argv: list[str], tmp_path: Path, start: str = "sigint-default") -> Iterator[Any]:
    """``ipledger ARGV`` running, its stdout a pipe and its stderr in ``tmp_path/stderr``;
    killed at the end if it is still running."""
    env = dict(os.environ)  # the fixture took the settings' variables out
    with (
        (tmp_path / "stderr").open("wb") as stderr,
        subprocess.Popen(
            [*_STARTS[start], "-m", "service.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            env=env,
        ) as watch,
    ):
        try:
            assert watch.stdout is not None
            yield watch
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()


async def _ctrl_c_ends(watch: Any, tmp_path: Path, *, when: str) -> None:
    """Ctrl-C (SIGINT) to ``watch``: it must end with 0 within 30 s (its stacks and stderr in
    the failure when not)."""
    watch.send_signal(signal.SIGINT)
    try:
        code = await anyio.to_thread.run_sync(lambda: watch.wait(timeout=30))
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"status --watch did not end within 30 s of Ctrl-C {when}; where it was:\n"
            + _stacks(watch.pid)
            + (tmp_path / "stderr").read_text()
        )
    assert code == 0, (tmp_path / "stderr").read_text()


@pytest.mark.parametrize("start", list(_STARTS))
async def test_status_watch_reads_again_until_ctrl_c(
    ledger: Ledger, pg_dsn: str, tmp_path: Path, start: str
) -> None:
    argv = ["status", "--database-url", pg_dsn, "--json", "--watch", "0.1"]
    with _watch(argv, tmp_path, start) as watch:
        stdout = watch.stdout
        first = json.loads(await anyio.to_thread.run_sync(stdout.readline))
        assert first["clusters"][0]["nodes"] == 5
        await ledger.append([_event("node.added", "f", node="foxtrot")])

        # Each refresh is one document; a later one shows the node appended meanwhile.
        async def sees_foxtrot() -> bool:
            line = await anyio.to_thread.run_sync(stdout.readline)
            return bool(json.loads(line)["clusters"][0]["nodes"] == 6)

        await waiting.until(sees_foxtrot, timeout=30, what="a refresh showing foxtrot")
        await _ctrl_c_ends(watch, tmp_path, when="after a refresh")


@pytest.mark.parametrize("form", [["--json"], []], ids=["json", "tables"])
async def test_status_watch_ends_on_ctrl_c_while_its_output_is_not_read(
    ledger: Ledger, pg_dsn: str, tmp_path: Path, form: list[str]
) -> None:
    # A pipe to a reader that stopped reading (``status --watch | less`` scrolled back): once
    # the pipe is full the refresh blocks in write(2), and Ctrl-C must still end it.
    argv = ["status", "--database-url", pg_dsn, *form, "--watch", "0.01"]
    with _watch(argv, tmp_path) as watch:
        stdout = watch.stdout
        fcntl.fcntl(stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)  # the smallest: soon full
        assert await anyio.to_thread.run_sync(stdout.readline)  # the watch runs

        def blocked() -> bool:  # waiting in the kernel for room in a pipe: its stdout's
            wchan = Path(f"/proc/{watch.pid}/wchan").read_text()  # "anon_pipe_write", ...
            return "pipe_w" in wchan

        await waiting.until(blocked, timeout=30, what="the watch blocked writing to its pipe")
        await _ctrl_c_ends(watch, tmp_path, when="with its pipe full")


def _stacks(pid: int) -> str:
    """The Python stacks of process ``pid`` (py-spy, installed with the project), for a
    failure's message; what went wrong when it cannot be read."""
    py_spy = Path(sys.executable).with_name("py-spy")
    try:
        dump = subprocess.run(
            [str(py_spy), "dump", "--locals", "--pid", str(pid)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(py-spy dump failed: {exc})\n"
    return dump.stdout + dump.stderr


# --- check --kubernetes -------------------------------------------------------------------------


@pytest.fixture
async def kube(kube_apiserver: KubeAPIServer) -> AsyncIterator[KubernetesClusterClient]:
    client = KubernetesClusterClient.connect(kube_apiserver.kubeconfig_path)

    async def clear() -> None:
        for item in await client.list_nodes():
            await client.delete_node(item.name)

    await clear()
    try:
        yield client
    finally:
        await clear()
        await client.close()


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


@pytest.mark.kube
async def test_check_finds_each_kind_of_difference_and_exits_1(
    ledger: Ledger,
    pg_dsn: str,
    kube: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # alpha and echo as ipledger has them; bravo with other podCIDRs; charlie without its
    # error; delta missing; a stranger ipledger never heard of.
    await kube.apply_pod_cidrs("alpha", [_net("10.0.0.0/24")])
    await kube.apply_pod_cidrs("echo", [])
    await kube.apply_status_error("echo", FULL)
    await kube.apply_pod_cidrs("bravo", [_net("10.9.0.0/24")])
    await kube.apply_pod_cidrs("charlie", [])
    await kube.apply_pod_cidrs("stranger", [_net("10.7.0.0/24")])
    argv = ("check", "--kubernetes", "--database-url", pg_dsn)
    kubeconfig = ("--kubeconfig", str(kube_apiserver.kubeconfig_path))
    code, out, err = await ipledger(capsys, *argv, *kubeconfig)
    assert code == 1
    assert "could not check" not in err and "HTTP Request" not in err
    lines = out.splitlines()
    assert lines[0] == "kubernetes: cluster default: 5 node(s) in ipledger, 5 CiliumNode(s)"
    assert lines[-1] == "found 4 problems"
    problems = lines[1:-1]
    assert [line.split(":")[0].strip() for line in problems] == [
        "bravo",
        "charlie",
        "delta",
        "stranger",
    ]
    assert problems[0].startswith(
        "  bravo: spec.ipam.podCIDRs are [10.9.0.0/24], ipledger has [10.0.1.0/24]"
    )
    assert "the sync worker has not mirrored this node yet" in problems[0]
    assert problems[1].startswith(
        f"  charlie: status.ipam.operator-status.error is empty, ipledger has '{FULL}'"
    )
    assert problems[2].startswith("  delta: no CiliumNode")
    assert problems[3].startswith("  stranger: a CiliumNode ipledger does not know")

    code, out, _ = await ipledger(capsys, *argv, *kubeconfig, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["found"] == 4
    assert report["checked"] == [
        {"check": "kubernetes", "cluster": "default", "ipledger": 5, "other": 5}
    ]
    assert [(p["name"], p["kind"], p["ipledger"], p["other"]) for p in report["problems"]] == [
        ("bravo", "pod_cidrs", ["10.0.1.0/24"], ["10.9.0.0/24"]),
        ("charlie", "error", FULL, None),
        ("delta", "missing", [], None),
        ("stranger", "unknown", None, ["10.7.0.0/24"]),
    ]

    # Repaired, the report is clean and the exit status 0.
    await kube.apply_pod_cidrs("bravo", [_net("10.0.1.0/24")])
    await kube.apply_status_error("charlie", FULL)
    await kube.apply_pod_cidrs("delta", [])
    await kube.apply_status_error("delta", REFUSED)
    await kube.delete_node("stranger")
    code, out, _ = await ipledger(capsys, *argv, *kubeconfig)
    assert code == 0
    assert out.splitlines()[-1] == "found 0 problems"


@pytest.mark.kube
async def test_check_of_a_cluster_ipledger_has_no_nodes_in(
    ledger: Ledger,
    pg_dsn: str,
    kube: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await kube.apply_pod_cidrs("e1", [_net("10.8.0.0/24")])
    base = ("check", "--kubernetes", "--database-url", pg_dsn)
    kubeconfig = ("--kubeconfig", str(kube_apiserver.kubeconfig_path))
    code, out, _ = await ipledger(capsys, *base, *kubeconfig, "--cluster", "east")
    assert (code, out.splitlines()[-1]) == (0, "found 0 problems")
    code, out, _ = await ipledger(capsys, *base, *kubeconfig, "--cluster", "nowhere")
    assert code == 1
    assert out.splitlines() == [
        "kubernetes: cluster nowhere: 0 node(s) in ipledger, 1 CiliumNode(s)",
        "  e1: a CiliumNode ipledger does not know (never in ipledger: `ipledger adopt "
        "--from-kubernetes` takes its podCIDRs over)",
        "found 1 problem",
    ]


async def test_check_exits_2_when_it_cannot_check(
    ledger: Ledger, pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    code, out, err = await ipledger(
        capsys, "check", "--kubernetes", "--database-url", pg_dsn, "--kubeconfig", str(missing)
    )
    assert (code, out) == (2, "")
    assert err.startswith("ipledger: could not check: no Kubernetes configuration from ")
    code, _, err = await ipledger(capsys, "check", "--database-url", pg_dsn)
    assert code == 2
    assert "say what to check against: --kubernetes" in err
