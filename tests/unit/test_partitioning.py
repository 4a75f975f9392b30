"""The home partition of a cluster: Kafka's default partitioner, bit for bit.

aiokafka's producer is what places keyed records in Kafka, so its murmur2 and its default
partitioner are the oracle here: if ours ever differed, records that a plain producer wrote would
be refused as being on the wrong partition. The fixed vectors are the Java client's own (Kafka's
``UtilsTest.testMurmur2`` and the partitions the Java client gives with 1000 partitions).
"""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from service.domain import partitioning


def signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(
    ("key", "java_hash"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_gives_the_java_clients_hash(key: bytes, java_hash: int) -> None:
    assert signed(partitioning.murmur2(key)) == java_hash


@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_partition_for_matches_the_java_client_with_1000_partitions(
    key: bytes, partition: int
) -> None:
    assert partitioning.partition_for(key, 1000) == partition


def test_murmur2_and_partition_for_match_aiokafka_on_many_random_keys() -> None:
    rng = random.Random(20240607)
    partitioner = DefaultPartitioner()
    for _ in range(20_000):
        key = rng.randbytes(rng.randrange(0, 80))
        assert partitioning.murmur2(key) == aiokafka_murmur2(key), key
        partitions = rng.randrange(1, 64)
        everything = list(range(partitions))
        assert partitioning.partition_for(key, partitions) == partitioner(
            key, everything, everything
        ), (key, partitions)


@given(
    cluster=st.text(min_size=1, max_size=63),
    partitions=st.integers(min_value=1, max_value=512),
)
def test_home_partition_is_kafkas_partition_of_the_utf8_name(cluster: str, partitions: int) -> None:
    key = cluster.encode("utf-8")
    everything = list(range(partitions))
    home = partitioning.home_partition(cluster, partitions)
    assert home == DefaultPartitioner()(key, everything, everything)
    assert 0 <= home < partitions


def test_one_partition_holds_everything_and_no_key_goes_to_partition_zero() -> None:
    assert partitioning.partition_for(b"anything", 1) == 0
    assert partitioning.partition_for(None, 4) == 0
    with pytest.raises(ValueError, match="at least 1 partition"):
        partitioning.partition_for(b"k", 0)
