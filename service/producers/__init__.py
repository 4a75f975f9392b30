"""Producers ipledger ships, so that users need not write their own: they append events to the log.

- ``nodes``: ``NodeProducer``, the node-lifecycle producer of ``ipledger watch-nodes``: watches
  a cluster's v1 Nodes and appends ``node.added`` / ``node.deleted``, reconciling against what
  the log already says at every (re)start; optionally writes the node CIDRs ipledger decided to
  the Nodes' ``spec.podCIDRs``;
- ``leaks``: ``find_leaks``, the leak check of ``ipledger check --kubernetes``: the addresses
  whose owner pod no longer exists, and the ``ip.released`` events an operator may append. It
  appends nothing itself.

A producer reaches the outside through ports only (the event log, the read side, the cluster
client); the decisions stay the core's, read from the log like everyone else's.
"""

from __future__ import annotations

from service.producers.leaks import Leak, LeakReport, find_leaks
from service.producers.nodes import NodeProducer, ProducerMetrics

__all__ = ["Leak", "LeakReport", "NodeProducer", "ProducerMetrics", "find_leaks"]
