"""The package as the image installs it: a wheel, not the checkout, migrating a database.

The Dockerfile cannot be built on the development machines (no Docker), and the one step of it
that a checkout does not exercise is that an installed ``service`` package finds the Alembic
scripts: ``service/adapters/postgres/migrate.py`` looks for ``migrations/`` next to the
package, which in a checkout is the repository root and in the image is site-packages, where
the Dockerfile copies them. This test builds the wheel, installs it into a directory of its own,
puts ``migrations/`` beside it as the Dockerfile does, and runs ``ipledger init`` from there
(``python -S``, so that neither the checkout nor the editable install of the test venv is on
the path; the dependencies come from the venv's site-packages) against an empty PostgreSQL
database: every migration must apply, and ``ipledger state`` must then read the empty projection.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.postgres


def test_the_installed_wheel_migrates_an_empty_database(tmp_path: Path, pg_empty_dsn: str) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("ipledger-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    assert "COPY migrations ./migrations" in (ROOT / "Dockerfile").read_text()
    shutil.copytree(ROOT / "migrations", site / "migrations")

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]),
        "IPLEDGER_DATABASE_URL": pg_empty_dsn,
    }

    def ipledger(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", "-m", "service.cli", *arguments],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )

    where = ipledger("schema")
    assert where.returncode == 0, where.stderr
    located = subprocess.run(
        [sys.executable, "-S", "-c", "import service; print(service.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    )
    assert Path(located.stdout.strip()).is_relative_to(site), "the checkout was imported"
    # The dashboard's built files are package data (service.api.dashboard serves them).
    static = site / "service" / "dashboard" / "static"
    assert sorted(path.name for path in static.iterdir()) == ["app.js", "index.html", "style.css"]

    init = ipledger("init")
    assert init.returncode == 0, init.stderr
    state = ipledger("state")
    assert state.returncode == 0, state.stderr
    assert json.loads(state.stdout)["clusters"] == {}
