"""The suite's results file: what ``python -m bench --json PATH`` writes, and reads back.

One JSON document (``FORMAT`` 1)::

    {"format": 1, "date": ..., "machine": {...}, "versions": {...}, "argv": [...],
     "quick": false,
     "runs": {"allocator": {"date": ..., "seconds": ..., "quick": false, "argv": [...],
                            "load average": "...", "failed": ""}, ...},
     "results": [Result.to_json(), ...]}

``runs`` says when and how each benchmark's rows were measured, because a file accumulates: a
run of some benchmarks (``--only``) replaces those benchmarks' rows and keeps the rest
(``Suite.merge``), so the soak's last figures stay beside a later suite run. The top-level date,
machine and versions are those of the latest run merged in. ``bench.report`` renders a Suite,
``bench.compare`` compares two.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import bench

FORMAT = 1


@dataclass(slots=True)
class Suite:
    """The results of one or more runs of the benchmarks, with what they ran on."""

    date: str
    machine: dict[str, str]
    versions: dict[str, str]
    argv: list[str] = field(default_factory=list)
    quick: bool = False
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[bench.Result] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        started: datetime.datetime,
        machine: Mapping[str, str],
        versions: Mapping[str, str],
        argv: Sequence[str],
        quick: bool,
    ) -> Self:
        return cls(
            started.isoformat(timespec="seconds"), dict(machine), dict(versions), list(argv), quick
        )

    def add(
        self,
        benchmark: str,
        rows: Sequence[bench.Result],
        seconds: float,
        machine: Mapping[str, str] | None = None,
    ) -> None:
        """Record one benchmark's rows (its run's load average from ``machine``)."""
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.runs[benchmark] = {
            "date": now,
            "seconds": round(seconds, 1),
            "quick": self.quick,
            "argv": self.argv,
            "load average": (machine or {}).get("load average", ""),
            "failed": "",
        }
        self.results = [r for r in self.results if r.benchmark != benchmark]
        self.results.extend(rows)

    def add_failure(self, benchmark: str, error: str, seconds: float) -> None:
        """A benchmark that raised: no rows, the error kept for the report."""
        self.add(benchmark, [], seconds)
        self.runs[benchmark]["failed"] = error.strip().splitlines()[-1] if error.strip() else "?"

    def merge(self, newer: Suite) -> Suite:
        """This file with ``newer``'s benchmarks replaced (rows and runs); ``newer``'s header.

        A benchmark that failed in ``newer`` keeps its earlier rows: a crash should not erase
        the last good figures, and the report says it failed.
        """
        failed = {name for name, run in newer.runs.items() if run.get("failed")}
        replaced = set(newer.runs) - failed
        rows = [r for r in self.results if r.benchmark not in replaced]
        rows += [r for r in newer.results if r.benchmark in replaced]
        order: dict[str, int] = {}
        for name in [*self.runs, *newer.runs]:
            order.setdefault(name, len(order))
        rows.sort(key=lambda r: order.get(r.benchmark, len(order)))
        runs = dict(self.runs)
        for name, run in newer.runs.items():
            runs[name] = {**runs.get(name, {}), **run} if name in failed else dict(run)
        return Suite(
            newer.date,
            dict(newer.machine),
            dict(newer.versions),
            list(newer.argv),
            newer.quick,
            runs,
            rows,
        )

    def by_key(self) -> dict[str, bench.Result]:
        return {r.key: r for r in self.results}

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["results"] = [r.to_json() for r in self.results]
        return {"format": FORMAT, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        if data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"results file format {data.get('format')!r}, expected {FORMAT}")
        results = [bench.Result.from_json(r) for r in data.get("results", [])]
        runs = dict(data.get("runs", {}))
        # Files written before the format had runs: every benchmark measured at the file's date.
        for r in results:
            runs.setdefault(r.benchmark, {"date": data.get("date", ""), "failed": ""})
        return cls(
            str(data.get("date", "")),
            dict(data.get("machine", {})),
            dict(data.get("versions", {})),
            list(data.get("argv", [])),
            bool(data.get("quick", False)),
            runs,
            results,
        )


def load(path: Path) -> Suite:
    with path.open(encoding="utf-8") as source:
        return Suite.from_json(json.load(source))


def save(suite: Suite, path: Path) -> None:
    """Write ``suite`` to ``path`` (through a temporary file: a crash leaves the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    data = suite.to_json()
    rows = data.pop("results")
    # The header indented for a reader; each result on one line (its series can be thousands of
    # numbers), so that a diff of two files shows which figures changed.
    head = json.dumps(data, indent=1, ensure_ascii=False)
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows]
    body = ",\n  ".join(lines)
    with partial.open("w", encoding="utf-8") as out:
        out.write(head[:-1].rstrip() + ',\n "results": [\n  ' + body + "\n ]\n}\n")
    partial.replace(path)
