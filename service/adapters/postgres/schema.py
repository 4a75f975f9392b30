"""The PostgreSQL schema of ipledger: the one SQLAlchemy ``MetaData`` every table registers into.

Alembic's ``migrations/env.py`` uses :data:`metadata` as ``target_metadata``, and
``tests/integration/test_migrations.py`` fails when the migrations and this module differ. Other
modules that own tables (the projection) import :data:`metadata` from here and add their tables
to it; nothing else defines a ``MetaData``. This module only declares: it opens no connection.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import INET

# Constraint and index names are part of the schema that migrations must reproduce exactly, so
# they are derived from a convention instead of left to the database's defaults.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


# --- The table log (service.adapters.postgres.table_log) -----------------------------------------
#
# ``log_head`` holds, per partition, the offset the next appended record gets. An appender
# increments it with ``UPDATE ... RETURNING`` and keeps that row lock until it commits, so the
# appenders of one partition commit one after another, in offset order: a reader never sees
# offset n + 1 before offset n. The number of rows is the number of partitions.

log_head = sa.Table(
    "log_head",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.CheckConstraint("partition >= 0", name="partition_not_negative"),
    sa.CheckConstraint("next_offset >= 0", name="next_offset_not_negative"),
)

# Append-only: rows are inserted with the offsets reserved in ``log_head`` and never updated.
log_record = sa.Table(
    "log_record",
    metadata,
    sa.Column(
        "partition",
        sa.Integer,
        sa.ForeignKey(log_head.c.partition),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key", sa.LargeBinary, nullable=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("appended_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('"offset" >= 0', name="offset_not_negative"),
)


# --- The projection (service.adapters.postgres.projection) ---------------------------------------
#
# Written only by the allocator, one transaction per batch, together with the consumed offset:
# the projection never runs ahead of or behind the offset it claims. ``version`` of a node is
# the log offset of the batch that last changed it, so versions only grow (a cluster lives on
# one partition) and the sync worker can compare them with what it has mirrored.

# The single-writer lease per log partition. ``token`` grows with every takeover; each batch
# commit checks it (fencing), so a writer that lost the role cannot commit.
writer_lease = sa.Table(
    "writer_lease",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

# The ``ipledger run`` processes sharing the table log's partitions (adapters.postgres.members):
# one row per process, its heartbeat moving ``expires_at``; a row past it is a dead member.
allocator_member = sa.Table(
    "allocator_member",
    metadata,
    sa.Column("member", sa.Text, primary_key=True),
    sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

# The truth about how far the log has been applied: the next offset to read, per partition.
consumer_offset = sa.Table(
    "consumer_offset",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("log", sa.Text, nullable=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Per cluster: the pool in force and the allocator's own state (cursors, next arrival number).
cluster = sa.Table(
    "cluster",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("ipv4_cidrs", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("ipv4_mask", sa.Integer, nullable=True),
    sa.Column("ipv6_cidrs", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("ipv6_mask", sa.Integer, nullable=True),
    # {"ipv4": [cursor per element], "ipv6": [...]}: IPv6 slots exceed bigint, JSON keeps them.
    sa.Column("cursors", sa.JSON, nullable=False),
    # The arrival number the next new node of the cluster gets (node.seq).
    sa.Column("next_seq", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)

node = sa.Table(
    "node",
    metadata,
    sa.Column("cluster", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    # Arrival number in the cluster: the order the core serves nodes in, so the order they are
    # loaded in (never reused; -1 on a tombstone).
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("pod_cidrs", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("conflict", sa.Text, nullable=True),
    sa.Column("addresses", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("pinned", sa.Boolean, nullable=False),
    # Derived, for readers: not pinned and lacking a CIDR of an enabled family.
    sa.Column("waiting", sa.Boolean, nullable=False),
    # Next-fit cursor of each pod range, IPv4 first, as pod_cidrs.
    sa.Column("cursors", sa.ARRAY(sa.BigInteger), nullable=False),
    # A deleted node keeps a tombstone row so the sync worker learns of the deletion.
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_node_version", "cluster", "version"),
)

# Current pod addresses: one row per held address.
pod_ip = sa.Table(
    "pod_ip",
    metadata,
    sa.Column("cluster", sa.Text, primary_key=True),
    sa.Column("address", INET, primary_key=True),
    sa.Column("node", sa.Text, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("since_offset", sa.BigInteger, nullable=False),
    sa.Column("since_time", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_pod_ip_node", "cluster", "node"),
    sa.Index("ix_pod_ip_owner", "cluster", "owner"),
)

# Every finished holding of an address: "who held X at time T, and why". A holding still in
# progress lives in ``pod_ip`` (its ``since_*``) and moves here when the address is given back,
# so this table is insert-only: the allocator never updates or scans it on its hot path. The
# view ``ip_holding`` (migrations) is the union of both, for point-in-time queries.
ip_history = sa.Table(
    "ip_history",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("cluster", sa.Text, nullable=False),
    sa.Column("address", INET, nullable=False),
    sa.Column("node", sa.Text, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("from_offset", sa.BigInteger, nullable=False),
    sa.Column("from_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("to_offset", sa.BigInteger, nullable=False),
    sa.Column("to_time", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_ip_history_address_time", "cluster", "address", "from_time"),
    sa.Index("ix_ip_history_owner", "cluster", "owner", "from_time"),
    sa.Index("ix_ip_history_node", "cluster", "node", "from_time"),
)

# What each event changed of a node that a reader sees, one row per event and node
# (service.allocator.history): the node as of any log offset is its latest row at or before
# that offset, and ``deleted`` rows end it. Insert-only and written with COPY by the batch's
# commit; pod address events write nothing here (they change only the node's cursor), so the
# rows grow with node events, not with pods. No "to" offset: closing a row would mean updating
# it, and the next row's offset is that end anyway.
node_history = sa.Table(
    "node_history",
    metadata,
    sa.Column("cluster", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("pod_cidrs", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("conflict", sa.Text, nullable=True),
    sa.Column("addresses", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("pinned", sa.Boolean, nullable=False),
    sa.Column("waiting", sa.Boolean, nullable=False),
)
# The readers' nodes as of an offset go by name bytewise: this index gives them in that order
# whatever the database's collation. Migration 0009 creates it on ``name COLLATE "C"``; a
# column's collation in an index is not reflected, so it is declared here on the columns (the
# schema comparison of tests/integration/test_migrations.py sees it as such).
sa.Index(
    "ix_node_history_name_c", node_history.c.cluster, node_history.c.name, node_history.c.offset
)

# Every pool a cluster had, from the event that configured it (the first row: the event that
# created the cluster). Insert-only, a row per pool.configured that changed something.
cluster_history = sa.Table(
    "cluster_history",
    metadata,
    sa.Column("cluster", sa.Text, primary_key=True),
    sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ipv4_cidrs", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("ipv4_mask", sa.Integer, nullable=True),
    sa.Column("ipv6_cidrs", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("ipv6_mask", sa.Integer, nullable=True),
)

# What each log record did: the audit trail and the outbox of the decisions topic.
decision = sa.Table(
    "decision",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
    # NULL for a rejected record that names no valid cluster.
    sa.Column("cluster", sa.Text, nullable=True),
    sa.Column("event_id", sa.Text, nullable=True),
    sa.Column("type", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("event_time", sa.DateTime(timezone=True), nullable=True),
    sa.Column("log_time", sa.DateTime(timezone=True), nullable=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    # The record's leaf in the partition's Merkle tree (service.domain.merkle.leaf_hash of
    # ``body`` and the record's bytes); NULL on rows written before the tree existed.
    sa.Column("leaf", sa.LargeBinary, nullable=True),
    sa.Index("ix_decision_event_id", "cluster", "event_id"),
)
# The readers' as_of=<time> (``applied_offset(at_time=...)``): the last record at or before a
# time is one descent of this index. The expression is the readers' own (migration 0007).
sa.Index(
    "ix_decision_time",
    decision.c.partition,
    sa.func.coalesce(decision.c.event_time, decision.c.log_time, decision.c.applied_at),
    decision.c.offset,
)

# The heads of each partition's Merkle tree (docs/audits.md): one every N records and at every
# batch boundary, written in the batch's transaction. ``body`` is the head as published (JSON,
# signature included), ``hash`` SHA-256 of its signed bytes (the next head's ``previous``), and
# ``frontier`` the 32-byte roots of the tree's perfect subtrees at ``size`` (its right edge),
# concatenated: what a writer needs to go on extending the tree after a restart.
tree_head = sa.Table(
    "tree_head",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("frontier", sa.LargeBinary, nullable=False),
)

# The root of every perfect subtree [start, start + 2^level) of a partition's tree with a level
# of merkle.STORED_LEVEL or more, written with the batch that completed it (migration 0008): a
# proof reads O(log n) of these instead of every leaf. Stored once; trees recorded before 0008
# have none (their proofs read leaves).
tree_node = sa.Table(
    "tree_node",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("start", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
)

# Records that were not valid events, kept raw with the reason (nothing is dropped silently).
rejection = sa.Table(
    "rejection",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("key", sa.LargeBinary, nullable=True),
    sa.Column("raw", sa.LargeBinary, nullable=False),
    sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
)

# How far the decisions outbox has been published, per partition.
outbox_offset = sa.Table(
    "outbox_offset",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
)

# The sync worker's durable progress: the node version last mirrored onto its CiliumNode.
node_sync = sa.Table(
    "node_sync",
    metadata,
    sa.Column("cluster", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("synced_version", sa.BigInteger, nullable=False),
    sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
)
