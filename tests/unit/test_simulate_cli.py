"""``ipledger simulate`` and ``ipledger schema`` as a user runs them.

In-process, except for determinism: a process's string hashes, and with them the order of its
sets and dicts of strings, follow its ``PYTHONHASHSEED``, which no process can change for
itself; so the same stream goes through ``simulate`` in processes with different seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import cli
from tests.streams import mixed_stream

ROOT = Path(__file__).resolve().parents[2]
#: Two fixed seeds and one the interpreter picks at random.
HASH_SEEDS = ("0", "1", "random")

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


def python(*argv: str, hash_seed: str) -> subprocess.CompletedProcess[bytes]:
    """``python -c`` or ``python -m`` in a fresh interpreter with the given hash seed."""
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed},
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_the_hash_seeds_give_sets_of_node_names_different_orders() -> None:
    show = "print(list({f'node-{i}' for i in range(24)}))"
    orders = {python("-c", show, hash_seed=seed).stdout for seed in HASH_SEEDS}
    assert len(orders) == len(HASH_SEEDS)


@pytest.mark.parametrize("mode", [[], ["--decisions"]], ids=["document", "decisions"])
def test_simulate_gives_the_same_bytes_under_every_hash_seed(
    tmp_path: Path, mode: list[str]
) -> None:
    # Three clusters, dozens of nodes and owners, adoptions, deletions, rejections: enough sets
    # and dicts of strings for an order that follows the hashes to show.
    records = [line.encode() for line in LINES] + mixed_stream(
        3000, seed=11, clusters=("default", "east", "west")
    )
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(records) + b"\n")

    runs = [
        python("-m", "service.cli", "simulate", *mode, str(path), hash_seed=seed)
        for seed in HASH_SEEDS
    ]

    for seed, done in zip(HASH_SEEDS, runs, strict=True):
        assert done.returncode == 0, (seed, done.stderr.decode(errors="replace")[-2000:])
    first = runs[0]
    assert len(first.stdout) > 20_000 and b"invalid event" in first.stderr  # not a vacuous run
    for seed, done in zip(HASH_SEEDS[1:], runs[1:], strict=True):
        assert done.stdout == first.stdout, f"stdout under PYTHONHASHSEED={seed} differs from 0"
        assert done.stderr == first.stderr, f"stderr under PYTHONHASHSEED={seed} differs from 0"


def test_schema_prints_valid_json(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run(capsys, "schema")
    assert json.loads(out)["title"] == "ipledger event"


def test_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "/nonexistent/events.jsonl"]) == 2
    assert "No such file" in capsys.readouterr().err
