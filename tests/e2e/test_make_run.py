"""What ``make run`` starts, as a user runs it, under a private (0700) directory.

``ipledger up`` (``make run``): the allocator, the sync worker writing CiliumNode files and the
query API in one tree; events appended, the state equal to ``simulate``'s, every node's file
valid against Cilium's CRD, the API answering; Ctrl-C stops every part; a second run continues
where the first stopped. ``ipledger up --kubeconfig`` mirrors into that cluster (the real
kube-apiserver of the harness) and writes no files. ``ipledger run --embedded`` (the allocator
alone): ``append``, ``state
--wait-caught-up``, the metrics endpoint, Ctrl-C and a second run. Real processes, a real
embedded PostgreSQL; as root its cluster lives under /var/lib/ipledger, linked from the data
dir. tests/e2e/test_quick_start.py runs ``make run`` itself from a fresh clone."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client, KubeConfig

from service.adapters.kubernetes.client import CiliumNode
from tests import waiting
from tests.ciliumnode_schema import assert_valid, crd_schema
from tests.e2e.embedded_data import remove_data
from tests.harness.kube import KubeAPIServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Private, as a home directory or `mktemp -d` is: as root the embedded server runs as an
    # unprivileged account that cannot enter it, and ipledger must cope without loosening it.
    root = Path(tempfile.mkdtemp(prefix="ipledger-run-"))
    try:
        yield root / "data"
    finally:
        remove_data(root / "data")
        shutil.rmtree(root, ignore_errors=True)


def ipledger(
    env: dict[str, str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


class Running:
    def __init__(
        self, env: dict[str, str], log: Path, command: tuple[str, ...] = ("run", "--embedded")
    ) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *command],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        # The instructions are printed once the database is migrated and the pool configured.
        def printed() -> bool:
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            return "ipledger is running" in self.log.read_text(errors="replace")

        waiting.until_blocking(
            printed,
            timeout=60,
            what=lambda: "ipledger to say it is running\n" + self.log.read_text(errors="replace"),
            interval=0.05,
        )

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def test_quick_start_end_to_end(data_dir: Path) -> None:
    port = free_port()
    env = {"IPLEDGER_DATA_DIR": str(data_dir), "IPLEDGER_METRICS_PORT": str(port)}
    env.pop("IPLEDGER_DATABASE_URL", None)
    first = Running(env, data_dir.parent / "first.log")
    try:
        first.wait_ready()
        appended = ipledger(env, "append", str(EXAMPLES / "events.jsonl"))
        assert appended.returncode == 0, appended.stderr
        assert b"appended 14 event(s), 0 invalid" in appended.stdout
        bad = ipledger(env, "append", str(EXAMPLES / "bad-events.jsonl"))
        assert bad.returncode == 1
        assert b"appended 0 event(s), 16 invalid line(s) not appended" in bad.stdout
        assert b"line 2: invalid event: unknown event type 'node.renamed'" in bad.stderr

        shown = ipledger(env, "state", "--wait-caught-up", "--timeout", "60")
        assert shown.returncode == 0, shown.stderr
        stream = (EXAMPLES / "helm-default-pool.jsonl").read_bytes() + (
            EXAMPLES / "events.jsonl"
        ).read_bytes()
        simulated = ipledger(env, "simulate", "-", stdin=stream)
        assert json.loads(shown.stdout) == json.loads(simulated.stdout)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert "ipledger_records_applied_total 15" in text
        assert "ipledger_decisions_with_error_total 1" in text  # the ghost release
        assert 'ipledger_leader{partition="0"} 1' in text
        assert first.interrupt() == 0, first.log.read_text(errors="replace")
    finally:
        first.kill()

    # Running it again continues where it left off: nothing is re-applied.
    second = Running(env, data_dir.parent / "second.log")
    try:
        second.wait_ready()
        more = b'{"type":"ip.requested","id":"again","node":"worker-2","owner":"shop/late"}\n'
        assert ipledger(env, "append", "-", stdin=more).returncode == 0
        shown = ipledger(env, "state", "--wait-caught-up", "--timeout", "60")
        assert shown.returncode == 0, shown.stderr
        simulated = ipledger(env, "simulate", "-", stdin=stream + more)
        assert json.loads(shown.stdout) == json.loads(simulated.stdout)
        assert second.interrupt() == 0
    finally:
        second.kill()


def children_of(pid: int) -> set[int]:
    """Every process below ``pid`` (by the parent links in /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(
                    int(entry.name)
                )
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_up_runs_the_whole_product_and_continues(data_dir: Path) -> None:
    api_port = free_port()
    env = {
        "IPLEDGER_DATA_DIR": str(data_dir),
        "IPLEDGER_API_ADDRESS": f"127.0.0.1:{api_port}",
        "IPLEDGER_RESYNC_INTERVAL_S": "300",
    }
    for name in ("IPLEDGER_DATABASE_URL", "IPLEDGER_KUBECONFIG", "IPLEDGER_KUBECONFIGS"):
        os.environ.pop(name, None)
    files = data_dir / "ciliumnodes"
    stream = (EXAMPLES / "helm-default-pool.jsonl").read_bytes()
    first = Running(env, data_dir.parent / "up-1.log", ("up",))
    try:
        first.wait_ready()
        banner = first.log.read_text()
        assert f"CiliumNodes   {files}/" in banner
        if os.geteuid() == 0:
            assert "(linked from " in banner and "/var/lib/ipledger/" in banner
        for name in ("dual-stack-cluster.jsonl", "pool-exhaustion.jsonl"):
            assert ipledger(env, "append", str(EXAMPLES / name)).returncode == 0
            stream += (EXAMPLES / name).read_bytes()
        shown = ipledger(env, "state", "--wait-caught-up", "--timeout", "60")
        assert shown.returncode == 0, shown.stderr
        expected = json.loads(ipledger(env, "simulate", "-", stdin=stream).stdout)
        assert json.loads(shown.stdout) == expected
        # The sync worker mirrors the default cluster: one valid CiliumNode file per node.
        nodes = expected["clusters"]["default"]["nodes"]
        waiting.until_blocking(
            lambda: all((files / f"{n}.yaml").exists() for n in nodes),
            timeout=60,
            what=lambda: (
                f"a CiliumNode file for each of {sorted(nodes)} in {files}\n"
                + first.log.read_text(errors="replace")[-3000:]
            ),
            interval=0.1,
        )
        schema = crd_schema()
        for name, node in nodes.items():
            written = assert_valid(files / f"{name}.yaml", schema)
            assert written["spec"]["ipam"]["podCIDRs"] == node["podCIDRs"]
        clusters = get_json(f"http://127.0.0.1:{api_port}/v1/clusters")
        assert {"default", "lab"} <= {c["name"] for c in clusters["items"]}, clusters
        lab_3 = get_json(f"http://127.0.0.1:{api_port}/v1/clusters/lab/nodes/lab-3")
        assert lab_3["node"]["podCIDRs"] == ["10.20.8.0/24"], lab_3
        parts = children_of(first.process.pid)
        assert len(parts) >= 4  # the server, the allocator, the sync worker, the API
        assert first.interrupt() == 0, first.log.read_text(errors="replace")
        assert not [pid for pid in parts if alive(pid)], first.log.read_text(errors="replace")
        assert "Traceback" not in first.log.read_text(errors="replace")
    finally:
        first.kill()

    # Running it again continues where it left off.
    second = Running(env, data_dir.parent / "up-2.log", ("up",))
    try:
        second.wait_ready()
        assert "configured Cilium's Helm default pool" not in second.log.read_text()
        more = b'{"type":"node.added","id":"again","node":"worker-c"}\n'
        assert ipledger(env, "append", "-", stdin=more).returncode == 0
        shown = ipledger(env, "state", "--wait-caught-up", "--timeout", "60")
        expected = json.loads(ipledger(env, "simulate", "-", stdin=stream + more).stdout)
        assert json.loads(shown.stdout) == expected
        waiting.until_blocking(
            (files / "worker-c.yaml").exists,
            timeout=60,
            what="the new node's CiliumNode file",
            interval=0.1,
        )
        assert second.interrupt() == 0, second.log.read_text(errors="replace")
    finally:
        second.kill()


@pytest.mark.kube
def test_up_with_a_kubeconfig_mirrors_into_that_cluster(
    data_dir: Path, kube_apiserver: KubeAPIServer
) -> None:
    env = {
        "IPLEDGER_DATA_DIR": str(data_dir),
        "IPLEDGER_API_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    for name in ("IPLEDGER_DATABASE_URL", "IPLEDGER_KUBECONFIG", "IPLEDGER_CILIUMNODE_DIR"):
        os.environ.pop(name, None)
    command = ("up", "--no-api", "--kubeconfig", str(kube_apiserver.kubeconfig_path))
    running = Running(env, data_dir.parent / "up-kube.log", command)
    try:
        running.wait_ready()
        assert f"the cluster of {kube_apiserver.kubeconfig_path}" in running.log.read_text()
        appended = ipledger(env, "append", str(EXAMPLES / "dual-stack-cluster.jsonl"))
        assert appended.returncode == 0, appended.stderr

        def mirrored() -> bool:
            listed = kubectl_like(kube_apiserver)
            return listed == {
                "cp-1": ["10.0.0.0/24", "fd00::/120"],
                "worker-a": ["10.0.1.0/24", "fd00::100/120"],
                "worker-b": ["10.0.2.0/24", "fd00::200/120"],
            }

        waiting.until_blocking(
            mirrored,
            timeout=60,
            what=lambda: (
                "the three CiliumNodes on the API server\n"
                + running.log.read_text(errors="replace")[-3000:]
            ),
            interval=0.2,
        )
        assert not (data_dir / "ciliumnodes").exists()
        assert running.interrupt() == 0, running.log.read_text(errors="replace")
    finally:
        running.kill()
        client = Client(config=KubeConfig.from_file(kube_apiserver.kubeconfig_path))
        client.deletecollection(CiliumNode)
        client.close()


def kubectl_like(server: KubeAPIServer) -> dict[str, Any]:
    """The CiliumNodes' ``spec.ipam.podCIDRs`` on the server, by name."""
    client = Client(config=KubeConfig.from_file(server.kubeconfig_path))
    try:
        return {
            node.metadata.name: (node.spec or {}).get("ipam", {}).get("podCIDRs")
            for node in client.list(CiliumNode)
        }
    finally:
        client.close()


def test_up_killed_outright_takes_its_parts_with_it(data_dir: Path) -> None:
    # SIGKILL leaves up no chance to stop anything: the kernel's parent-death signal does it
    # (SIGTERM to each part, SIGINT to PostgreSQL), so the next make run finds the API's port
    # and the database free.
    api_port = free_port()
    env = {"IPLEDGER_DATA_DIR": str(data_dir), "IPLEDGER_API_ADDRESS": f"127.0.0.1:{api_port}"}
    for name in ("IPLEDGER_DATABASE_URL", "IPLEDGER_KUBECONFIG", "IPLEDGER_KUBECONFIGS"):
        os.environ.pop(name, None)
    first = Running(env, data_dir.parent / "up-1.log", ("up",))
    try:
        first.wait_ready()
        waiting.until_blocking(
            lambda: len(children_of(first.process.pid)) >= 4,
            timeout=60,
            what="the server, the allocator, the sync worker and the API",
            interval=0.1,
        )
        parts = children_of(first.process.pid)
        first.process.kill()
        first.process.wait(timeout=10)
        waiting.until_blocking(
            lambda: not [pid for pid in parts if alive(pid)],
            timeout=60,
            what=lambda: f"no part of the killed up left running: {parts}",
            interval=0.1,
        )
    finally:
        first.kill()
    second = Running(env, data_dir.parent / "up-2.log", ("up",))
    try:
        second.wait_ready()

        def answers() -> bool:
            with contextlib.suppress(OSError):
                clusters = get_json(f"http://127.0.0.1:{api_port}/v1/clusters")
                return "default" in {c["name"] for c in clusters["items"]}
            return False

        waiting.until_blocking(
            answers,
            timeout=60,
            what=lambda: "the second up's API\n" + second.log.read_text(errors="replace")[-3000:],
            interval=0.2,
        )
        assert second.interrupt() == 0, second.log.read_text(errors="replace")
    finally:
        second.kill()
