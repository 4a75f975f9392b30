"""Which log partition a cluster lives on: its home partition, from the record key.

A cluster's events must have one total order, so they all go to one partition of the log. Which
one is decided by the record key (the cluster name, UTF-8) the way Kafka's default partitioner
decides it: ``(murmur2(key) & 0x7fffffff) % N`` for a log of ``N`` partitions, the function of
the Java client and of aiokafka. Using Kafka's own function means a producer that only sets the
key (the normal case) puts every record where the allocator expects it. librdkafka (and kcat)
default to CRC-32 instead and must be told ``partitioner=murmur2_random``.

The allocator (``service.allocator.apply_records``) refuses a record that sits on another
partition than its cluster's home, so the decision depends on this function: it lives in the
pure core. The table log and the in-memory log place records with it too. Pure: no I/O.
"""

from __future__ import annotations

# Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2): seed and mixing constants.
_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit MurmurHash2 of ``data``, as an unsigned integer (0 to 2**32 - 1).

    The Java client returns the same bits as a signed ``int``.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length - length % 4
    # Little-endian 4-byte words, as the Java code assembles them byte by byte.
    for start in range(0, whole, 4):
        k = (int.from_bytes(data[start : start + 4], "little") * _M) & _MASK32
        k ^= k >> _R
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    tail = length - whole
    if tail:
        if tail == 3:
            h ^= data[whole + 2] << 16
        if tail >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` in a log of ``partitions``.

    A record without a key goes to partition 0 (Kafka's producer would pick one at random; no
    valid event is ever keyless, so such a record is refused wherever it lands).
    """
    if partitions < 1:
        raise ValueError(f"a log has at least 1 partition, not {partitions}")
    if key is None or partitions == 1:
        return 0
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def home_partition(cluster: str, partitions: int) -> int:
    """The partition ``cluster``'s events belong on: that of its name as the record key."""
    return partition_for(cluster.encode(), partitions)
