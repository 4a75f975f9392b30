"""``python -m bench compare OLD.json NEW.json``: which figures got worse beyond noise.

Figures are matched by benchmark and name (``Result.key``). For each pair the noise band is the
larger of

- the relative spread of each side's samples, ``(max - min) / median`` (a figure measured once
  has no spread of its own), and
- ``--tolerance`` (default 0.10): the run-to-run variation a figure measured once, or a few
  times on a busy shared machine, shows anyway.

A figure **regressed** when it moved the wrong way (``Result.direction``: rates are better
higher, times and sizes lower, others as their benchmark says) by more than that band *and* the
two sides' ranges do not overlap: the best new sample is worse than the worst old one. It
**improved** under the same rule the other way; a figure without a direction that moved beyond
the band is reported as **changed**. Goals met before and missed now are listed too, as a
warning (the goal line can sit inside the noise band); ``--goals`` makes them count as
regressions. The exit status is 1 when anything regressed, 0 otherwise, 2 for bad input.

Comparing a ``--quick`` file with a full one compares different sizes; the command says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bench
from bench import results as results_file

DEFAULT_TOLERANCE = 0.10


@dataclass(frozen=True, slots=True)
class Change:
    """One figure in both files, and what happened to it."""

    key: str
    unit: str
    old: bench.Result
    new: bench.Result
    change: float  # relative, (new - old) / |old| of the medians
    noise: float  # the band the change is held against
    verdict: str  # "regressed", "improved", "changed", "same"


@dataclass(slots=True)
class Comparison:
    changes: list[Change] = field(default_factory=list)
    only_old: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    goals_lost: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regressed"]


def spread(result: bench.Result) -> float:
    """``(max - min) / |median|`` of the samples; 0 for a single measurement."""
    if result.n < 2 or result.median == 0:
        return 0.0
    return (result.max - result.min) / abs(result.median)


def judge(old: bench.Result, new: bench.Result, tolerance: float = DEFAULT_TOLERANCE) -> Change:
    """The verdict on one figure (see the module docstring for the rule)."""
    noise = max(spread(old), spread(new), tolerance)
    base = abs(old.median)
    if base == 0:
        change = 0.0 if new.median == 0 else float("inf") * (1 if new.median > 0 else -1)
    else:
        change = (new.median - old.median) / base
    direction = new.direction or old.direction
    verdict = "same"
    if abs(change) > noise:
        if direction == "higher":
            worse, apart = change < 0, (new.max < old.min if change < 0 else new.min > old.max)
        elif direction == "lower":
            worse, apart = change > 0, (new.min > old.max if change > 0 else new.max < old.min)
        else:
            worse, apart = False, True
        if not apart:
            verdict = "same"
        elif not direction:
            verdict = "changed"
        else:
            verdict = "regressed" if worse else "improved"
    return Change(old.key, new.unit, old, new, change, noise, verdict)


def compare(
    old: results_file.Suite, new: results_file.Suite, tolerance: float = DEFAULT_TOLERANCE
) -> Comparison:
    out = Comparison()
    if old.quick != new.quick:
        out.warnings.append(
            "one file is a --quick run and the other is not: the sizes differ, so do the figures"
        )
    olds, news = old.by_key(), new.by_key()
    out.only_old = [k for k in olds if k not in news]
    out.only_new = [k for k in news if k not in olds]
    for key, now in news.items():
        before = olds.get(key)
        if before is None:
            continue
        if before.unit != now.unit:
            out.warnings.append(f"{key}: unit {before.unit!r} then {now.unit!r}, not compared")
            continue
        out.changes.append(judge(before, now, tolerance))
        if before.met is True and now.met is False:
            out.goals_lost.append(f"{key}: goal {now.target} met before, missed now")
    return out


def _cell(result: bench.Result) -> str:
    text = f"{result.median:,.4g}"
    if result.n > 1:
        text += f" [{result.min:,.4g}..{result.max:,.4g}] n={result.n}"
    return text


def render(comparison: Comparison, show_all: bool = False) -> str:
    lines: list[str] = []
    lines += [f"warning: {w}" for w in comparison.warnings]
    shown = [c for c in comparison.changes if show_all or c.verdict != "same"]
    if shown:
        header = ("verdict", "figure", "old", "new", "change", "noise")
        rows = [
            (
                c.verdict,
                f"{c.key} ({c.unit})",
                _cell(c.old),
                _cell(c.new),
                f"{c.change:+.1%}",
                f"±{c.noise:.0%}",
            )
            for c in shown
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    same = sum(1 for c in comparison.changes if c.verdict == "same")
    lines.append(
        f"{len(comparison.regressions)} regressed, "
        f"{sum(1 for c in comparison.changes if c.verdict == 'improved')} improved, "
        f"{sum(1 for c in comparison.changes if c.verdict == 'changed')} changed, "
        f"{same} within noise; {len(comparison.only_new)} new, "
        f"{len(comparison.only_old)} gone"
    )
    lines += [f"new: {k}" for k in comparison.only_new]
    lines += [f"gone: {k}" for k in comparison.only_old]
    lines += [f"goal lost: {g}" for g in comparison.goals_lost]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"least relative change counted beside the samples' spread ({DEFAULT_TOLERANCE})",
    )
    parser.add_argument("--goals", action="store_true", help="a goal lost counts as a regression")
    parser.add_argument("--all", action="store_true", help="list the figures within noise too")
    args = parser.parse_args(argv)
    try:
        old, new = results_file.load(args.old), results_file.load(args.new)
    except (OSError, ValueError) as exc:
        print(f"bench compare: {exc}", file=sys.stderr)
        return 2
    comparison = compare(old, new, args.tolerance)
    print(render(comparison, args.all))
    if comparison.regressions or (args.goals and comparison.goals_lost):
        return 1
    return 0
