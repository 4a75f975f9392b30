"""Helpers for the pure-core unit tests: build wire events and apply them."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from service.domain import allocation, events, state

_ids = itertools.count()


def raw(type_: str, **fields: Any) -> bytes:
    """One wire record, with a fresh id unless given."""
    body = {"type": type_, "id": fields.pop("id", f"e{next(_ids)}"), **fields}
    return json.dumps(body).encode()


class Ledger:
    """A State plus the decisions of everything applied to it, for readable tests."""

    def __init__(self) -> None:
        self.state = state.State(track_changes=True)
        self.last_id = ""

    def __call__(self, type_: str, **fields: Any) -> dict[str, Any]:
        record = raw(type_, **fields)
        self.last_id = json.loads(record)["id"]
        decision, _ = allocation.apply_record(self.state, record)
        out: dict[str, Any] = json.loads(events.encode_decision(decision))
        return out

    def pool(
        self,
        v4: list[str] | None = None,
        m4: int | None = None,
        v6: list[str] | None = None,
        m6: int | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = dict(kw)
        if v4 is not None:
            fields["clusterPoolIPv4PodCIDRList"] = v4
            fields["clusterPoolIPv4MaskSize"] = m4
        if v6 is not None:
            fields["clusterPoolIPv6PodCIDRList"] = v6
            fields["clusterPoolIPv6MaskSize"] = m6
        return self("pool.configured", **fields)

    def node(self, name: str, cluster: str = "default") -> state.Node:
        return self.state.clusters[cluster].nodes[name]


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()
