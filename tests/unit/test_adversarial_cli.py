"""The commands as a new user meets them: a wrong database URL is a message, not a traceback.

Every command that reads the settings validates them first (``Settings.validate``). A database
URL that does not parse used to escape as SQLAlchemy's ``ArgumentError`` or the socket's
``OverflowError`` (a traceback, exit 1), and one of another database's scheme was taken for
PostgreSQL's and failed later as a DNS error. Now each is a one-line error naming the setting
and where it was set, the password redacted, exit 1, before anything connects.
"""

from __future__ import annotations

import os

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
