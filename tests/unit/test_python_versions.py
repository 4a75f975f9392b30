"""Same log, same bytes: ``ipledger simulate`` prints the same on CPython 3.11, 3.12 and 3.13.

The digest and every decision are the contract's output, and an allocator upgraded to a newer
Python must replay its own log to the same digest. Python's ``ipaddress`` has changed its text
between versions (IPv4-mapped IPv6 is ``::ffff:a00:0`` on 3.11 and ``::ffff:10.0.0.0`` on 3.13),
and recursion limits and error messages move too. So a rich stream (dual-stack pools, nodes
waiting for a full pool, adoption, deletions, pod addresses released by IPv6 addresses in every
spelling the core accepts, and rejected records of every kind) goes through ``simulate`` under
each interpreter found, and its document and ``--decisions`` output must equal the venv's byte
for byte.

The other interpreters get a small venv each under ``$IPLEDGER_CACHE/pyenvs/<version>`` with
only the core's dependencies (msgspec and sortedcontainers, the venv's versions), made once and
reused, and run the real ``ipledger simulate``
(``python -m service.cli``) from the work tree: ``service.cli`` imports the service stack
(anyio, SQLAlchemy, aiokafka, ...) only inside the commands that need it, and a first test checks
that ``simulate`` and ``schema`` load nothing beyond those and the standard library. Under
``CI=true`` a missing interpreter fails the test instead of skipping it.
"""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.domain import allocation, events, state

ROOT = Path(__file__).resolve().parents[2]
# What the pure core needs installed; simulate and schema need nothing else.
CORE_DEPENDENCIES = ("msgspec", "sortedcontainers")
MINORS = ("3.11", "3.12", "3.13")
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Runs `simulate` (both outputs) and `schema` through service.cli, then names on stderr every
# top-level package they loaded that is not the standard library's. msgspec is loaded first, with
# what it takes when installed (typing_extensions here; the other venvs lack it, and it is fine).
IMPORTS_PROBE = """
import sys
import msgspec, msgspec.inspect, msgspec.json, msgspec.structs
before = set(sys.modules)
from service import cli
for argv in (["simulate", sys.argv[1]], ["simulate", "--decisions", sys.argv[1]], ["schema"]):
    assert cli.main(argv) == 0, argv
loaded = {name.partition(".")[0] for name in set(sys.modules) - before}
print(" ".join(sorted(loaded - set(sys.stdlib_module_names))), file=sys.stderr)
"""


# --- the stream --------------------------------------------------------------------------------


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def spellings(address: str) -> list[str]:
    """Every way the contract accepts of writing one IPv6 address (beyond its canonical text)."""
    value = ipaddress.IPv6Address(address)
    exploded = value.exploded  # 0001-style hextets, all eight
    low = int(value) & 0xFFFFFFFF
    dotted = ".".join(str(low >> s & 255) for s in (24, 16, 8, 0))
    head = ":".join(exploded.split(":")[:6])
    return [
        str(value).upper(),
        exploded,
        ":".join(h.lstrip("0") or "0" for h in exploded.split(":")),  # no "::"
        f"{head}:{dotted}",  # the last 32 bits as a dotted quad
    ]


class Stream:
    """Records, applied in-process as they are written so that releases can name real IPs."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.state = state.State()
        self.count = 0

    def add(self, record: bytes) -> dict[str, Any]:
        self.records.append(record)
        decision, _ = allocation.apply_record(self.state, record)
        out: dict[str, Any] = json.loads(events.encode_decision(decision))
        return out

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        self.count += 1
        return self.add(_json({"type": type_, "id": f"e{self.count}", **fields}))


@functools.cache
def rich_stream() -> bytes:
    s = Stream()
    east = {"cluster": "east"}
    s.event(
        "pool.configured",
        clusterPoolIPv4PodCIDRList=["10.0.0.0/24", "10.1.0.0/26"],
        clusterPoolIPv4MaskSize=27,
        clusterPoolIPv6PodCIDRList=["fd00::/120", "FD00:0:0:1::/122"],
        clusterPoolIPv6MaskSize=123,
        time="2026-11-26T09:00:00+01:00",
    )
    s.event(
        "pool.configured",
        clusterPoolIPv6PodCIDRList=["fd10:0000:0000:0000:0000:0000:0000:0000/116", "::a00:0/120"],
        clusterPoolIPv6MaskSize=124,
        **east,
    )
    node_addresses = [
        ["192.168.0.1", "fd12::1"],
        ["FD12:0:0:0:0:0:0:2"],
        ["fd12:0000:0000:0000:0000:0000:0000:0003", "192.168.0.3"],
        ["::192.168.0.4"],
        ["1:2:3:4:5:6:192.168.0.5"],
        ["fd12::0.0.0.6"],
        ["0001:0002:0003:0004:0005:0006:0007:0008"],
        ["::", "::1", "1::"],
        ["fe80::1", "fd12:0:0:1:0:0:0:1"],  # RFC 5952: the first of two equal zero runs
        ["fd12:0:1:0:0:1:0:0", "fd12:1:2:3:4:5:6:7"],
        ["10.0.0.5"],  # inside the pod pool: a conflict
        ["fd00::65"],
    ]
    # Adoption first, of exact CIDRs spelt loosely; then nodes allocate around it.
    s.event("node.adopted", node="legacy-1", podCIDRs=["10.0.0.96/27", "FD00::0060/123"])
    # 8 + 2 blocks of each family: the tenth node on waits for the pool.
    for i in range(14):
        s.event("node.added", node=f"worker-{i}", addresses=node_addresses[i % len(node_addresses)])
    for i in range(6):
        s.event("node.added", node=f"east-{i}.zone-a", addresses=[f"fd10::{i}:1"], **east)
    # Adoption of a CIDR taken already, and of one outside the pool: both pinned, waiting.
    s.event("node.deleted", node="worker-12")
    s.event("node.adopted", node="legacy-2", podCIDRs=["10.0.0.0/27"])
    s.event("node.adopted", node="legacy-3", podCIDRs=["10.9.0.0/27"], addresses=["10.9.0.1"])
    s.event("node.adopted", node="east-legacy", podCIDRs=["::a00:20/124"], **east)
    # Pods, every family, until one node's range is full.
    for node in ("worker-0", "worker-1", "legacy-1", "worker-13"):
        for p in range(5):
            s.event("ip.requested", node=node, owner=f"ns/{node}-{p}")
    for p in range(32):
        s.event("ip.requested", node="worker-2", owner=f"fill/{p}", family="ipv4")
    for p in range(3):
        s.event("ip.requested", node="east-legacy", owner=f"east/{p}", **east)
        s.event("ip.requested", node="east-1.zone-a", owner=f"east/{p}", family="ipv6", **east)
    # Release by address, IPv6 in every accepted spelling (each re-requested after).
    releasing = [(f"ns/{n}-{p}", n, "default") for n in ("worker-0", "legacy-1") for p in range(5)]
    releasing += [(f"east/{p}", "east-legacy", "east") for p in range(3)]
    for owner, node, cluster in releasing:
        for k in range(len(spellings("::"))):
            # Requesting again is idempotent while held, and after a release hands out the next
            # address (next-fit): each spelling names a different address.
            held = s.event("ip.requested", node=node, owner=owner, cluster=cluster)["ips"]
            for ip in (ip for ip in held if ":" in ip):
                spelling = spellings(ip)[k]
                out = s.event("ip.released", node=node, owner=owner, ip=spelling, cluster=cluster)
                assert out["error"] is None, (spelling, out)
    s.event("ip.released", node="worker-1", owner="ns/worker-1-0")
    s.event("ip.released", node="worker-1", owner="nobody")
    s.event("ip.released", node="worker-1", owner="ns/worker-1-1", ip="10.200.0.1")
    # Deletions serve the waiting nodes; a pool append serves the rest.
    s.event("node.deleted", node="worker-0")
    s.event("node.deleted", node="worker-5")
    s.event("node.deleted", node="nobody")
    s.event(
        "pool.configured",
        clusterPoolIPv4PodCIDRList=["10.0.0.0/24", "10.1.0.0/26", "10.2.0.0/25"],
        clusterPoolIPv4MaskSize=27,
        clusterPoolIPv6PodCIDRList=["fd00::/120", "fd00:0:0:1::/122", "fd00:0:0:2::/121"],
        clusterPoolIPv6MaskSize=123,
    )
    # Refused pool changes and values: each reason must read the same everywhere.
    # Refused pool changes and values: each reason must read the same everywhere. Each is the
    # pool in force plus one element, so that it is the value that is refused.
    v4 = ["10.0.0.0/24", "10.1.0.0/26", "10.2.0.0/25"]
    v6 = ["fd00::/120", "fd00:0:0:1::/122", "fd00:0:0:2::/121"]
    refused_pools: list[tuple[list[str], list[str]]] = [
        (v4[:1], v6),  # an element removed
        (v4, [*v6, "::ffff:10.0.0.0/120"]),
        (v4, [*v6, "::ffff:a00:0/120"]),
        (v4, [*v6, "::ffff:0:0/96"]),
        (v4, [*v6, "fe80::%eth0/64"]),
        (v4, [*v6, "fd00::g/120"]),
        (v4, [*v6, "1::2::3/120"]),
        (v4, [*v6, "fd00::/129"]),
        (v4, [*v6, "fd01::/0120"]),
        (v4, [*v6, "10.5.0.0/24"]),
        ([*v4, "10.5.0.0/255.255.255.0"], v6),
        ([*v4, "10.5.0.0/0.0.0.255"], v6),
        ([*v4, "10.5.0.0/024"], v6),
        ([*v4, "10.5.0.1/24"], v6),
        ([*v4, "10.5.0.256/24"], v6),
        ([*v4, "010.5.0.0/24"], v6),
        ([*v4, "10.5.0.0"], v6),
        ([*v4, "10.0.0.0/25"], v6),  # overlaps
        ([*v4, "fd01::/120"], v6),
    ]
    for pool4, pool6 in refused_pools:
        s.event(
            "pool.configured",
            clusterPoolIPv4PodCIDRList=pool4,
            clusterPoolIPv4MaskSize=27,
            clusterPoolIPv6PodCIDRList=pool6,
            clusterPoolIPv6MaskSize=123,
        )
    s.event("pool.configured", clusterPoolIPv4PodCIDRList=v4, clusterPoolIPv4MaskSize=26)
    for value in ["fe80::1%eth0", "::ffff:192.168.0.9", "192.168.00.9", "fd12::1::2", "1.2.3"]:
        s.event("node.added", node="bad-address", addresses=[value])
    for value in ["::ffff:10.0.0.96/123", "10.0.0.0/0.0.0.31", "10.0.0.0/027", "fd00::%1/123"]:
        s.event("node.adopted", node="bad-cidr", podCIDRs=[value])
    for value in ["::ffff:10.0.0.97", "fd00::61%eth0", "10.0.0.097", "zzz"]:
        s.event("ip.released", node="legacy-1", owner="ns/legacy-1-0", ip=value)
    # Records that do not decode.
    head = b'{"type":"node.added","id":"x","node":"worker-99"'
    for raw in [
        b"not json",
        b'{"type":"node.renamed","id":"x"}',
        b"\xef\xbb\xbf" + head + b"}",
        head + b',"zz":"\xff"}',
        head + b',"zz":' + b"[" * 40 + b"]" * 40 + b"}",
        head + b',"zz":' + b"[" * 2000 + b"]" * 2000 + b"}",
        head + b',"time":"2026-11-26T09:00:00"}',
        head + b',"cluster":"East"}',
        head + b',"cluster":"' + b"a" * 64 + b'"}',
        b'{"type":"node.added","id":"x","node":"a..b"}',
        b'{"type":"node.added","id":"x","node":"worker-1\\n"}',
        b'{"type":"node.added","id":"x\\u0000","node":"worker-99"}',
        b'{"type":"pool.configured","id":"x","clusterPoolIPv4MaskSize":24.0}',
        head + b"," + b'"pad":"' + b"x" * 70_000 + b'"}',
    ]:
        s.add(raw)
    s.event("node.deleted", node="east-legacy", **east)
    return b"\n".join(s.records) + b"\n"


# --- interpreters and their venvs --------------------------------------------------------------


def _probe(python: str) -> tuple[str, str] | None:
    """(version, minor) of a CPython that can make a venv, or None."""
    try:
        done = subprocess.run(
            [
                python,
                "-c",
                "import sys, venv, ensurepip; v = sys.version_info;"
                "print(sys.implementation.name, f'{v[0]}.{v[1]}.{v[2]}', f'{v[0]}.{v[1]}')",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return None
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) != 3 or parts[0] != "cpython":
        return None
    return parts[1], parts[2]


@functools.cache
def interpreters() -> dict[str, tuple[str, str]]:
    """minor -> (version, path): pyenv's (newest patch first), then python3.x on PATH."""
    found: dict[str, tuple[str, str]] = {}
    home = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pyenv = sorted(
        glob.glob(str(home / "versions" / "3.1[123].*" / "bin" / "python")),
        key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()],
        reverse=True,
    )
    on_path = [shutil.which(f"python{minor}") for minor in MINORS]
    for python in [*pyenv, *(p for p in on_path if p)]:
        probed = _probe(python)
        if probed is not None and probed[1] in MINORS:
            found.setdefault(probed[1], (probed[0], python))
    return found


def _cache() -> Path:
    return Path(os.environ.get("IPLEDGER_CACHE") or ROOT / ".cache")


def venv_python(version: str, python: str) -> Path:
    """A venv of ``python`` with the venv's versions of the core's dependencies, made once."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CORE_DEPENDENCIES]
    home = _cache() / "pyenvs" / version
    bin_python = home / "bin" / "python"
    marker = home / f".ready-{'-'.join(pins)}"
    if marker.exists() and bin_python.exists():
        return bin_python
    steps = [
        [python, "-m", "venv", "--clear", str(home)],
        [str(bin_python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            message = f"{' '.join(step)} failed:\n{done.stderr[-2000:]}"
            if CI:
                pytest.fail(message)
            pytest.skip(message)
    marker.touch()
    return bin_python


def run(argv: list[str], *, hash_seed: str) -> bytes:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONHASHSEED": hash_seed,  # a different one per interpreter: no hash-order effects
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
    }
    done = subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("versions") / "rich.jsonl"
    path.write_bytes(rich_stream())
    return path


@pytest.fixture(scope="module")
def reference(stream_file: Path) -> dict[str, bytes]:
    """What ``ipledger simulate`` prints in the project's venv."""
    cli = [sys.executable, "-m", "service.cli", "simulate"]
    return {
        "document": run([*cli, str(stream_file)], hash_seed="0"),
        "decisions": run([*cli, "--decisions", str(stream_file)], hash_seed="0"),
    }


def test_the_stream_is_rich(reference: dict[str, bytes]) -> None:
    """Every kind of decision is in it, so that equal output means something."""
    decisions = [json.loads(line) for line in reference["decisions"].splitlines()]
    errors = [d["error"] or "" for d in decisions]
    assert len(decisions) == len([line for line in rich_stream().split(b"\n") if line.strip()])
    assert sum(e == "" for e in errors) > 100
    for fragment in (
        "allocator full",
        "range is full",
        "unknown node",
        "already allocated",
        "may only be appended",
        "invalid event",
        "byte order mark",
        "32",
        "IPv4",
    ):
        assert any(fragment in e for e in errors), fragment
    assert any(d.get("conflict") for d in decisions)
    assert any(d["cluster"] is None for d in decisions)
    document = json.loads(reference["document"])
    assert set(document["clusters"]) == {"default", "east"}
    text = (reference["document"] + reference["decisions"]).decode()
    for canonical in (
        "::c0a8:4",
        "1:2:3:4:5:6:c0a8:5",
        "1:2:3:4:5:6:7:8",
        "fd12:0:0:1::1",
        '"podCIDRs":["::a00:20/124"]',
    ):
        assert canonical in text, canonical


def test_simulate_and_schema_need_only_the_cores_dependencies(stream_file: Path) -> None:
    """What lets the other interpreters' venvs, which have only the core's dependencies, run it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, str(stream_file)],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    # The last line: the commands' own messages (rejected lines) come before it.
    loaded = set(done.stderr.decode().splitlines()[-1].split())
    assert loaded <= {"service", *CORE_DEPENDENCIES}, loaded


def test_enough_interpreters_are_present() -> None:
    others = sorted(set(interpreters()) - {HERE})
    if len(others) < 2:
        message = f"CPython {', '.join(MINORS)} wanted besides {HERE}; found only {others}"
        if CI:
            pytest.fail(message)
        pytest.skip(message)


# The venv's own interpreter gives the reference, so it is not among the cases.
@pytest.mark.parametrize("minor", [m for m in MINORS if m != HERE])
def test_simulate_prints_the_same_bytes_on_every_python(
    minor: str, stream_file: Path, reference: dict[str, bytes]
) -> None:
    if minor not in interpreters():
        if CI:
            pytest.fail(f"no CPython {minor} found (pyenv or python{minor} on PATH)")
        pytest.skip(f"no CPython {minor} found")
    version, python = interpreters()[minor]
    runner = [str(venv_python(version, python)), "-m", "service.cli", "simulate"]
    seed = minor.replace(".", "")
    document = run([*runner, str(stream_file)], hash_seed=seed)
    decisions = run([*runner, "--decisions", str(stream_file)], hash_seed=seed)
    assert document == reference["document"], _first_difference(document, reference["document"])
    assert decisions == reference["decisions"], _first_difference(decisions, reference["decisions"])


def _first_difference(got: bytes, want: bytes) -> str:
    got_lines, want_lines = got.splitlines(), want.splitlines()
    for number, (a, b) in enumerate(zip(got_lines, want_lines, strict=False), 1):
        if a != b:
            pairs = enumerate(zip(a, b, strict=False))
            at = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
            lo, hi = max(0, at - 80), at + 80
            return f"line {number}, byte {at}: {a[lo:hi]!r}, the venv's {b[lo:hi]!r}"
    return f"{len(got_lines)} lines, the venv printed {len(want_lines)}"
