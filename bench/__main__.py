"""``python -m bench`` (``make bench``): run the benchmarks and print one table of results.

Benchmarks register in ``BENCHMARKS`` below: a name and the module that implements it. A module
provides ``run(args: argparse.Namespace) -> list[bench.Result]`` and may provide
``add_arguments(parser)`` for options of its own (prefix them with the benchmark's name). A
registered module that is not there yet is reported as missing, not an error, so benchmarks can
land one at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from types import ModuleType

import bench
from service.adapters import children

# name -> module; run in this order.
BENCHMARKS: dict[str, str] = {
    "core": "bench.core",
    "allocator": "bench.allocator",
    "sync": "bench.sync",
    "metrics": "bench.metrics",
    "replay": "bench.replay",
    "api": "bench.api",
}


def _available() -> dict[str, ModuleType]:
    modules: dict[str, ModuleType] = {}
    for name, module in BENCHMARKS.items():
        if importlib.util.find_spec(module) is not None:
            modules[name] = importlib.import_module(module)
    return modules


def build_parser(modules: dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable); default: every one that exists",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repetitions: a smoke run"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions of each timed run (median shown)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON")
    for module in modules.values():
        add_arguments = getattr(module, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(parser)
    return parser


def format_value(value: float, unit: str) -> str:
    if unit in {"events/s", "B", "nodes", "addresses"} or abs(value) >= 1000:
        return f"{value:,.0f}"
    if unit == "ratio":
        return f"{value:.3f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def print_table(results: Sequence[bench.Result]) -> None:
    header = ("benchmark", "figure", "value", "unit", "target", "met")
    rows = [
        (
            r.benchmark,
            r.name,
            format_value(r.value, r.unit),
            r.unit,
            r.target,
            "" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {2}
    for row in [header, tuple("-" * w for w in widths), *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        print("  ".join(cells).rstrip())
    details = [r for r in results if r.detail]
    if details:
        print()
        for r in details:
            print(f"{r.benchmark} / {r.name}: {r.detail}")


def main(argv: Sequence[str] | None = None) -> int:
    # A CI timeout's SIGTERM unwinds like Ctrl-C: the benchmarks' servers are stopped on the way.
    children.terminate_as_interrupt()
    modules = _available()
    args = build_parser(modules).parse_args(argv)
    wanted = args.only or list(BENCHMARKS)
    missing = [name for name in wanted if name not in modules]
    for name in missing:
        print(f"bench: {name}: not implemented yet ({BENCHMARKS[name]})", file=sys.stderr)
    info = bench.machine()
    started = datetime.datetime.now(datetime.UTC)
    print(f"ipledger benchmarks, {started:%Y-%m-%d %H:%M} UTC")
    for key, value in info.items():
        print(f"  {key}: {value}")
    print(flush=True)
    results: list[bench.Result] = []
    for name in wanted:
        if name not in modules:
            continue
        began = time.monotonic()
        results.extend(modules[name].run(args))
        print(f"[{name} done in {time.monotonic() - began:.0f} s]", file=sys.stderr)
    print()
    print_table(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(
                {
                    "date": started.isoformat(timespec="seconds"),
                    "machine": info,
                    "argv": sys.argv[1:] if argv is None else list(argv),
                    "results": [dataclasses.asdict(r) for r in results],
                },
                out,
                indent=2,
            )
            out.write("\n")
    # A missed target is a finding to report, not a failure of the command.
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except children.Terminated:
        sys.exit(children.Terminated.exit_code)
