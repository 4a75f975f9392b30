"""``ipledger simulate`` and ``ipledger schema`` as a user runs them (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service import cli

LINES = [
    '{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":["10.0.0.0/8"],'
    '"clusterPoolIPv4MaskSize":24}',
    '{"type":"node.added","id":"n1","node":"a","addresses":["192.168.0.1"]}',
    "",
    "this is not json",
    '{"type":"ip.requested","id":"i1","node":"a","owner":"ns/p"}',
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    assert cli.main(list(argv)) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_simulate_prints_the_final_state_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    out, err = run(capsys, "simulate", str(path))
    doc = json.loads(out)
    cluster = doc["clusters"]["default"]
    assert cluster["digest"].startswith("sha256:")
    assert cluster["nodes"] == {
        "a": {
            "podCIDRs": ["10.0.0.0/24"],
            "error": None,
            "conflict": None,
            "addresses": ["192.168.0.1"],
            "ips": {"10.0.0.1": "ns/p"},
        }
    }
    assert cluster["pool"]["clusterPoolIPv4PodCIDRList"] == ["10.0.0.0/8"]
    assert "line 4: invalid event: JSON is malformed" in err


def test_simulate_decisions_gives_one_line_per_record_including_rejections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    out, _ = run(capsys, "simulate", "--decisions", str(path))
    decisions = [json.loads(line) for line in out.splitlines()]
    assert [d["id"] for d in decisions] == ["p", "n1", None, "i1"]
    assert decisions[2]["error"].startswith("invalid event:")
    assert decisions[3]["ips"] == ["10.0.0.1"]


def test_simulate_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    first, _ = run(capsys, "simulate", str(path))
    second, _ = run(capsys, "simulate", str(path))
    assert first == second


def test_schema_prints_valid_json(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run(capsys, "schema")
    assert json.loads(out)["title"] == "ipledger event"


def test_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "/nonexistent/events.jsonl"]) == 2
    assert "No such file" in capsys.readouterr().err
