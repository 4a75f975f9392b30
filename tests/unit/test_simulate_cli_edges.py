"""``ipledger simulate`` at its edges, run as a user runs it (a subprocess, to see what is printed).

A path that cannot be read is a usage error: exit 2, one line, no traceback. A file saved by an
editor that writes a UTF-8 byte order mark gets a decision for its first line that says so,
rather than "invalid character (byte 0)".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POOL = (
    b'{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":["10.0.0.0/8"],'
    b'"clusterPoolIPv4MaskSize":24}'
)
NODE = b'{"type":"node.added","id":"n1","node":"worker-1"}'


def simulate(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "simulate", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_a_directory_is_a_one_line_error_with_exit_2(tmp_path: Path) -> None:
    for args in ([str(tmp_path)], ["--decisions", str(tmp_path)]):
        done = simulate(*args)
        assert done.returncode == 2
        assert b"Traceback" not in done.stderr
        lines = done.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("ipledger: ")
        assert str(tmp_path) in lines[0]
        assert done.stdout == b""


def test_a_missing_file_is_a_one_line_error_with_exit_2(tmp_path: Path) -> None:
    done = simulate(str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr
    assert len(done.stderr.decode().splitlines()) == 1


def test_a_byte_order_mark_on_the_first_line_is_named_in_its_decision(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + POOL + b"\n" + NODE + b"\n")
    done = simulate("--decisions", str(path))
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert "byte order mark" in first["error"].lower(), first
    assert first["id"] is None
    # The record after it is applied as usual: with no pool configured, the node waits.
    assert second["id"] == "n1"
    assert second["error"] == "no pool configured for cluster default"
    stderr = done.stderr.decode()
    assert "line 1: " in stderr
    assert "byte order mark" in stderr.lower()
    assert "Traceback" not in stderr
    # The same from standard input.
    piped = simulate("--decisions", "-", stdin=path.read_bytes())
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == done.stdout


def test_the_same_record_without_the_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(POOL + b"\n" + NODE + b"\n")
    done = simulate("--decisions", str(path))
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["error"] is None
    assert second["podCIDRs"] == ["10.0.0.0/24"]
