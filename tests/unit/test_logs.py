"""Log lines (``service.logs``): human by default, JSON lines on request, never a password.

Lines about one log record carry its cluster, partition, offset and event id (as fields of
their own in JSON, appended in brackets for humans), and that is checked on the lines the
allocator loop really writes for rejected records. Passwords of database URLs and libpq
keyword strings are replaced by ``***`` wherever they appear: message, arguments, fields,
traceback; and ``ipledger`` itself, started with a URL holding a password that cannot connect,
says why without showing it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import anyio
import pytest

from service import allocator, cli, logs
from service.adapters import memory
from tests import waiting

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's lines in a buffer, as ``configure`` sets it up; restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    yield buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_human_lines_by_default_with_the_records_fields_in_brackets(
    captured: io.StringIO,
) -> None:
    logs.configure("INFO", "human", captured)
    log = logging.getLogger("ipledger.test")
    log.info("plain %s", "line")
    log.warning(
        "offset %d rejected",
        7,
        extra={"cluster": "east", "partition": 0, "offset": 7, "event_id": "e7"},
    )
    log.debug("not shown at INFO")
    first, second = captured.getvalue().splitlines()
    assert first.endswith(" INFO ipledger.test: plain line")
    assert second.endswith(
        " WARNING ipledger.test: offset 7 rejected [cluster=east partition=0 offset=7 event_id=e7]"
    )


def test_json_lines_carry_time_level_logger_message_and_fields(captured: io.StringIO) -> None:
    logs.configure("DEBUG", "json", captured)
    log = logging.getLogger("ipledger.test")
    log.debug('unicode é and "quotes"', extra={"partition": 3, "offset": 12, "extra_thing": 1.5})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"cluster": "west", "event_id": None})
    one, two = (json.loads(line) for line in captured.getvalue().splitlines())
    assert list(one) == ["time", "level", "logger", "message", "partition", "offset", "extra_thing"]
    assert one["time"].endswith("Z") and len(one["time"]) == len("2026-12-02T01:02:03.456Z")
    assert (one["level"], one["logger"], one["message"]) == (
        "DEBUG",
        "ipledger.test",
        'unicode é and "quotes"',
    )
    assert (one["partition"], one["offset"], one["extra_thing"]) == (3, 12, 1.5)
    assert (two["cluster"], two["event_id"]) == ("west", None)
    assert two["exception"].startswith("Traceback") and "ValueError: boom" in two["exception"]


@pytest.mark.parametrize("log_format", ["human", "json"])
def test_no_password_reaches_a_line(captured: io.StringIO, log_format: logs.LogFormat) -> None:
    logs.configure("INFO", log_format, captured)
    log = logging.getLogger("ipledger.test")
    url = f"postgresql+asyncpg://ipledger:{SECRET}@db.example:5432/ipledger"
    log.info("connecting to %s", url)
    log.info(f"inline postgresql://u:{SECRET}@h/d and host=h password={SECRET} dbname=d")
    log.info("quoted", extra={"dsn": f"host=h password='{SECRET} with space' user=u"})
    try:
        raise ConnectionError(f"cannot reach kafka+ssl://client:{SECRET}@broker:9093")
    except ConnectionError:
        log.exception("failed")
    text = captured.getvalue()
    assert SECRET not in text
    assert "postgresql+asyncpg://ipledger:***@db.example:5432/ipledger" in text
    assert "password=***" in text
    assert "kafka+ssl://client:***@broker:9093" in text


def test_redact_leaves_urls_without_a_password_and_other_text_alone() -> None:
    for text in (
        "postgresql://ipledger@localhost/ipledger",
        "http://127.0.0.1:9464/metrics",
        "node address 10.0.0.5 is held by ns/pod@2",
        "user@example.com wrote: a:b@c",
    ):
        assert logs.redact(text) == text
    assert logs.redact("postgresql://u:p%40ss@h/d") == "postgresql://u:***@h/d"


def test_the_format_comes_from_the_flag_then_the_environment(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(logs.FORMAT_VARIABLE, "yaml")
    assert cli.main(["schema"]) == 2
    assert "IPLEDGER_LOG_FORMAT must be one of human, json, not 'yaml'" in capsys.readouterr().err
    monkeypatch.setenv(logs.FORMAT_VARIABLE, "JSON")
    assert cli.main(["schema"]) == 0
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, logs.JsonFormatter)
    assert cli.main(["--log-format", "human", "schema"]) == 0
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, logs.HumanFormatter)


@pytest.mark.anyio
async def test_the_allocators_lines_about_a_record_carry_its_cluster_partition_offset_and_id(
    captured: io.StringIO,
) -> None:
    logs.configure("INFO", "json", captured)
    log_ = memory.MemoryEventLog()
    bad = [
        (b"east", b'{"type":"node.added","id":"n1","cluster":"east"}'),  # no node
        (b"east", b'{"type":"nope","id":"x"}'),  # unknown type, default cluster: wrong key
        (b"east", b"not json"),
    ]
    await log_.append(bad)
    worker = allocator.PartitionAllocator(
        log_,
        memory.MemoryProjection(memory.MemoryProjectionTables(), holder="test"),
        0,
        settings=allocator.LoopSettings(batch_max_wait_s=0.01),
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await waiting.until(
            lambda: worker.metrics.next_offset.get(0, 0) >= 3, timeout=20, what="3 committed"
        )
        stop.set()
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    rejected = [line for line in lines if "rejected" in line["message"]]
    assert [
        (line["cluster"], line["partition"], line["offset"], line["event_id"]) for line in rejected
    ] == [("east", 0, 0, "n1"), ("default", 0, 1, "x"), ("default", 0, 2, None)]
    assert rejected[0]["message"].startswith("partition 0: offset 0 rejected (invalid_event): ")


def test_the_cli_shows_no_password_of_a_database_it_cannot_reach() -> None:
    """``ipledger init`` with a URL whose server is not there: an error, the password unshown."""
    url = f"postgresql://ipledger:{SECRET}@127.0.0.1:9/ipledger"
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "--log-format", "json", "init"],
        env={**os.environ, "IPLEDGER_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done
    assert SECRET not in done.stdout + done.stderr
    # It still says where it tried: the URL, its password replaced.
    assert "postgresql://ipledger:***@127.0.0.1:9/ipledger" in done.stderr, done.stderr
