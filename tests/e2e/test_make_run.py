"""The quick start as a user runs it: ``ipledger run --embedded`` (what ``make run`` starts),
then ``append``, ``state --wait-caught-up`` and the metrics endpoint, Ctrl-C, and a second run
that continues where the first stopped. Real processes, a real embedded PostgreSQL."""

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

import pytest

from tests import waiting

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def remove_data(data: Path) -> None:
    """Stop a server a killed run left behind, then remove the data and, as root, the cluster
    its ``postgres`` link points to (under /var/lib/ipledger)."""
    pointer = data / "postgres"
    pid_file = pointer / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    if pointer.is_symlink():
        shutil.rmtree(pointer.resolve(), ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)


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
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "run", "--embedded"],
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
            what=lambda: (
                "ipledger run --embedded to say it is running\n"
                + self.log.read_text(errors="replace")
            ),
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
