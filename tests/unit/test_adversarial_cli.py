"""The commands as a new user meets them: a wrong database URL is a message, not a traceback.

Every command that reads the settings validates them first (``Settings.validate``). A database
URL that does not parse used to escape as SQLAlchemy's ``ArgumentError`` or the socket's
``OverflowError`` (a traceback, exit 1), and one of another database's scheme was taken for
PostgreSQL's and failed later as a DNS error. Now each is a one-line error naming the setting
and where it was set, the password redacted, exit 1, before anything connects.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service import cli, errors
from service.settings import Settings

BAD_URLS = [
    pytest.param("notaurl", "must be a PostgreSQL URL", id="no-url"),
    pytest.param("mysql://db.example/ipledger", "must be a PostgreSQL URL", id="other-scheme"),
    # asyncpg's own parser (the table log's listener, replay) takes the scheme in lower case only
    pytest.param("POSTGRESQL://db.example/x", "must be a PostgreSQL URL", id="upper-case"),
    pytest.param("postgresql://u@[::1/ipledger", "Invalid IPv6 URL", id="unclosed-bracket"),
    pytest.param("postgresql://db.example:99999/x", "Port out of range", id="port-too-large"),
    pytest.param("postgresql://db.example:port/x", "is not a valid URL", id="port-not-a-number"),
    pytest.param(
        "postgresql://ipledger:s3cr3t@db.example:70000/x", "Port out of range", id="with-password"
    ),
]


@pytest.fixture(autouse=True)
def _no_ipledger_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("IPLEDGER_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
@pytest.mark.parametrize("command", ["state", "status", "run", "api", "init"])
def test_a_bad_database_url_is_one_line_naming_the_setting(
    command: str, url: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command, "--database-url", url]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("ipledger: IPLEDGER_DATABASE_URL")
    assert why in line
    assert "from the command line" in line
    assert "s3cr3t" not in line


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_the_api_database_url_is_checked_alike(url: str, why: str) -> None:
    with pytest.raises(errors.ConfigurationError, match="IPLEDGER_API_DATABASE_URL") as caught:
        Settings.from_env({"IPLEDGER_API_DATABASE_URL": url})
    assert why in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ipledger@127.0.0.1:5432/ipledger",
        "postgres://ipledger:pw@db.example/ipledger",
        "postgresql+asyncpg://db.example/ipledger",
        "postgresql://[::1]:5432/ipledger",
        "postgresql:///ipledger?host=/var/run/postgresql",
        "postgresql://h1:5432,h2:5432/ipledger",  # asyncpg's several hosts
    ],
)
def test_the_urls_postgresql_takes_are_accepted(url: str) -> None:
    assert Settings.from_env({"IPLEDGER_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        # Any text but a false one turned the tree on; the other true-or-false settings refused it.
        ("IPLEDGER_TREE", "maybe", "must be true or false"),
        # int() of the text, a ValueError traceback; and ports beyond 65535 were taken.
        ("IPLEDGER_METRICS_PORT", "abc", "must be an integer"),
        ("IPLEDGER_METRICS_PORT", "99999", "must be a port"),
        ("IPLEDGER_SYNC_METRICS_PORT", "70000", "must be a port"),
        # NaN passes every "< 0" check; an infinite window is no timedelta.
        ("IPLEDGER_SYNC_QPS", "nan", "IPLEDGER_SYNC_QPS must be"),
        ("IPLEDGER_RESYNC_INTERVAL_S", "nan", "IPLEDGER_RESYNC_INTERVAL_S must be"),
        ("IPLEDGER_API_FORECAST_WINDOW_S", "nan", "IPLEDGER_API_FORECAST_WINDOW_S must be"),
        ("IPLEDGER_API_FORECAST_WINDOW_S", "inf", "IPLEDGER_API_FORECAST_WINDOW_S must be"),
    ],
)
def test_a_setting_out_of_its_range_is_refused(variable: str, value: str, why: str) -> None:
    with pytest.raises(errors.ConfigurationError, match=why):
        Settings.from_env({variable: value})


@pytest.mark.parametrize(
    ("value", "tree"), [("true", True), ("yes", True), ("1", True), ("false", False), ("NO", False)]
)
def test_the_tree_setting_reads_the_same_words_as_the_others(value: str, tree: bool) -> None:
    assert Settings.from_env({"IPLEDGER_TREE": value}).tree is tree
    assert Settings.from_env({}).tree is True


def test_a_nan_from_the_configuration_file_is_refused_as_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ipledger.toml"
    path.write_text("[sync]\nqps = nan\n")
    assert cli.main(["config", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "IPLEDGER_SYNC_QPS must be" in err
    assert "Traceback" not in err
