"""The report's plots: PNG files drawn with matplotlib from the series the results carry.

A benchmark hands data over as ``bench.Series`` on its results; every series with the same
``plot`` name becomes one line (or distribution) in ``<dir>/<plot>.png``. Nothing here knows
about particular benchmarks: what a plot shows is said by its series (title, axis labels, kind,
log axes), so a new benchmark gets its plot by returning series, without an edit here.

matplotlib is an optional dependency (``pip install -e '.[bench]'``); it is imported only when a
plot is drawn, with the non-interactive Agg backend. The drawing is deterministic for the same
data (no timestamps in the PNG metadata), so rerunning the report does not churn the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import bench
from bench import results as results_file


def series_by_plot(suite: results_file.Suite) -> dict[str, list[bench.Series]]:
    out: dict[str, list[bench.Series]] = {}
    for result in suite.results:
        for series in result.series:
            out.setdefault(series.plot, []).append(series)
    return out


def cdf_points(samples: Sequence[float]) -> tuple[list[float], list[float]]:
    """The empirical distribution of ``samples``: sorted values and the fraction at or below."""
    values = sorted(samples)
    count = len(values)
    return values, [(i + 1) / count for i in range(count)]


def draw(name: str, series: Sequence[bench.Series], path: Path) -> None:
    """Draw the series of one plot into ``path`` (PNG)."""
    # Imported here: an optional dependency, and slow to load for the commands that draw nothing.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    first = series[0]
    figure, axes = pyplot.subplots(figsize=(7.5, 4.2), dpi=110)
    try:
        for s in series:
            if s.kind == "cdf":
                xs, ys = cdf_points(s.y)
                axes.step(xs, ys, where="post", label=s.label)
            elif s.kind == "scatter":
                axes.plot(s.x, s.y, marker="o", linestyle="", label=s.label)
            else:
                marker = "o" if len(s.x) <= 30 else None
                axes.plot(s.x, s.y, marker=marker, label=s.label)
        axes.set_title(first.title or name)
        axes.set_xlabel(first.x_label)
        axes.set_ylabel(first.y_label or ("fraction of events" if first.kind == "cdf" else ""))
        if first.log_x:
            axes.set_xscale("log")
        if first.log_y:
            axes.set_yscale("log")
        if first.kind == "cdf":
            axes.set_ylim(0, 1.02)
        axes.grid(True, alpha=0.3)
        if len(series) > 1 or series[0].label:
            axes.legend(fontsize="small")
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png", metadata={"Software": None})
    finally:
        pyplot.close(figure)


def draw_all(suite: results_file.Suite, directory: Path) -> dict[str, Path]:
    """Every plot the suite's series make, drawn into ``directory``; plot name -> file."""
    drawn: dict[str, Path] = {}
    for name, series in series_by_plot(suite).items():
        path = directory / f"{name}.png"
        draw(name, series, path)
        drawn[name] = path
    return drawn
