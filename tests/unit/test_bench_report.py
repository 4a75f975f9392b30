"""The benchmark report machinery: results file, regression check, report and plots (bench/).

No benchmark runs here: the Suites are built by hand, so each verdict and each rendered line is
known in advance.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pytest

import bench
from bench import compare, plots, profile, report
from bench import results as results_file

MACHINE = {
    "cpus": "2",
    "cpu model": "Test CPU 9000",
    "memory": "4.0 GiB",
    "platform": "Linux-test",
    "load average": "0.10 0.20 0.30",
}
VERSIONS = {
    "python": "CPython 3.11.7",
    "postgresql": "postgres (PostgreSQL) 18.6",
    "kafka": "Apache Kafka 4.4.0 (KRaft)",
    "kube-apiserver": "Kubernetes v1.36.3",
}


def suite(*rows: bench.Result, quick: bool = False) -> results_file.Suite:
    out = results_file.Suite.start(
        datetime.datetime(2026, 12, 2, 4, 0, tzinfo=datetime.UTC), MACHINE, VERSIONS, [], quick
    )
    for name in dict.fromkeys(r.benchmark for r in rows):
        out.add(name, [r for r in rows if r.benchmark == name], 1.0, MACHINE)
    return out


def rate(samples: list[float], name: str = "rate", **kw: object) -> bench.Result:
    return bench.Result.of_samples("b", name, samples, "events/s", **kw)  # type: ignore[arg-type]


def test_a_result_summarises_its_samples() -> None:
    r = rate([30.0, 10.0, 20.0, 40.0])
    assert (r.value, r.median, r.min, r.max, r.n) == (25.0, 25.0, 10.0, 40.0, 4)
    single = bench.Result("b", "once", 7.0, "ms")
    assert (single.min, single.max, single.n) == (7.0, 7.0, 1)
    with pytest.raises(ValueError, match="no samples"):
        bench.Result.of_samples("b", "none", [], "ms")


def test_direction_from_the_unit_unless_said() -> None:
    assert rate([1.0]).direction == "higher"
    assert bench.Result("b", "t", 1.0, "ms").direction == "lower"
    assert bench.Result("b", "r", 1.0, "ratio").direction == ""
    assert bench.Result("b", "r", 1.0, "ratio", better="higher").direction == "higher"


def test_result_and_series_survive_json() -> None:
    r = rate(
        [1.0, 2.0, 3.0],
        target=">= 1",
        met=True,
        issue="3",
        series=(
            bench.Series.of("p", "line", [1, 2], [3, 4], title="T", x_label="x"),
            bench.Series.of("c", "cdf", [], [5, 1, 3], kind="cdf"),
        ),
    )
    data = json.loads(json.dumps(r.to_json()))
    assert (data["min"], data["max"], data["n"]) == (1.0, 3.0, 3)
    assert bench.Result.from_json(data) == r
    # A file from a newer writer: keys this version does not know are ignored.
    assert bench.Result.from_json({**data, "added_later": 1}) == r


def test_a_series_is_checked() -> None:
    with pytest.raises(ValueError, match="2 x, 1 y"):
        bench.Series.of("p", "l", [1, 2], [3])
    with pytest.raises(ValueError, match="kind"):
        bench.Series("p", "l", kind="pie")
    bench.Series.of("p", "l", [], [1, 2, 3], kind="cdf")  # a CDF has samples only


def test_results_file_round_trip(tmp_path: Path) -> None:
    s = suite(rate([1.0, 2.0], series=(bench.Series.of("p", "l", [1], [2]),)))
    path = tmp_path / "r.json"
    results_file.save(s, path)
    json.loads(path.read_text())  # valid JSON, one result per line
    assert results_file.load(path) == s
    results_file.save(suite(), path)  # no results at all is a valid file too
    assert results_file.load(path).results == []


def test_merge_replaces_the_benchmarks_that_ran_and_keeps_the_others() -> None:
    old = suite(
        bench.Result("a", "x", 1.0, "ms"),
        bench.Result("soak", "cycles", 1000.0, "cycles"),
        bench.Result("c", "z", 3.0, "ms"),
    )
    new = suite(bench.Result("a", "x", 2.0, "ms"), bench.Result("a", "y", 5.0, "ms"))
    new.add_failure("c", "Traceback ...\nRuntimeError: broker gone", 2.0)
    merged = old.merge(new)
    assert [(r.benchmark, r.name, r.value) for r in merged.results] == [
        ("a", "x", 2.0),
        ("a", "y", 5.0),
        ("soak", "cycles", 1000.0),
        ("c", "z", 3.0),  # a failed run keeps the last good rows
    ]
    assert merged.runs["c"]["failed"] == "RuntimeError: broker gone"
    assert not merged.runs["a"]["failed"]


def test_judge_flags_a_drop_beyond_the_spread() -> None:
    old = rate([100.0, 104.0, 98.0])
    assert compare.judge(old, rate([80.0, 82.0, 79.0])).verdict == "regressed"
    assert compare.judge(old, rate([120.0, 125.0, 119.0])).verdict == "improved"
    # Within the tolerance: noise.
    assert compare.judge(old, rate([95.0, 96.0, 94.0])).verdict == "same"


def test_judge_counts_a_wide_spread_as_noise() -> None:
    # Medians 30 % apart, but the old runs went from 50 to 150: the band is 100 %.
    old = rate([50.0, 100.0, 150.0])
    change = compare.judge(old, rate([65.0, 70.0, 75.0]))
    assert change.verdict == "same"
    assert change.noise == pytest.approx(1.0)


def test_judge_needs_the_ranges_apart() -> None:
    # Medians 20 % apart beyond a 10 % band, yet the best new run beats the worst old one.
    old = rate([70.0, 100.0, 100.0, 100.0, 100.0])
    new = rate([80.0, 80.0, 80.0, 80.0, 75.0, 101.0])
    assert compare.spread(old) > 0.2  # sanity: the rule under test is the overlap one
    assert compare.judge(old, new, tolerance=0.1).verdict == "same"
    tight_old = rate([100.0, 101.0])
    assert compare.judge(tight_old, rate([80.0, 80.5])).verdict == "regressed"
    assert compare.judge(tight_old, rate([80.0, 101.0])).verdict == "same"


def test_judge_times_are_better_lower_and_ratios_only_change() -> None:
    old = bench.Result("b", "p99", 10.0, "ms")
    assert compare.judge(old, bench.Result("b", "p99", 12.0, "ms")).verdict == "regressed"
    assert compare.judge(old, bench.Result("b", "p99", 8.0, "ms")).verdict == "improved"
    assert compare.judge(old, bench.Result("b", "p99", 10.5, "ms")).verdict == "same"
    ratio = bench.Result("b", "r", 1.0, "ratio")
    assert compare.judge(ratio, bench.Result("b", "r", 1.5, "ratio")).verdict == "changed"
    cost = bench.Result("b", "r", 1.0, "ratio", better="lower")
    assert compare.judge(cost, bench.Result("b", "r", 1.5, "ratio")).verdict == "regressed"


def test_compare_files_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = suite(
        rate([100.0, 101.0], "kept", target=">= 90", met=True),
        rate([100.0, 101.0], "dropped", target=">= 95", met=True),
        bench.Result("b", "gone", 1.0, "ms"),
    )
    new = suite(
        rate([100.0, 100.5], "kept", target=">= 90", met=True),
        rate([80.0, 81.0], "dropped", target=">= 95", met=False),
        bench.Result("b", "added", 1.0, "ms"),
        quick=True,
    )
    result = compare.compare(old, new)
    assert [c.key for c in result.regressions] == ["b / dropped"]
    assert result.only_old == ["b / gone"] and result.only_new == ["b / added"]
    assert result.goals_lost == ["b / dropped: goal >= 95 met before, missed now"]
    assert any("--quick" in w for w in result.warnings)

    results_file.save(old, tmp_path / "old.json")
    results_file.save(new, tmp_path / "new.json")
    assert compare.main([str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    printed = capsys.readouterr().out
    assert "regressed  b / dropped (events/s)" in printed
    assert "1 regressed, 0 improved, 0 changed, 1 within noise; 1 new, 1 gone" in printed
    assert compare.main([str(tmp_path / "old.json"), str(tmp_path / "old.json")]) == 0
    assert compare.main([str(tmp_path / "old.json"), str(tmp_path / "missing.json")]) == 2


def test_goal_lost_inside_the_noise_fails_only_with_goals(tmp_path: Path) -> None:
    old = suite(rate([100.0, 101.0], "r", target=">= 100", met=True))
    new = suite(rate([99.0, 99.5], "r", target=">= 100", met=False))
    results_file.save(old, tmp_path / "old.json")
    results_file.save(new, tmp_path / "new.json")
    paths = [str(tmp_path / "old.json"), str(tmp_path / "new.json")]
    assert compare.main(paths) == 0
    assert compare.main([*paths, "--goals"]) == 1


def test_render_shows_machine_versions_goals_and_spread() -> None:
    s = suite(
        rate([30_000.0, 31_000.0, 32_500.0], "throughput", target=">= 30,000", met=True, issue="3"),
        bench.Result("b", "p99 | worst", 60.0, "ms", "<= 50", False, detail="5,000 events"),
        bench.Result("b", "restart", 1.5, "s", "<= 60 (7.2 M addresses)", None),
        bench.Result("b", "context", 4.0, "ms"),
    )
    text = report.render(s, {})
    assert "| cores | 2 |" in text
    assert "| CPU model | Test CPU 9000 |" in text
    assert "| memory | 4.0 GiB |" in text
    assert "| PostgreSQL | postgres (PostgreSQL) 18.6 |" in text
    assert "| Kubernetes API server | Kubernetes v1.36.3 |" in text
    assert "| etcd | unknown |" in text
    assert "1 met, 1 missed, 1 not judged at these sizes (of 3 figures with a goal)." in text
    assert (
        "| b | throughput | #3 | >= 30,000 | 31,000 | 30,000 | 32,500 | 3 | events/s | met |"
        in text
    )
    assert "| b | p99 \\| worst |  | <= 50 | 60.0 |  |  | 1 | ms | **missed** |" in text
    assert "| restart | 1.5 |  |  | 1 | s | <= 60 (7.2 M addresses) | not judged |" in text
    assert "- p99 | worst: 5,000 events" in text
    assert "Measured 2026-12-02" in text


def test_each_benchmark_names_the_commit_it_ran_from() -> None:
    s = suite(rate([1.0]))
    s.runs["b"]["commit"] = "0123456789 + uncommitted changes"
    assert "commit 0123456789 + uncommitted changes" in report.render(s, {})


def test_the_machine_says_whether_nice_reaches_other_sessions() -> None:
    try:
        flag = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        flag = None
    said = bench.machine()["scheduler autogroup"]
    if flag is None:
        assert said == "unknown"
    elif flag == "0":
        assert said == "off"
    else:
        assert said.startswith("on")


def test_the_source_is_this_checkouts_head() -> None:
    root = Path(bench.__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    expected = head.stdout.strip() if head.returncode == 0 else "unknown"
    assert bench.source().split(" + ")[0] == expected


def test_render_links_plots_and_names_the_undrawn() -> None:
    series = (bench.Series.of("tput", "run", [0, 1], [5, 6], title="Throughput over time"),)
    other = (bench.Series.of("cdf", "5k/s", [], [1, 2], kind="cdf", title="Latency CDF"),)
    s = suite(rate([1.0], series=series), rate([1.0], "other", series=other))
    text = report.render(s, {"tput": "img/tput.png"})
    assert "![Throughput over time](img/tput.png)" in text
    assert "- Latency CDF: not drawn (run with `--plots`)" in text


def test_render_says_a_quick_run_and_a_failure() -> None:
    s = suite(bench.Result("b", "x", 1.0, "ms"), quick=True)
    s.add_failure("sync", "Traceback\nTimeoutError: apiserver", 3.0)
    text = report.render(s, {})
    assert "A --quick run" in text
    assert "**The last run failed**: `TimeoutError: apiserver`." in text


def test_splice_keeps_what_lies_outside_the_markers() -> None:
    current = (
        f"# Title\n\nintro\n\n{report.BEGIN}\n\nold figures\n\n{report.END}\n\n## Notes\nkept\n"
    )
    spliced = report.splice(current, "new figures")
    assert (
        spliced
        == f"# Title\n\nintro\n\n{report.BEGIN}\n\nnew figures\n\n{report.END}\n\n## Notes\nkept\n"
    )
    assert report.splice(spliced, "new figures") == spliced
    # No markers yet: the title stays on top, the rest follows the generated part.
    assert report.splice("# Title\n\nnotes\n", "gen") == (
        f"# Title\n\n{report.BEGIN}\n\ngen\n\n{report.END}\n\nnotes\n"
    )


def test_rewrite_is_stable(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# B\n\n{report.BEGIN}\n{report.END}\n\nhand-written\n")
    s = suite(rate([1.0, 2.0]))
    report.rewrite(page, s, {})
    once = page.read_text()
    report.rewrite(page, s, {})
    assert page.read_text() == once
    assert once.endswith(f"{report.END}\n\nhand-written\n")


def test_plots_draw_png(tmp_path: Path) -> None:
    s = suite(
        rate([1.0], series=(bench.Series.of("tput", "run", [0, 1, 2], [5, 6, 4]),)),
        rate(
            [1.0],
            "lat",
            series=(
                bench.Series.of("cdf", "1k/s", [], [3, 1, 2], kind="cdf", log_x=True),
                bench.Series.of("cdf", "5k/s", [], [6, 4, 5], kind="cdf"),
            ),
        ),
    )
    drawn = plots.draw_all(s, tmp_path / "img")
    assert sorted(drawn) == ["cdf", "tput"]
    for path in drawn.values():
        assert path.read_bytes().startswith(b"\x89PNG")
    assert plots.cdf_points([3.0, 1.0, 2.0]) == ([1.0, 2.0, 3.0], [1 / 3, 2 / 3, 1.0])


def test_profile_folds_raw_stacks_by_innermost_frame() -> None:
    raw = "\n".join(
        [
            "<module> (x.py:1);run (service/allocator.py:10);apply (service/domain/state.py:5) 30",
            "<module> (x.py:1);run (service/allocator.py:10);execute (asyncpg/conn.py:3) 10",
            "<module> (x.py:1);select (selectors.py:400) 60",
            "not a stack line",
        ]
    )
    buckets, functions, total = profile.fold(raw)
    assert total == 100
    assert buckets == {
        "allocation core (service/domain)": 30,
        "asyncpg (PostgreSQL driver)": 10,
        "event loop (asyncio, anyio, selectors)": 60,
    }
    assert functions["apply (service/domain/state.py:5)"] == 30
    rows = profile.where_the_time_goes("allocator", raw, Path("p.svg"), 50.0, "ctx")
    assert rows[0].name == "allocator: samples" and "[p.svg](img/p.svg)" in rows[0].detail
    assert [(r.name, r.value) for r in rows[1:]] == [
        ("allocator: event loop (asyncio, anyio, selectors)", 30.0),
        ("allocator: allocation core (service/domain)", 15.0),
        ("allocator: asyncpg (PostgreSQL driver)", 5.0),
    ]
