"""The query API fuzzed from its own OpenAPI document with schemathesis, served as in production.

``ipledger api`` runs as a child process on a free loopback port, over a database of this
module's own (the allocator's batches of a mixed stream committed by ``PostgresProjection``),
connected as the read-only role ``ipledger init`` creates. schemathesis loads ``/openapi.json``
from it and, for every operation, sends generated requests (valid and invalid parameters) and
checks each answer: never a 5xx, a status code the document lists, the content type and the
body the document describes for it, the headers it names.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode, checks
from schemathesis.config import SchemathesisConfig

from service import bootstrap
from service.adapters.postgres import embedded
from service.settings import Settings
from tests.harness.postgres import _scratch_database
from tests.integration.test_api import _commit, _log
from tests.waiting import until_blocking

pytestmark = [pytest.mark.postgres]

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fuzz_dsn(pg_server: embedded.EmbeddedPostgres, pg_template: str) -> Iterator[str]:
    """A database of this module's own, with the log committed and the API's role."""
    for dsn in _scratch_database(pg_server, pg_template):
        anyio.run(_prepare, dsn)
        yield dsn


async def _prepare(dsn: str) -> None:
    settings = Settings(database_url=dsn)
    await _commit(dsn, _log())
    await bootstrap.ensure_api_role(settings)
    # The table log's partitions, as the allocator creates them (the API cannot).
    event_log = await bootstrap.open_log(settings)
    try:
        await event_log.end_offset(0)
    finally:
        await event_log.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def api_url(fuzz_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``ipledger api`` serving the module's database; stopped (SIGTERM) at the end."""
    port = _free_port()
    env = {
        **os.environ,
        "IPLEDGER_DATABASE_URL": fuzz_dsn,
        "IPLEDGER_API_ADDRESS": f"127.0.0.1:{port}",
        "IPLEDGER_LOG": "table",
    }
    # Its log goes to a file: a pipe nobody reads would fill and stop the server.
    output = tmp_path_factory.mktemp("api") / "api.log"
    with output.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "api"],
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"ipledger api exited: {output.read_text()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        until_blocking(healthy, timeout=60, what="ipledger api answers /healthz")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        print(output.read_text()[-5000:])


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> schemathesis.BaseSchema:
    # An invalid request is refused with 400, or 404 for a path naming nothing, or 414 when
    # the generated query string is longer than the API takes at all.
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": ["400", "404", "414"]}}}
    )
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json", config=config)


# One test per operation, each a Hypothesis run of its own. Written out rather than through
# schemathesis's pytest integration (``from_fixture``), which needs a pytest internal that
# pytest 9 no longer has.
OPERATIONS = [
    ("GET", "/v1/clusters"),
    ("GET", "/v1/clusters/{cluster}"),
    ("GET", "/v1/clusters/{cluster}/pools"),
    ("GET", "/v1/clusters/{cluster}/nodes"),
    ("GET", "/v1/clusters/{cluster}/nodes/{node}"),
    ("GET", "/v1/clusters/{cluster}/ips/{ip}"),
    ("GET", "/v1/clusters/{cluster}/ips/{ip}/history"),
    ("GET", "/v1/clusters/{cluster}/owners/{owner}"),
    ("GET", "/v1/clusters/{cluster}/decisions"),
    ("GET", "/v1/clusters/{cluster}/rejections"),
    ("GET", "/v1/clusters/{cluster}/map"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]


def test_the_document_lists_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    listed = {
        (result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()
    }
    assert listed == set(OPERATIONS)


# Valid requests for every operation; invalid ones for those with a parameter to get wrong.
RUNS = [
    *((method, path, GenerationMode.POSITIVE) for method, path in OPERATIONS),
    *(
        (method, path, GenerationMode.NEGATIVE)
        for method, path in OPERATIONS
        if path not in ("/healthz", "/readyz")
    ),
]


@pytest.mark.parametrize(("method", "path", "mode"), RUNS)
def test_every_operation_conforms_to_its_document(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        database=None,
        derandomize=True,
    )
    def conforms(case: schemathesis.Case) -> None:
        # A cursor is opaque: only the `next` of a page is one, and no schema can say which
        # strings those are, so one that matches the pattern may still be refused (400).
        cursor = bool(case.query and case.query.get("after"))
        excluded = [checks.positive_data_acceptance] if cursor else []
        case.call_and_validate(excluded_checks=excluded)

    conforms()


def test_oversized_headers_are_refused_before_the_application(api_url: str) -> None:
    refused = httpx.get(f"{api_url}/healthz", headers={"X-Padding": "a" * 9000}, timeout=10)
    assert refused.status_code in (400, 431)
    assert httpx.get(f"{api_url}/healthz", timeout=10).json() == {"status": "ok"}


def test_the_served_api_answers_as_its_own_role(api_url: str) -> None:
    ready = httpx.get(f"{api_url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    clusters = httpx.get(f"{api_url}/v1/clusters", timeout=10).json()
    assert [cluster["name"] for cluster in clusters["items"]] == ["default", "east"]
