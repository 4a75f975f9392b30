"""``make demo`` end to end: examples/demo.sh, as ``make demo`` runs it once the venv is set up.

The script starts ``ipledger up`` on a data dir of its own (here under a private 0700
directory), appends the examples step by step, shows the results through the query API,
``ipledger status`` and the CiliumNode files, and stops everything. Asserted: it succeeds, each
step shows what it exists to show, and the tree stopped cleanly (no server left: its pid file
goes with a clean shutdown).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.embedded_data import remove_data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def private() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ipledger-demo-"))
    try:
        yield root
    finally:
        remove_data(root / "demo")
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_demo_plays_every_example_and_stops_cleanly(private: Path) -> None:
    data = private / "demo"
    env = {
        **os.environ,
        "VENV": str(Path(sys.executable).parent.parent),
        "IPLEDGER_DEMO_DATA_DIR": str(data),
        "IPLEDGER_DEMO_API_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    result = subprocess.run(
        ["bash", "examples/demo.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    out = result.stdout.decode(errors="replace")
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 0, out[-4000:] + err[-4000:]
    for shown in (
        # 1: the three nodes through the API and as CiliumNode files
        "worker-b         10.0.2.0/24, fd00::200/120",
        "cp-1.yaml\nworker-a.yaml\nworker-b.yaml\n",
        "    podCIDRs:\n    - 10.0.1.0/24\n    - fd00::100/120\n",
        # 2: exhaustion, then served after the expansion
        "lab-3            -                                  error: allocator full",
        "lab-3            10.20.8.0/24                       error: -",
        "10.20.8.0/22   /24",
        # 3: migration
        "ip-172-31-0-14   10.0.3.0/24, fd00::300/120",
        "requested CIDR (10.0.1.0/24) is already allocated",
        # 4: overlap
        "conflict: node address 10.0.1.21 is inside the pod CIDR pool 10.0.0.0/8",
        "rack1-node1      172.20.0.0/24",
        # 5: refusals and bad input
        "range is full",
        "appended 0 event(s), 16 invalid line(s) not appended",
        # 6: every cluster, status, and the stop
        "onprem        2 node(s), 2 with a CIDR, 0 waiting, 0 in error, 2 in conflict",
        "demo: done.",
    ):
        assert shown in out, f"{shown!r} not in the demo's output:\n{out[-6000:]}"
    log = (data / "up.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
    for part in ("allocator", "sync", "api"):
        assert f"{part} | " in log
    assert "stopped: " in log
    assert not (data / "postgres" / "postmaster.pid").exists()
