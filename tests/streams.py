"""Deterministic event streams for the service tests: a realistic mix plus bad records."""

from __future__ import annotations

import json
import random


def mixed_stream(
    count: int, *, seed: int = 7, clusters: tuple[str, ...] = ("default",)
) -> list[bytes]:
    """``count`` records: pools, node adds/deletes/adoptions, pod requests/releases, junk."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for cluster in clusters:
        out.append(
            json.dumps(
                {
                    "type": "pool.configured",
                    "id": f"{cluster}-pool",
                    "cluster": cluster,
                    "clusterPoolIPv4PodCIDRList": ["10.0.0.0/22"],
                    "clusterPoolIPv4MaskSize": 26,
                    "clusterPoolIPv6PodCIDRList": ["fd00::/118"],
                    "clusterPoolIPv6MaskSize": 122,
                }
            ).encode()
        )
    nodes = [f"node-{i}" for i in range(24)]
    owners = [f"ns/pod-{i}" for i in range(40)]
    while len(out) < count:
        n = len(out)
        cluster = rng.choice(clusters)
        roll = rng.random()
        base = {"id": f"e{n}", "cluster": cluster}
        if roll < 0.12:
            body = {"type": "node.added", "node": rng.choice(nodes), **base}
        elif roll < 0.16:
            body = {"type": "node.deleted", "node": rng.choice(nodes), **base}
        elif roll < 0.6:
            body = {
                "type": "ip.requested",
                "node": rng.choice(nodes),
                "owner": rng.choice(owners),
                **base,
            }
        elif roll < 0.9:
            body = {
                "type": "ip.released",
                "node": rng.choice(nodes),
                "owner": rng.choice(owners),
                **base,
            }
        elif roll < 0.93:
            body = {
                "type": "node.adopted",
                "node": rng.choice(nodes),
                "podCIDRs": [f"10.0.{rng.randrange(4)}.{rng.choice([0, 64, 128, 192])}/26"],
                **base,
            }
        elif roll < 0.95:
            out.append(b'{"type":"ip.requested","id":"broken"')
            continue
        elif roll < 0.97:
            body = {"type": "node.renamed", **base}
        else:
            body = {"type": "node.adopted", "node": "x", "podCIDRs": ["10.0.0.1/26"], **base}
        out.append(json.dumps(body).encode())
    return out


def key_of(record: bytes) -> bytes:
    """The record key a well-behaved producer sets: the event's cluster."""
    try:
        body = json.loads(record)
    except ValueError:
        return b"default"
    cluster = body.get("cluster", "default") if isinstance(body, dict) else "default"
    return str(cluster).encode()
