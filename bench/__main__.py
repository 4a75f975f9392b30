"""``python -m bench`` (``make bench``): run the benchmarks, print one table, write the report.

Benchmarks register in ``BENCHMARKS`` below: a name and the module that implements it. A module
provides ``run(args: argparse.Namespace) -> list[bench.Result]`` and may provide
``add_arguments(parser)`` for options of its own (prefix them with the benchmark's name). A
registered module that is not there yet is reported as missing, not an error, so benchmarks can
land one at a time. Those in ``LONG`` (the soak) run only when named with ``--only`` or with
``--long``; their last results stay in the results file until they run again.

Three forms:

- ``python -m bench [--only NAME ...] [--quick] [--json PATH] [--report MD] [--plots DIR]``
  runs benchmarks. With ``--json`` the results are merged into PATH: the rows of the benchmarks
  that ran replace their earlier rows, the others are kept with the date they were measured
  (``--fresh`` starts the file anew). ``--report`` then rewrites the generated part of MD from
  the whole file (``bench.report``) and ``--plots`` draws its plots (``bench.plots``).
- ``python -m bench report RESULTS.json [--report MD] [--plots DIR]``: the same rendering from
  a results file, without running anything.
- ``python -m bench compare OLD.json NEW.json``: regressions beyond noise (``bench.compare``);
  exit status 1 when there is one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import os
import resource
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import bench
from bench import report
from bench import results as results_file
from service.adapters import children

# name -> module; run in this order.
BENCHMARKS: dict[str, str] = {
    "core": "bench.core",
    "allocator": "bench.allocator",
    "sync": "bench.sync",
    "metrics": "bench.metrics",
    "replay": "bench.replay",
    "api": "bench.api",
    "scale": "bench.scale",
    "scaleout": "bench.scaleout",
    "dashboard": "bench.dashboard",
    "profile": "bench.profile",
    "soak": "bench.soak",
}

# Too long for every ``make bench``: run when asked for (``--only soak``, ``--long``).
LONG = frozenset({"soak"})

# What each benchmark's --quick run may take on a quiet two-core machine, seconds from its start
# to its rows, its own servers' start-up included (the first build of the services is ``make
# services``'s). A quick run over its budget says so (a smoke run that grew is a finding), and
# tests/unit/test_bench_quick.py holds the suite's sum to QUICK_TOTAL_S: a new benchmark needs
# a budget, and a larger one leaves less to the others.
QUICK_BUDGET_S: dict[str, float] = {
    "core": 15,
    # The first to need Kafka and PostgreSQL: their start-up is in its time (bench.sharing).
    "allocator": 45,
    "sync": 30,
    "metrics": 5,
    "replay": 20,
    "api": 45,
    "scale": 40,
    "scaleout": 25,
    "dashboard": 20,
    "profile": 20,
    "soak": 120,
}
QUICK_TOTAL_S = 300.0  # make bench-quick, the long ones left out: "a smoke run of a few minutes"


def cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants, ended or running.

    Ended ones count once reaped (``RUSAGE_CHILDREN``, which holds what they reaped in turn);
    running ones (a server shared by the benchmarks of a --quick run, its backends) are read
    from /proc with what they reaped. Beside a benchmark's wall time: on a busy shared machine
    the wall time measures the neighbours as much as the benchmark, its CPU time much less.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime
    times = bench.process_times()
    children: dict[int, list[int]] = {}
    for pid, process in times.items():
        children.setdefault(process.parent, []).append(pid)
    waiting = list(children.get(os.getpid(), []))
    while waiting:
        pid = waiting.pop()
        total += times[pid].own + times[pid].reaped
        waiting += children.get(pid, [])
    return total


def over_budget(name: str, seconds: float) -> str:
    """What to say of a --quick run of ``name`` that took ``seconds``: "" within its budget."""
    budget = QUICK_BUDGET_S.get(name)
    if budget is None or seconds <= budget:
        return ""
    return f"{name}: --quick took {seconds:.0f} s, over its budget of {budget:.0f} s"


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
        help="run only this benchmark (repeatable); default: every one that exists but the long",
    )
    parser.add_argument("--long", action="store_true", help="also run the long ones (the soak)")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repetitions: a smoke run"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions of each timed run (median shown)"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="merge the results into PATH (JSON, see bench.results)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="with --json: replace PATH instead of merging"
    )
    parser.add_argument(
        "--report", metavar="MD", help="rewrite the generated part of MD (needs --json)"
    )
    parser.add_argument("--plots", metavar="DIR", help="draw the plots as PNG into DIR")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="when a benchmark fails, report it and run the others (exit status 1 at the end)",
    )
    for module in modules.values():
        add_arguments = getattr(module, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(parser)
    return parser


def print_table(results: Sequence[bench.Result]) -> None:
    header = ("benchmark", "figure", "value", "min", "max", "n", "unit", "target", "met")
    rows = [
        (
            r.benchmark,
            r.name,
            report.format_value(r.value, r.unit),
            report.format_value(r.min, r.unit) if r.samples else "",
            report.format_value(r.max, r.unit) if r.samples else "",
            str(r.n),
            r.unit,
            r.target,
            "" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4, 5}
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


def render(suite: results_file.Suite, report_path: str | None, plots: str | None) -> None:
    """Draw the plots (first: the report links the ones that exist) and rewrite the report."""
    drawn: dict[str, Path] = {}
    if plots:
        # Imported here: matplotlib is an optional dependency (the bench extra), slow to load.
        from bench import plots as plots_module  # noqa: PLC0415

        drawn = plots_module.draw_all(suite, Path(plots))
        for path in drawn.values():
            print(f"bench: plot {path}", file=sys.stderr)
    if report_path:
        report.rewrite(Path(report_path), suite, drawn)
        print(f"bench: report {report_path}", file=sys.stderr)


def save(suite: results_file.Suite, path: Path, *, fresh: bool) -> results_file.Suite:
    """Merge ``suite`` (all of this run so far) into the file at ``path``; ``fresh``: replace it.

    The file is read again at every save, so that another run of other benchmarks that saved
    in the meantime keeps its rows.
    """
    merged = suite if fresh or not path.exists() else results_file.load(path).merge(suite)
    results_file.save(merged, path)
    return merged


def run_each(
    args: argparse.Namespace,
    modules: dict[str, ModuleType],
    wanted: Sequence[str],
    suite: results_file.Suite,
    failed: list[str],
) -> None:
    """Run the ``wanted`` benchmarks in order into ``suite``; the names of those that raised
    go to ``failed`` (with --keep-going; without, the exception propagates)."""
    commit = bench.source()  # what ran: the tree as it was when the suite started
    for name in wanted:
        if name not in modules:
            continue
        began, cpu = time.monotonic(), cpu_seconds()
        try:
            rows = modules[name].run(args)
        except Exception:
            if not args.keep_going:
                raise
            traceback.print_exc()
            failed.append(name)
            suite.add_failure(name, traceback.format_exc(limit=3), time.monotonic() - began)
            continue
        took, used = time.monotonic() - began, cpu_seconds() - cpu
        suite.add(name, rows, took, bench.machine())
        suite.runs[name]["cpu seconds"] = round(used, 1)
        suite.runs[name]["commit"] = commit
        print(f"[{name} done in {took:.0f} s, {used:.0f} s of CPU]", file=sys.stderr)
        if args.quick and (over := over_budget(name, took)):
            load = bench.machine()["load average"]
            print(f"bench: {over} (load average {load})", file=sys.stderr)
        if args.json:
            # Saved after each benchmark: a run stopped in its second hour keeps its first.
            save(suite, Path(args.json), fresh=args.fresh)


def run_benchmarks(argv: Sequence[str] | None) -> int:
    modules = _available()
    args = build_parser(modules).parse_args(argv)
    if args.report and not args.json:
        print("bench: --report needs --json (it is rendered from that file)", file=sys.stderr)
        return 2
    wanted = args.only or [n for n in BENCHMARKS if args.long or n not in LONG]
    missing = [name for name in wanted if name not in modules]
    for name in missing:
        print(f"bench: {name}: not implemented yet ({BENCHMARKS[name]})", file=sys.stderr)
    info = bench.machine()
    versions = bench.versions()
    started = datetime.datetime.now(datetime.UTC)
    print(f"ipledger benchmarks, {started:%Y-%m-%d %H:%M} UTC{' (quick)' if args.quick else ''}")
    for key, value in {**info, **versions}.items():
        print(f"  {key}: {value}")
    print(flush=True)
    suite = results_file.Suite.start(
        started, info, versions, list(sys.argv[1:] if argv is None else argv), bool(args.quick)
    )
    failed: list[str] = []
    with bench.sharing() if args.quick else contextlib.nullcontext():
        run_each(args, modules, wanted, suite, failed)
    print()
    print_table(suite.results)
    if args.json:
        path = Path(args.json)
        merged = save(suite, path, fresh=args.fresh)
        print(f"bench: results {path}", file=sys.stderr)
        render(merged, args.report, args.plots)
    elif args.plots:
        render(suite, None, args.plots)
    # A missed target is a finding to report, not a failure of the command; a crash is.
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def report_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench report", description="render the report from a results file"
    )
    parser.add_argument("results", help="a results file written by python -m bench --json")
    parser.add_argument("--report", metavar="MD", default="docs/benchmarks.md")
    parser.add_argument("--plots", metavar="DIR", default=None)
    args = parser.parse_args(argv)
    render(results_file.load(Path(args.results)), args.report, args.plots)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # A CI timeout's SIGTERM unwinds like Ctrl-C: the benchmarks' servers are stopped on the way.
    children.terminate_as_interrupt()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["compare"]:
        from bench import compare  # noqa: PLC0415 - only this form needs it

        return compare.main(arguments[1:])
    if arguments[:1] == ["report"]:
        return report_command(arguments[1:])
    return run_benchmarks(argv)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except children.Terminated:
        sys.exit(children.Terminated.exit_code)
