"""``make bench-quick`` stays a smoke run of a few minutes (issue 14).

Every registered benchmark has a --quick mode: its module declares the sizes that mode runs at
(``QUICK``, a mapping or a dataclass of sizes; ``QUICK_REPEAT``; ``WORST_QUICK`` and the like),
and ``bench.__main__`` gives it a time budget. Nothing is run here: what is checked is that a new
benchmark cannot be registered without them, and that no quick size grows past the bound a smoke
run allows (a benchmark whose quick run takes minutes does so through one of these numbers).
Also what keeps a quick run short and readable: one server shared by its benchmarks
(``bench.sharing``), a run over its budget named, its CPU time beside its wall time.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import inspect
from collections.abc import Mapping
from types import ModuleType

import pytest

import bench
from bench import __main__ as runner
from bench import report
from bench import results as results_file

# Bounds of a smoke run's sizes, by what the size counts (the name's ending says).
MAX_COUNT = 50_000  # events, records, nodes, rows, lookups per run
MAX_REPEAT = 3  # timed repetitions
MAX_MS = 5_000  # milliseconds of offered load or profiling per run


def quick_sizes(module: ModuleType) -> dict[str, float]:
    """Every quick size the module declares, as ``ATTRIBUTE.field`` -> number."""
    out: dict[str, float] = {}
    for attribute, value in vars(module).items():
        if not (attribute == "QUICK" or "_QUICK" in attribute or attribute.startswith("QUICK_")):
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[attribute] = value
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields: Mapping[str, object] = dataclasses.asdict(value)
        elif isinstance(value, Mapping):
            fields = value
        else:
            continue
        for key, size in fields.items():
            # Non-numbers (a pool's CIDR text) are sizes too, but not ones a bound applies to.
            if isinstance(size, int | float) and not isinstance(size, bool):
                out[f"{attribute}.{key}"] = size
    return out


def bound(name: str) -> float:
    # QUICK_REPEAT (QUICK.repeat in core's Sizes) repeats a whole timed run; core's
    # WORST_QUICK.repeat counts single decisions timed, a count like the others.
    if name in {"QUICK_REPEAT", "QUICK.repeat"}:
        return MAX_REPEAT
    if name.endswith("_ms"):
        return MAX_MS
    return MAX_COUNT


@pytest.mark.parametrize("name", sorted(runner.BENCHMARKS))
def test_every_benchmark_declares_small_quick_sizes(name: str) -> None:
    module = importlib.import_module(runner.BENCHMARKS[name])
    sizes = quick_sizes(module)
    assert sizes, f"{name}: no QUICK sizes in {module.__name__} (what does --quick run?)"
    too_big = {k: v for k, v in sizes.items() if not 0 < v <= bound(k)}
    assert not too_big, f"{name}: quick sizes out of (0, bound]: {too_big}"
    # Declared and used: the module's code reads --quick (its own or through a worker's flag).
    assert "quick" in inspect.getsource(module).replace("QUICK", ""), name


def test_every_benchmark_has_a_quick_budget_and_the_suite_fits_in_a_few_minutes() -> None:
    assert set(runner.QUICK_BUDGET_S) == set(runner.BENCHMARKS)
    assert all(seconds > 0 for seconds in runner.QUICK_BUDGET_S.values())
    suite = sum(s for n, s in runner.QUICK_BUDGET_S.items() if n not in runner.LONG)
    assert suite <= runner.QUICK_TOTAL_S <= 300


def test_quick_sizes_reads_every_form_and_the_bound_catches_a_grown_size() -> None:
    @dataclasses.dataclass(frozen=True)
    class Sizes:
        events: int
        pool: str

    module = ModuleType("fake_bench")
    module.QUICK = {"events": 10_000, "latency_ms": 9_000}  # type: ignore[attr-defined]
    module.QUICK_REPEAT = 1  # type: ignore[attr-defined]
    module.WORST_QUICK = Sizes(events=60_000, pool="10.0.0.0/14")  # type: ignore[attr-defined]
    module.FULL = {"events": 10**6}  # type: ignore[attr-defined]
    sizes = quick_sizes(module)
    assert sizes == {
        "QUICK.events": 10_000,
        "QUICK.latency_ms": 9_000,
        "QUICK_REPEAT": 1,
        "WORST_QUICK.events": 60_000,
    }
    assert {k for k, v in sizes.items() if v > bound(k)} == {
        "QUICK.latency_ms",
        "WORST_QUICK.events",
    }


def test_a_quick_run_over_its_budget_is_named() -> None:
    budget = runner.QUICK_BUDGET_S["core"]
    assert runner.over_budget("core", budget) == ""
    assert runner.over_budget("core", budget + 1) == (
        f"core: --quick took {budget + 1:.0f} s, over its budget of {budget:.0f} s"
    )
    assert runner.over_budget("not registered", 10**6) == ""


def test_the_report_shows_a_runs_cpu_time_beside_its_wall_time() -> None:
    """What a busy shared machine disturbs least is printed next to what it disturbs most."""
    suite = results_file.Suite.start(
        datetime.datetime(2026, 12, 2, 7, 0, tzinfo=datetime.UTC), {}, {}, ["--quick"], True
    )
    suite.add("core", [bench.Result("core", "x", 1.0, "s")], 61.0)
    suite.runs["core"]["cpu seconds"] = 19.6
    suite.add("sync", [bench.Result("sync", "y", 1.0, "s")], 30.0)
    text = report.render(suite)
    assert "61 s, 20 s of CPU, **--quick**" in text
    assert "30 s, **--quick**" in text


_LOG: list[str] = []


class _Server:
    """A stand-in server: its starts and stops go to _LOG."""

    def __enter__(self) -> _Server:
        _LOG.append("start")
        return self

    def __exit__(self, *exc: object) -> None:
        _LOG.append("stop")


def test_a_quick_run_shares_one_server_a_full_run_starts_its_own() -> None:
    _LOG.clear()
    with bench.sharing():
        with bench.servers(_Server, share=True) as first:
            pass
        with bench.servers(_Server, share=True) as second:
            assert _LOG == ["start"]
        with bench.servers(_Server, share=False) as own:
            assert own is not first
        assert second is first
        assert _LOG == ["start", "start", "stop"]
    assert _LOG == ["start", "start", "stop", "stop"]
    _LOG.clear()
    with bench.servers(_Server, share=True):
        pass
    assert _LOG == ["start", "stop"]  # outside a sharing run: started and stopped
