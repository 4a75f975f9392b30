"""docs/events.md carries the JSON Schema ``ipledger schema`` prints, byte for byte.

The copy sits in a ``json`` code block between the ``<!-- ipledger schema: begin -->`` and
``<!-- ipledger schema: end -->`` markers. After a change to the contract
(service/domain/events.py), ``python -m tests.unit.test_docs_events`` writes the command's
output there again; the test fails until it has.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "events.md"
BLOCK = re.compile(
    r"(<!-- ipledger schema: begin -->\n)(.*?)(<!-- ipledger schema: end -->)", flags=re.DOTALL
)


def schema_output() -> str:
    """What ``ipledger schema`` prints, run as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "schema"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    )
    return result.stdout


def documented_schema(text: str) -> str:
    match = BLOCK.search(text)
    assert match, "docs/events.md has no ipledger schema block"
    body = match.group(2)
    assert body.startswith("```json\n") and body.endswith("```\n"), "the block is not ```json"
    return body.removeprefix("```json\n").removesuffix("```\n")


def test_the_doc_carries_the_schema_the_command_prints() -> None:
    printed = schema_output()
    assert documented_schema(DOC.read_text(encoding="utf-8")) == printed, (
        "docs/events.md's JSON Schema is stale: python -m tests.unit.test_docs_events"
    )
    schema = json.loads(printed)
    # Every event type of the contract is in it, tagged as the decoder reads it.
    tags = {
        tag
        for definition in schema["$defs"].values()
        for tag in definition["properties"]["type"]["enum"]
        if "type" in definition.get("properties", {})
    }
    assert tags == {
        "pool.configured",
        "node.added",
        "node.adopted",
        "node.deleted",
        "ip.requested",
        "ip.released",
    }


def write() -> None:
    text = DOC.read_text(encoding="utf-8")
    block = f"```json\n{schema_output()}```\n"
    DOC.write_text(BLOCK.sub(lambda m: m.group(1) + block + m.group(3), text), encoding="utf-8")


if __name__ == "__main__":
    write()
