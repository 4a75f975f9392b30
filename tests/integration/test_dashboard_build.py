"""The dashboard's committed static files are exactly a fresh build of its sources.

``compose/dashboard/build.sh`` (``make dashboard``) installs the pinned esbuild and TypeScript
from the npm registry into the cache and builds into a scratch folder here; every file must
equal the committed one in ``service/dashboard/static`` (so nobody edits the built file by
hand, and a change to ``src/`` is not forgotten in the build). Without Node.js it is skipped,
except under CI=true, where the check must run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
STATIC = REPOSITORY / "service" / "dashboard" / "static"


def test_the_committed_build_is_the_build_of_the_sources(tmp_path: Path) -> None:
    if shutil.which("npm") is None or shutil.which("node") is None:
        reason = "Node.js (node, npm) is not installed: the dashboard cannot be rebuilt"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    built = tmp_path / "static"
    run = subprocess.run(
        ["bash", str(REPOSITORY / "compose" / "dashboard" / "build.sh"), str(built)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    fresh = sorted(path.name for path in built.iterdir())
    assert fresh == sorted(path.name for path in STATIC.iterdir() if path.is_file())
    assert fresh == ["app.js", "index.html", "style.css"]
    for name in fresh:
        assert (built / name).read_bytes() == (STATIC / name).read_bytes(), (
            f"service/dashboard/static/{name} is not the build of its sources: make dashboard"
        )


def test_the_package_ships_the_built_files() -> None:
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    assert '"service.dashboard" = ["static/*"]' in pyproject
    assert (REPOSITORY / "service" / "dashboard" / "__init__.py").is_file()
