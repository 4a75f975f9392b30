"""Audits against real PostgreSQL: the tree the allocator records, replay, proofs, tampering.

One log (the table log, 2,400 mixed records) is applied by the allocator in small batches with
heads every 100 records, the state digest every 400 and every head signed. Then: the replay
verifies it; each kind of tampering (a node row, a history row, a decision, a log record, a
head) is found and named precisely; an inclusion proof checks offline and fails for any flipped
byte; a consistency proof fails once a prefix was rewritten; the state at random offsets
equals ``simulate`` over the log's prefix.
"""

from __future__ import annotations

import base64
import datetime
import json
import random
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import anyio
import asyncpg
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from service import allocator, errors, ports
from service.adapters.postgres import audit as pg_audit
from service.adapters.postgres import embedded, table_log
from service.adapters.postgres import projection as pg_projection
from service.audit import proofs, replay, signing
from service.domain import allocation, document, events, merkle, state
from service.processes import audit
from service.settings import Settings
from tests.harness import postgres as pg_harness
from tests.integration.test_allocator_table_log import run_until
from tests.streams import key_of, mixed_stream

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
RECORDS = mixed_stream(2400, seed=10)
HEAD_EVERY = 100
DIGEST_EVERY = 400
_T = TypeVar("_T")


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "signing.pem"
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


async def _build(dsn: str, key_file: Path) -> None:
    """Append RECORDS to the table log of ``dsn`` and apply them all with the allocator."""
    event_log = table_log.PostgresTableLog.from_dsn(dsn)
    try:
        for start in range(0, len(RECORDS), 300):
            chunk = RECORDS[start : start + 300]
            await event_log.append([(key_of(r), r) for r in chunk])
        projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name="table", holder="test")
        tree = allocator.TreeSettings(
            head_every=HEAD_EVERY,
            digest_every=DIGEST_EVERY,
            sign=signing.Signer.from_file(key_file),
        )
        worker = allocator.PartitionAllocator(
            event_log,
            projection,
            0,
            settings=allocator.LoopSettings(batch_max_records=170, tree=tree),
        )
        await run_until(worker, len(RECORDS))
        await projection.close()
    finally:
        await event_log.close()


@pytest.fixture(scope="module")
def ledger_template(
    pg_server: embedded.EmbeddedPostgres, pg_template: str, key_file: Path
) -> Iterator[str]:
    """A database built once per module (RECORDS applied), cloned by every test."""
    name = f"audit_{uuid.uuid4().hex[:12]}"
    pg_harness._run(
        pg_harness._execute, pg_server.dsn, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'
    )
    # Its own event loop in a thread, as the harness builds its databases.
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(anyio.run, _build, pg_server.dsn_for(name), key_file).result()
    yield name
    pg_harness._run(pg_harness._execute, pg_server.dsn, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def ledger(pg_server: embedded.EmbeddedPostgres, ledger_template: str) -> Iterator[str]:
    """A database of this test's own whose table log holds RECORDS, all applied."""
    yield from pg_harness._scratch_database(pg_server, ledger_template)


async def _replay(dsn: str, public: Path | None = None) -> replay.PartitionReport:
    event_log = table_log.PostgresTableLog.from_dsn(dsn)
    live = pg_audit.PostgresAuditReader.from_dsn(dsn)
    try:
        return await replay.replay_partition(
            event_log,
            live,
            0,
            1,
            public_key=signing.load_public_key(public) if public else None,
        )
    finally:
        await live.close()
        await event_log.close()


async def _execute(dsn: str, statement: str, *args: object) -> None:
    db = await asyncpg.connect(dsn)
    try:
        await db.execute(statement, *args)
    finally:
        await db.close()


async def _fetchval(dsn: str, query: str, *args: object) -> object:
    db = await asyncpg.connect(dsn)
    try:
        return await db.fetchval(query, *args)
    finally:
        await db.close()


async def _fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    db = await asyncpg.connect(dsn)
    try:
        return list(await db.fetch(query, *args))
    finally:
        await db.close()


async def _read(dsn: str, query: Callable[[pg_audit.PostgresAuditReader], Awaitable[_T]]) -> _T:
    reader = pg_audit.PostgresAuditReader.from_dsn(dsn)
    try:
        return await query(reader)
    finally:
        await reader.close()


def _settings(dsn: str) -> Settings:
    return Settings(database_url=dsn, log="table")


async def test_a_clean_log_verifies_every_head_root_digest_and_signature(
    ledger: str, key_file: Path
) -> None:
    report = await _replay(ledger, key_file)

    assert report.divergence is None, report.divergence.describe()
    assert report.records == len(RECORDS)
    heads = await _read(ledger, lambda r: r.heads(0))
    # Every 100 records, and at each batch boundary (170 records): all checked.
    assert report.heads_checked == len(heads)
    assert {h.head.size for h in heads} >= set(range(HEAD_EVERY, len(RECORDS) + 1, HEAD_EVERY))
    assert {h.head.size for h in heads} >= set(range(170, len(RECORDS), 170))
    assert report.digests_checked == len(RECORDS) // DIGEST_EVERY
    # The roots are the pure core's: leaves of simulate's decisions over the records.
    oracle = state.State()
    leaves = [
        merkle.leaf_hash(events.encode_decision(allocation.apply_record(oracle, r)[0]), r)
        for r in RECORDS
    ]
    for recorded in heads:
        assert recorded.head.root == merkle.subtree_root(leaves, 0, recorded.head.size).hex()
        signing.verify(recorded.head, signing.load_public_key(key_file))


class _RowsRead(pg_audit.PostgresAuditReader):
    """The live reader, noting whether each read of the projection's rows took the address
    tables."""

    def __init__(self, dsn: str) -> None:
        reader = pg_audit.PostgresAuditReader.from_dsn(dsn)
        super().__init__(reader._engine, owns_engine=True)
        self.addresses_read: list[bool] = []

    async def rows(
        self, partitions: Sequence[int] | None = None, *, addresses: bool = True
    ) -> ports.ProjectionRows:
        self.addresses_read.append(addresses)
        return await super().rows(partitions, addresses=addresses)


async def _replay_noting_rows(dsn: str) -> tuple[replay.PartitionReport, list[bool]]:
    event_log = table_log.PostgresTableLog.from_dsn(dsn)
    live = _RowsRead(dsn)
    try:
        return await replay.replay_partition(event_log, live, 0, 1), live.addresses_read
    finally:
        await live.close()
        await event_log.close()


async def test_a_clean_log_compares_the_address_tables_by_their_digests(ledger: str) -> None:
    report, addresses_read = await _replay_noting_rows(ledger)

    assert report.divergence is None, report.divergence.describe()
    # The server's digests equal the replay's: the address rows themselves are never read.
    assert addresses_read == [False]
    assert await _fetchval(ledger, "SELECT count(*) FROM ip_history") > 0


async def test_a_changed_address_row_is_read_and_named_after_its_digest_differs(
    ledger: str,
) -> None:
    await _execute(ledger, f"UPDATE pod_ip SET node = 'forged' WHERE {_POD_IP_PICK}")

    report, addresses_read = await _replay_noting_rows(ledger)

    assert addresses_read == [True]
    assert report.divergence is not None
    assert report.divergence.what.startswith("pod_ip row default/"), report.divergence.describe()
    assert "node='forged'" in report.divergence.found


async def _first_node(dsn: str) -> str:
    return str(await _fetchval(dsn, "SELECT name FROM node WHERE NOT deleted ORDER BY name"))


# Where a tampering's divergence is (a query for its offset, when it depends on the ledger).
_FIRST_HOLDING = "SELECT from_offset FROM ip_history ORDER BY id LIMIT 1"
# The first row of the node history of the first node: the row where that node appears, which
# changes what an ``as_of`` reader sees (a repeat of the node's previous row would not).
# The current holding of the lowest address held.
_POD_IP_PICK = "address = (SELECT min(address) FROM pod_ip)"
_NODE_HISTORY_PICK = 'WHERE name = (SELECT min(name) FROM node_history) ORDER BY "offset" LIMIT 1'


@pytest.mark.parametrize(
    ("tampering", "statement", "offset", "what", "found"),
    [
        (
            "a changed node row",
            "UPDATE node SET error = 'forged' WHERE name = (SELECT min(name) FROM node "
            "WHERE NOT deleted)",
            None,
            "node row default/",
            "error='forged'",
        ),
        (
            "a changed history row",
            "UPDATE ip_history SET owner = 'ns/forged' WHERE id = (SELECT min(id) FROM ip_history)",
            _FIRST_HOLDING,
            "ip_history row default/",
            "owner='ns/forged'",
        ),
        (
            "a deleted history row",
            "DELETE FROM ip_history WHERE id = (SELECT min(id) FROM ip_history)",
            _FIRST_HOLDING,
            "ip_history row default/",
            "no row",
        ),
        (
            "a changed pod address row",
            f"UPDATE pod_ip SET owner = 'ns/forged' WHERE {_POD_IP_PICK}",
            f"SELECT since_offset FROM pod_ip WHERE {_POD_IP_PICK}",
            "pod_ip row default/",
            "owner='ns/forged'",
        ),
        (
            "a deleted pod address row",
            f"DELETE FROM pod_ip WHERE {_POD_IP_PICK}",
            f"SELECT since_offset FROM pod_ip WHERE {_POD_IP_PICK}",
            "pod_ip row default/",
            "no row",
        ),
        (
            "a changed node history row",
            "UPDATE node_history SET error = 'forged' WHERE (name, \"offset\") = "
            f'(SELECT name, "offset" FROM node_history {_NODE_HISTORY_PICK})',
            f'SELECT "offset" FROM node_history {_NODE_HISTORY_PICK}',
            "node_history row default/",
            "error='forged'",
        ),
        (
            "a deleted node history row",
            'DELETE FROM node_history WHERE (name, "offset") = '
            f'(SELECT name, "offset" FROM node_history {_NODE_HISTORY_PICK})',
            f'SELECT "offset" FROM node_history {_NODE_HISTORY_PICK}',
            "node_history row default/",
            "no row",
        ),
        (
            "a changed pool history row",
            "UPDATE cluster_history SET ipv4_cidrs = ipv4_cidrs || '10.99.0.0/16'::text "
            'WHERE "offset" = (SELECT max("offset") FROM cluster_history)',
            'SELECT max("offset") FROM cluster_history',
            "cluster_history row default/",
            "10.99.0.0/16",
        ),
        (
            "a deleted pool history row",
            'DELETE FROM cluster_history WHERE "offset" = '
            '(SELECT max("offset") FROM cluster_history)',
            'SELECT max("offset") FROM cluster_history',
            "cluster_history row default/",
            "no row",
        ),
        (
            # The stored root of leaves [256, 512), completed by offset 511.
            "a rewritten stored subtree root",
            "UPDATE tree_node SET hash = decode(repeat('ab', 32), 'hex') "
            "WHERE level = 8 AND start = 256",
            "SELECT 511",
            "tree_node row 0/8/256, hash",
            "ab" * 32,
        ),
        (
            "a deleted stored subtree root",
            "DELETE FROM tree_node WHERE level = 9 AND start = 512",
            "SELECT 1023",
            "tree_node row 0/9/512",
            "no row",
        ),
        (
            "a deleted decision",
            'DELETE FROM decision WHERE "offset" = 1234',
            1234,
            "decision",
            "no decision",
        ),
        (
            "an altered decision",
            "UPDATE decision SET body = convert_to(replace(convert_from(body, 'UTF8'), "
            '\'"type":\', \'"forged":1,"type":\'), \'UTF8\') WHERE "offset" = 1500',
            1500,
            "decision",
            "forged",
        ),
        (
            "a missing log record",
            'DELETE FROM log_record WHERE "offset" = 2000',
            2000,
            "log record",
            "the log goes on at offset 2001",
        ),
        (
            "an altered log record",
            "UPDATE log_record SET value = value || ' '::bytea WHERE \"offset\" = 2100",
            2100,
            "log record (its Merkle leaf)",
            "a different record",
        ),
    ],
)
async def test_each_tampering_is_found_and_named_precisely(
    ledger: str,
    tampering: str,
    statement: str,
    offset: int | str | None,
    what: str,
    found: str,
) -> None:
    expected_offset = offset
    if isinstance(offset, str):
        expected_offset = int(await _fetchval(ledger, offset))  # type: ignore[arg-type]
    await _execute(ledger, statement)

    report = await _replay(ledger)

    divergence = report.divergence
    assert divergence is not None, f"{tampering} went unnoticed"
    assert divergence.partition == 0
    assert divergence.offset == expected_offset, divergence.describe()
    assert divergence.what.startswith(what), divergence.describe()
    assert found in divergence.found, divergence.describe()
    if isinstance(offset, int) and what != "log record":
        assert divergence.event_id == events.decode(RECORDS[offset]).id


async def test_a_history_row_recorded_twice_is_found(ledger: str) -> None:
    # A copy of a finished holding: the rows compared one by one are keyed by cluster, address
    # and from offset, so the copy stands beside the row it repeats; the digests count both.
    await _execute(
        ledger,
        "INSERT INTO ip_history (cluster, address, from_offset, node, owner, partition, "
        "from_time, to_offset, to_time) SELECT cluster, address, from_offset, node, owner, "
        "partition, from_time, to_offset, to_time FROM ip_history "
        "WHERE id = (SELECT min(id) FROM ip_history)",
    )
    rows = int(await _fetchval(ledger, "SELECT count(*) FROM ip_history"))  # type: ignore[call-overload]

    report = await _replay(ledger)

    assert report.divergence is not None, "a repeated history row went unnoticed"
    assert report.divergence.what == "ip_history rows", report.divergence.describe()
    assert report.divergence.expected.startswith(f"{rows - 1} ")
    assert report.divergence.found.startswith(f"{rows}: 1 with the cluster, address")


async def test_an_altered_decision_with_its_leaf_rewritten_too_is_found_by_the_next_head(
    ledger: str,
) -> None:
    # A careful forger recomputes the leaf: the head after it no longer has that root.
    body = bytes(await _fetchval(ledger, 'SELECT body FROM decision WHERE "offset" = 1550'))  # type: ignore[arg-type]
    forged = body.replace(b'"type":', b'"forged":1,"type":')
    assert forged != body
    leaf = merkle.leaf_hash(forged, RECORDS[1550])
    await _execute(
        ledger, 'UPDATE decision SET body = $1, leaf = $2 WHERE "offset" = 1550', forged, leaf
    )

    divergence = (await _replay(ledger)).divergence

    assert divergence is not None
    # The replay's own decision differs from the forged one at that very offset.
    assert (divergence.offset, divergence.what) == (1550, "decision")


async def test_a_rewritten_head_is_found(ledger: str, key_file: Path) -> None:
    body = bytes(await _fetchval(ledger, "SELECT body FROM tree_head WHERE size = 1200"))  # type: ignore[arg-type]
    head = merkle.decode_head(json.loads(body))
    forged = msgspec.structs.replace(head, root="00" * 32)
    await _execute(
        ledger,
        "UPDATE tree_head SET body = $1, hash = $2 WHERE size = 1200",
        msgspec.json.encode(forged),
        forged.hash(),
    )

    divergence = (await _replay(ledger)).divergence

    assert divergence is not None
    assert divergence.what == "tree head at size 1200: root"
    assert divergence.found == "00" * 32
    assert divergence.expected == head.root


async def test_a_head_whose_signature_does_not_match_is_found(ledger: str, key_file: Path) -> None:
    body = bytes(await _fetchval(ledger, "SELECT body FROM tree_head WHERE size = 800"))  # type: ignore[arg-type]
    head = merkle.decode_head(json.loads(body))
    forged = msgspec.structs.replace(head, time="2020-01-01T00:00:00.000Z")
    # Hash and chain made consistent: only the signature can tell.
    await _execute(
        ledger,
        "UPDATE tree_head SET body = $1, hash = $2 WHERE size = 800",
        msgspec.json.encode(forged),
        forged.hash(),
    )
    await _execute(
        ledger,
        "UPDATE tree_head SET body = convert_to(replace(convert_from(body, 'UTF8'), $1, $2), "
        "'UTF8') WHERE size = (SELECT min(size) FROM tree_head WHERE size > 800)",
        head.hash().hex(),
        forged.hash().hex(),
    )

    divergence = (await _replay(ledger, key_file)).divergence

    assert divergence is not None
    assert divergence.what == "tree head at size 800: signature", divergence.describe()


async def test_an_inclusion_proof_verifies_offline_and_fails_for_any_flipped_byte(
    ledger: str, key_file: Path
) -> None:
    public = signing.load_public_key(key_file)
    document_ = await audit.proof(_settings(ledger), 0, 777, None)
    assert "ok" in proofs.check_document(document_, public_key=public)
    assert document_["head"]["size"] == len(RECORDS)
    assert base64.b64decode(document_["recordBytes"]) == RECORDS[777]

    rng = random.Random(5)

    def flipped(text: str, *, b64: bool = False) -> str:
        raw = bytearray(base64.b64decode(text) if b64 else bytes.fromhex(text))
        at = rng.randrange(len(raw))
        raw[at] ^= 1 << rng.randrange(8)
        return base64.b64encode(raw).decode() if b64 else raw.hex()

    cases = []
    for _ in range(20):
        for field in ("decisionBytes", "recordBytes"):
            cases.append({**document_, field: flipped(document_[field], b64=True)})
        for i in range(len(document_["proof"])):
            path = list(document_["proof"])
            path[i] = flipped(path[i])
            cases.append({**document_, "proof": path})
        cases.append(
            {**document_, "head": {**document_["head"], "root": flipped(document_["head"]["root"])}}
        )
    cases.append({**document_, "offset": 778})
    cases.append({**document_, "proof": document_["proof"][:-1]})
    for case in cases:
        with pytest.raises(errors.AuditError):
            proofs.check_document(case)
    # The head's time is not covered by the proof, but by the signature.
    later = {**document_, "head": {**document_["head"], "time": "2030-01-01T00:00:00.000Z"}}
    proofs.check_document(later)
    with pytest.raises(errors.AuditError, match="signature"):
        proofs.check_document(later, public_key=public)


async def test_verify_proof_needs_no_database(ledger: str, tmp_path: Path) -> None:
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(await audit.proof(_settings(ledger), 0, 42, 1200)))
    env = {"PATH": "/usr/bin:/bin", "IPLEDGER_DATABASE_URL": "postgresql://nowhere:1/none"}

    ok = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "verify-proof", str(path)],
        capture_output=True,
        env=env,
        check=False,
    )
    forged = json.loads(path.read_text())
    forged["leaf"] = None
    forged["decisionBytes"] = base64.b64encode(b'{"forged":true}').decode()
    path.write_text(json.dumps(forged))
    bad = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "verify-proof", str(path)],
        capture_output=True,
        env=env,
        check=False,
    )

    assert ok.returncode == 0, ok.stderr
    assert b"ok: the decision at partition 0, offset 42" in ok.stdout
    assert bad.returncode == 1
    assert b"does NOT hold" in bad.stderr


async def test_a_consistency_proof_fails_for_a_rewritten_prefix(ledger: str) -> None:
    settings = _settings(ledger)
    proof = await audit.consistency(settings, (0, 1000), (0, len(RECORDS)))
    assert "ok" in proofs.check_document(proof)
    kept = merkle.decode_head(proof["old"])

    # Rewrite a decision before the kept head, with its leaf, and move every later head too:
    # the only thing that cannot follow is the head the auditor kept.
    body = bytes(await _fetchval(ledger, 'SELECT body FROM decision WHERE "offset" = 500'))  # type: ignore[arg-type]
    forged = body.replace(b'"type":', b'"forged":1,"type":')
    await _execute(
        ledger,
        'UPDATE decision SET body = $1, leaf = $2 WHERE "offset" = 500',
        forged,
        merkle.leaf_hash(forged, RECORDS[500]),
    )

    # The stored subtree roots over offset 500 still hash the old leaf: the decision's
    # inclusion proof no longer leads to the head's root, and is refused.
    with pytest.raises(errors.AuditError, match="subtree root"):
        await audit.proof(settings, 0, 500, None)
    # A careful forger recomputes those roots too (the proofs read them, not every leaf): the
    # tree of the first 1,000 decisions then no longer has the kept head's root.
    leaves = await _read(ledger, lambda r: r.leaves(0, len(RECORDS)))
    covering = await _fetch(
        ledger,
        "SELECT level, start FROM tree_node WHERE start <= 500 AND start + (1 << level) > 500",
    )
    assert covering, "no stored subtree root covers offset 500"
    for row in covering:
        start, level = row["start"], row["level"]
        await _execute(
            ledger,
            "UPDATE tree_node SET hash = $1 WHERE level = $2 AND start = $3",
            merkle.subtree_root([x for x in leaves if x], start, start + (1 << level)),
            level,
            start,
        )
    with pytest.raises(errors.AuditError, match="rewritten"):
        await audit.consistency(settings, kept, (0, len(RECORDS)))
    # Offline too: a proof built from the rewritten leaves does not lead to the kept root.
    latest = merkle.decode_head(proof["new"])
    rebuilt = proofs.consistency_document(
        kept,
        msgspec.structs.replace(
            latest, root=merkle.subtree_root([x for x in leaves if x], 0, len(RECORDS)).hex()
        ),
        [x for x in leaves if x],
    )
    with pytest.raises(errors.AuditError):
        proofs.check_document(rebuilt)


async def test_the_state_at_random_offsets_equals_simulate_over_the_prefix(
    ledger: str,
) -> None:
    rng = random.Random(11)
    event_log = table_log.PostgresTableLog.from_dsn(ledger)
    live = pg_audit.PostgresAuditReader.from_dsn(ledger)
    try:
        for until in [0, 1, *rng.sample(range(2, len(RECORDS)), 5), len(RECORDS)]:
            report = await replay.replay_partition(
                event_log, live, 0, 1, until=replay.Until(records=until)
            )
            oracle = state.State()
            for record in RECORDS[:until]:
                allocation.apply_record(oracle, record)
            assert report.document == document.state_document(oracle), until
            assert report.stopped_at == until
    finally:
        await live.close()
        await event_log.close()


def _cli(*args: str, dsn: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "IPLEDGER_DATABASE_URL": dsn},
        check=False,
        timeout=300,
    )


async def test_the_replay_command_exits_0_1_and_2(ledger: str, tmp_path: Path) -> None:
    clean = _cli("replay", "--verify", "--quiet", dsn=ledger)
    until = _cli("replay", "--until", "1000", "--output", str(tmp_path / "s.json"), dsn=ledger)
    await _execute(
        ledger, "UPDATE node SET pinned = NOT pinned WHERE name = $1", await _first_node(ledger)
    )
    differs = _cli("replay", "--verify", "--quiet", dsn=ledger)
    unreadable = _cli("replay", "--verify", "--quiet", dsn="postgresql://127.0.0.1:1/none")

    assert clean.returncode == 0, clean.stderr
    assert b"verified: 2400 record(s) over 1 partition(s)" in clean.stdout
    assert until.returncode == 0, until.stderr
    oracle = state.State()
    for record in RECORDS[:1000]:
        allocation.apply_record(oracle, record)
    assert json.loads((tmp_path / "s.json").read_bytes()) == document.state_document(oracle)
    assert differs.returncode == 1, differs.stderr
    assert b"DIFFERENCE at partition 0: node row default/" in differs.stderr
    assert b"pinned" in differs.stderr
    assert unreadable.returncode == 2, unreadable.stderr


async def test_replay_into_another_database_rebuilds_and_verifies(
    ledger: str, pg_empty_dsn: str
) -> None:
    rebuilt = _cli("replay", "--into", pg_empty_dsn, "--quiet", dsn=ledger)
    refused = _cli("replay", "--into", ledger, "--quiet", dsn=ledger)

    assert rebuilt.returncode == 0, rebuilt.stderr
    assert b"rebuilt into the target and verified: 2400 record(s)" in rebuilt.stdout
    assert refused.returncode == 2
    assert b"never writes the live projection" in refused.stderr
    live = pg_audit.PostgresAuditReader.from_dsn(ledger)
    target = pg_audit.PostgresAuditReader.from_dsn(pg_empty_dsn)
    try:
        rebuilt_rows, live_rows = await target.rows(), await live.rows()
        # The node history repeats a snapshot at the start of each batch that touches the node
        # again; the rebuild is batched otherwise (at every head), so only the changes compare.
        for rows in (rebuilt_rows, live_rows):
            rows.node_history = replay.changes_only(rows.node_history)
        assert rebuilt_rows == live_rows
        assert live_rows.node_history and live_rows.cluster_history
    finally:
        await live.close()
        await target.close()


async def test_the_story_of_an_address_names_each_event_and_proves_it(ledger: str) -> None:
    address = str(
        await _fetchval(ledger, "SELECT host(address) FROM ip_history ORDER BY id LIMIT 1")
    )
    story = await audit.story(
        _settings(ledger), "ip", address, cluster="default", at=None, prove=True
    )
    changes = story["changes"]
    assert changes and changes[0]["change"] == "held"
    for change in changes:
        assert change["event"] == events.decode(RECORDS[change["offset"]]).id
        assert change["change"] == "released" or address in change["decision"]["ips"]
        assert "ok" in proofs.check_document(change["proof"])


async def test_the_story_of_a_node_is_its_history_with_each_event_proved(ledger: str) -> None:
    node = str(
        await _fetchval(
            ledger,
            "SELECT name FROM node_history GROUP BY name ORDER BY count(*) DESC, name LIMIT 1",
        )
    )
    settings = _settings(ledger)
    story = await audit.story(settings, "node", node, cluster="default", at=None, prove=True)
    changes = story["changes"]
    assert changes and changes[0]["change"] == "added"
    assert len(changes) > 1
    for change in changes:
        assert change["event"] == events.decode(RECORDS[change["offset"]]).id
        assert "ok" in proofs.check_document(change["proof"])
        if change["change"] != "deleted":
            assert change["decision"]["type"].startswith(("node.", "pool.", "ip."))
    # Read from the history tables, not the log: the story stays when the log is gone.
    await _execute(ledger, "DELETE FROM log_record")
    again = await audit.story(settings, "node", node, cluster="default", at=None, prove=False)
    assert again["changes"] == [
        {k: v for k, v in change.items() if k != "proof"} for change in changes
    ]


async def test_the_state_at_a_log_time_equals_simulate_over_the_records_up_to_it(
    ledger: str,
) -> None:
    event_log = table_log.PostgresTableLog.from_dsn(ledger)
    live = pg_audit.PostgresAuditReader.from_dsn(ledger)
    try:
        stamps = [r.timestamp_ms or 0 for r in await event_log.read(0, 0, len(RECORDS), 0.0)]
        moment = datetime.datetime.fromtimestamp(stamps[1000] / 1000, datetime.UTC)
        until = replay.Until(time=moment)
        report = await replay.replay_partition(event_log, live, 0, 1, until=until)
    finally:
        await live.close()
        await event_log.close()
    # The table log's times are its appends' (300 records each): the prefix up to the time.
    upto = sum(1 for stamp in stamps if stamp <= stamps[1000])
    assert 1000 < upto < len(RECORDS)
    assert all(stamps[n] > stamps[1000] for n in range(upto, len(RECORDS)))
    oracle = state.State()
    for record in RECORDS[:upto]:
        allocation.apply_record(oracle, record)
    assert report.stopped_at == upto
    assert report.document == document.state_document(oracle)
