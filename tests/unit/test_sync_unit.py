"""The sync worker without services: pacing, coalescing, backoff, drift repair, adoption planning.

Runs ``service.sync`` against the in-memory ``MemoryClusterClient`` and ``MemorySyncStore``, which
pass the same contract suites as the lightkube client and the PostgreSQL store. The real API
server never answers 429 on demand, so the 429 / Retry-After and 5xx paths are exercised here,
with faults queued in the memory client; tests/integration/test_sync.py covers the rest against
the real server and database.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest
import yaml

from service import errors, ports, sync
from service.adapters import memory
from service.adapters.kubernetes.memory import MemoryClusterClient
from service.settings import KubeTarget, Settings
from tests import waiting
from tests.fakes import intent

pytestmark = pytest.mark.anyio

CLUSTER = "default"
MANIFESTS = Path(__file__).resolve().parents[2] / "compose" / "kubernetes"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the token bucket ------------------------------------------------------------------------


def test_bucket_serves_the_burst_at_once_then_one_slot_per_interval() -> None:
    clock = FakeClock()
    bucket = sync.TokenBucket(10.0, 3, clock=clock)

    waits = [bucket.reserve() for _ in range(6)]

    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])


def test_bucket_refills_with_time_but_never_beyond_the_burst() -> None:
    clock = FakeClock()
    bucket = sync.TokenBucket(10.0, 3, clock=clock)
    for _ in range(3):
        bucket.reserve()

    clock.now += 0.2
    assert [bucket.reserve(), bucket.reserve()] == [0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)

    clock.now += 60
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])


def test_a_pause_holds_every_slot_and_ends_without_a_burst() -> None:
    clock = FakeClock()
    bucket = sync.TokenBucket(10.0, 5, clock=clock)

    bucket.pause_until(clock.now + 2.0)

    assert bucket.reserve() == pytest.approx(2.1)
    assert bucket.reserve() == pytest.approx(2.2)
    clock.now += 2.2
    assert bucket.reserve() == pytest.approx(0.1)


def test_an_earlier_pause_does_not_shorten_a_later_one() -> None:
    clock = FakeClock()
    bucket = sync.TokenBucket(0, 1, clock=clock)

    bucket.pause_until(clock.now + 3.0)
    bucket.pause_until(clock.now + 1.0)

    assert bucket.reserve() == pytest.approx(3.0)


def test_rate_zero_means_no_limit_but_pauses_still_hold() -> None:
    clock = FakeClock()
    bucket = sync.TokenBucket(0, 1, clock=clock)

    assert [bucket.reserve() for _ in range(1000)] == [0.0] * 1000
    bucket.pause_until(clock.now + 0.5)
    assert bucket.reserve() == pytest.approx(0.5)


def test_bucket_refuses_nonsense() -> None:
    with pytest.raises(errors.ConfigurationError):
        sync.TokenBucket(-1, 1)
    with pytest.raises(errors.ConfigurationError):
        sync.TokenBucket(1, 0)


async def test_take_waits_for_its_slot() -> None:
    bucket = sync.TokenBucket(50.0, 2)
    started = anyio.current_time()

    for _ in range(7):
        await bucket.take()

    assert anyio.current_time() - started >= 5 / 50 - 0.01


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    settings = sync.SyncSettings(backoff_initial_s=0.5, backoff_max_s=4.0)

    delays = [sync.backoff_delay(n, None, settings) for n in range(1, 7)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert sync.backoff_delay(3, None, settings, jitter=0.5) == 1.0


def test_backoff_never_undercuts_retry_after_but_caps_absurd_ones() -> None:
    settings = sync.SyncSettings(backoff_initial_s=0.5, retry_after_max_s=60.0)

    assert sync.backoff_delay(1, 7.0, settings) == 7.0
    assert sync.backoff_delay(1, 0.1, settings) == 0.5
    assert sync.backoff_delay(1, 86_400.0, settings) == 60.0


# --- coalescing -------------------------------------------------------------------------------


def test_pending_changes_of_a_node_coalesce_into_its_latest_state() -> None:
    queue = sync.NodeQueue()

    for version, cidr in enumerate(["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"], start=1):
        assert queue.offer(intent("a", version, cidr))
    queue.offer(intent("b", 2, "10.0.9.0/24"))

    first, second = queue.take(), queue.take()
    assert first is not None and second is not None
    assert (first.name, first.version) == ("a", 3)
    assert [str(c) for c in first.pod_cidrs] == ["10.0.3.0/24"]
    assert second.name == "b"
    assert queue.take() is None
    assert queue.coalesced == 2


def test_a_node_in_flight_is_not_written_again_until_its_write_ends() -> None:
    queue = sync.NodeQueue()
    queue.offer(intent("a", 1, "10.0.1.0/24"))
    flying = queue.take()
    assert flying is not None

    queue.offer(intent("a", 2, "10.0.2.0/24"))
    queue.offer(intent("a", 3, "10.0.3.0/24"))
    assert queue.take() is None
    queue.done(flying)

    latest = queue.take()
    assert latest is not None and latest.version == 3
    assert queue.coalesced == 1


def test_the_version_in_flight_is_not_queued_again() -> None:
    queue = sync.NodeQueue()
    queue.offer(intent("a", 1, "10.0.1.0/24"), repair=True)
    flying = queue.take()
    assert flying is not None

    assert not queue.offer(intent("a", 1, "10.0.1.0/24"))
    queue.done(flying)

    assert queue.take() is None
    assert len(queue) == 0


def test_offers_older_than_what_was_written_are_stale() -> None:
    queue = sync.NodeQueue()
    queue.offer(intent("a", 5, "10.0.5.0/24"))
    written = queue.take()
    assert written is not None
    queue.done(written)

    assert not queue.offer(intent("a", 4, "10.0.4.0/24"))
    assert not queue.offer(intent("a", 5, "10.0.5.0/24"))
    # A resync may ask to write the same version again: the object drifted.
    assert queue.offer(intent("a", 5, "10.0.5.0/24"), repair=True)
    assert not queue.offer(intent("a", 5, "10.0.5.0/24"), repair=True)


def test_a_failed_write_goes_first_in_line_and_a_newer_state_replaces_it() -> None:
    queue = sync.NodeQueue()
    for name in ("a", "b"):
        queue.offer(intent(name, 1, "10.0.1.0/24"))
    a = queue.take()
    assert a is not None and a.name == "a"

    queue.retry(a)
    again = queue.take()
    assert again is not None and again.name == "a"
    queue.offer(intent("a", 2, "10.0.2.0/24"))
    queue.retry(again)

    retried = queue.take()
    assert retried is not None and (retried.name, retried.version) == ("a", 2)


# --- the mirror over the memory client ---------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[MemoryClusterClient]:
    memory = MemoryClusterClient()
    yield memory
    await memory.close()


class Outcomes:
    def __init__(self) -> None:
        self.items: list[tuple[str, int, str | None]] = []

    def __call__(self, name: str, version: int, error: str | None) -> None:
        self.items.append((name, version, error))


async def run_mirror(
    mirror: sync.Mirror, offers: Sequence[ports.NodeIntent], expect_outcomes: int
) -> None:
    outcomes = mirror.on_outcome
    assert isinstance(outcomes, Outcomes)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(mirror.run_writers)
        for offer in offers:
            mirror.offer(offer)
        await waiting.until(
            lambda: len(outcomes.items) >= expect_outcomes and mirror.idle(),
            timeout=5,
            what=lambda: f"{expect_outcomes} outcomes and an idle mirror (got {outcomes.items})",
        )
        tasks.cancel_scope.cancel()


def new_mirror(client: MemoryClusterClient, **settings: object) -> sync.Mirror:
    values: dict[str, object] = {"qps": 0, "backoff_initial_s": 0.02, **settings}
    return sync.Mirror(
        CLUSTER,
        client,
        sync.SyncSettings(**values),  # type: ignore[arg-type]
        on_outcome=Outcomes(),
    )


def outcomes_of(mirror: sync.Mirror) -> list[tuple[str, int, str | None]]:
    assert isinstance(mirror.on_outcome, Outcomes)
    return mirror.on_outcome.items


async def test_changes_arriving_during_a_write_end_in_one_more_write(
    client: MemoryClusterClient,
) -> None:
    mirror = new_mirror(client)
    client.write_gate = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(mirror.run_writers)
        mirror.offer(intent("a", 1, "10.0.1.0/24"))
        await waiting.until(lambda: len(client.writes()) == 1, timeout=5, what="the first write")
        for version in (2, 3, 4):
            mirror.offer(intent("a", version, f"10.0.{version}.0/24"))
        client.write_gate.set()
        await waiting.until(
            lambda: len(outcomes_of(mirror)) == 2 and mirror.idle(),
            timeout=5,
            what="two outcomes and an idle mirror",
        )
        tasks.cancel_scope.cancel()

    assert [(w.verb, w.name) for w in client.writes()] == [("apply", "a"), ("apply", "a")]
    assert client.nodes["a"].pod_cidrs == ("10.0.4.0/24",)
    assert [(n, v) for n, v, _ in outcomes_of(mirror)] == [("a", 1), ("a", 4)]
    assert mirror.metrics.coalesced == 2


async def test_what_is_already_true_costs_no_request(client: MemoryClusterClient) -> None:
    mirror = new_mirror(client)
    client.edit("a", pod_cidrs=["10.0.1.0/24", "fd00::/120"], manager="ipledger")
    mirror.replace_observed(await client.list_nodes())

    await run_mirror(mirror, [intent("a", 7, "10.0.1.0/24", "fd00::/120")], 1)

    assert client.writes() == []
    assert outcomes_of(mirror) == [("a", 7, None)]
    assert mirror.metrics.unchanged == 1


async def test_status_error_is_written_set_then_cleared_with_an_empty_string(
    client: MemoryClusterClient,
) -> None:
    mirror = new_mirror(client)

    await run_mirror(mirror, [intent("a", 1, error="pool exhausted")], 1)
    assert [w.verb for w in client.writes()] == ["apply", "status"]
    assert client.nodes["a"].error == "pool exhausted"

    await run_mirror(mirror, [intent("a", 2, "10.0.1.0/24")], 2)
    assert [w.verb for w in client.writes()] == ["apply", "status", "apply", "status"]
    assert client.nodes["a"].error == ""
    assert client.nodes["a"].pod_cidrs == ("10.0.1.0/24",)


async def test_no_error_on_a_new_object_is_not_written(client: MemoryClusterClient) -> None:
    mirror = new_mirror(client)

    await run_mirror(mirror, [intent("a", 1, "10.0.1.0/24")], 1)

    assert [w.verb for w in client.writes()] == ["apply"]


async def test_a_429_pauses_every_request_for_its_retry_after(
    client: MemoryClusterClient,
) -> None:
    # The real API server does not answer 429 on demand, so the memory client injects it.
    mirror = new_mirror(client, concurrency=1)
    client.faults.append(errors.ClusterApiThrottledError("slow down", status=429, retry_after=0.3))

    await run_mirror(mirror, [intent(n, 1, "10.0.1.0/24") for n in ("a", "b", "c")], 3)

    first, *later = client.writes()
    assert (first.verb, first.name) == ("apply", "a")
    assert [w.name for w in later] == ["a", "b", "c"]
    assert all(w.at - first.at >= 0.3 for w in later)
    assert mirror.metrics.throttled == 1
    assert {n for n, _, e in outcomes_of(mirror) if e is None} == {"a", "b", "c"}


async def test_server_errors_back_off_exponentially_then_recover(
    client: MemoryClusterClient,
) -> None:
    mirror = new_mirror(client, concurrency=1, backoff_initial_s=0.04)
    for _ in range(3):
        client.faults.append(errors.ClusterApiUnavailableError("503", status=503))

    await run_mirror(mirror, [intent("a", 1, "10.0.1.0/24")], 1)

    times = [w.at for w in client.writes()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    # Jitter scales each pause by 0.5..1: at least half of 0.04, 0.08, 0.16.
    assert [g >= m for g, m in zip(gaps, [0.02, 0.04, 0.08], strict=True)] == [True] * 3
    assert outcomes_of(mirror) == [("a", 1, None)]
    assert mirror.metrics.retries == 3


async def test_a_rejected_write_is_recorded_and_not_retried(client: MemoryClusterClient) -> None:
    mirror = new_mirror(client)
    client.faults.append(errors.ClusterApiRejectedError("422 Invalid", status=422))

    await run_mirror(mirror, [intent("a", 1, "10.0.1.0/24")], 1)

    assert len(client.writes()) == 1
    ((name, version, error),) = outcomes_of(mirror)
    assert (name, version) == ("a", 1)
    assert error is not None and "422 Invalid" in error


async def test_without_create_missing_a_node_waits_for_its_ciliumnode(
    client: MemoryClusterClient,
) -> None:
    mirror = new_mirror(client, create_missing=False)

    await run_mirror(mirror, [intent("a", 1, "10.0.1.0/24")], 1)
    assert outcomes_of(mirror) == [("a", 1, sync.WAITING_FOR_CILIUMNODE)]
    assert [r.verb for r in client.requests] == ["get"]
    assert mirror.waiting == {"a"}

    client.edit("a", addresses=["192.0.2.1"], manager="cilium-agent")
    # Same version: the feed does not offer it again; the resync's repair offer is taken.
    assert not mirror.offer(intent("a", 1, "10.0.1.0/24"))
    assert mirror.offer(intent("a", 1, "10.0.1.0/24"), repair=True)
    await run_mirror(mirror, [], 2)
    assert outcomes_of(mirror)[-1] == ("a", 1, None)
    assert client.nodes["a"].pod_cidrs == ("10.0.1.0/24",)
    assert client.nodes["a"].addresses == ("192.0.2.1",)
    assert mirror.waiting == set()


async def test_deleted_nodes_are_left_alone_unless_orphans_are_deleted(
    client: MemoryClusterClient,
) -> None:
    client.edit("a", pod_cidrs=["10.0.1.0/24"], manager="ipledger")
    keep = new_mirror(client)
    keep.replace_observed(await client.list_nodes())
    await run_mirror(keep, [intent("a", 2, deleted=True)], 1)
    assert "a" in client.nodes

    remove = new_mirror(client, delete_orphans=True)
    remove.replace_observed(await client.list_nodes())
    await run_mirror(remove, [intent("a", 2, deleted=True)], 1)
    assert "a" not in client.nodes
    assert [w.verb for w in client.writes()] == ["delete"]


async def test_pod_addresses_are_mirrored_by_family(client: MemoryClusterClient) -> None:
    mirror = new_mirror(client, mirror_pod_ips=True)
    pods = {"10.0.1.5": "default/web-1", "fd00::5": "default/web-1"}

    await run_mirror(mirror, [intent("a", 1, "10.0.1.0/24", "fd00::/120", pod_ips=pods)], 1)

    assert client.nodes["a"].pool == {"10.0.1.5": "default/web-1"}
    assert client.nodes["a"].ipv6_pool == {"fd00::5": "default/web-1"}


def test_an_absent_pool_and_an_empty_one_match() -> None:
    observed = ports.ObservedNode(name="a", pod_cidrs=("10.0.1.0/24",))

    assert sync.spec_matches(intent("a", 1, "10.0.1.0/24", pod_ips={}), observed, True)
    assert not sync.spec_matches(
        intent("a", 1, "10.0.1.0/24", pod_ips={"10.0.1.9": "x"}), observed, True
    )
    assert sync.error_matches(intent("a", 1), observed)


async def test_the_rate_limit_spaces_requests(client: MemoryClusterClient) -> None:
    mirror = new_mirror(client, qps=100.0, burst=5, concurrency=4)

    await run_mirror(mirror, [intent(f"n{i}", 1, "10.0.1.0/24") for i in range(25)], 25)

    times = sorted(w.at for w in client.writes())
    assert len(times) == 25
    assert times[-1] - times[0] >= (25 - 5) / 100 - 0.01


# --- a whole cluster worker over an in-memory store ---------------------------------------------


async def test_a_hand_edit_is_put_back_at_the_resync_and_logged(
    client: MemoryClusterClient, caplog: pytest.LogCaptureFixture
) -> None:
    store = memory.MemorySyncStore()
    store.tables.put(CLUSTER, intent("a", 3, "10.0.1.0/24"))
    worker = sync.ClusterSync(
        CLUSTER, client, store, sync.SyncSettings(qps=0, poll_interval_s=0.05, flush_interval_s=0)
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await waiting.until(
            lambda: store.tables.progress(CLUSTER).get("a") == (3, None),
            timeout=5,
            what="node a's version 3 mirrored",
        )

        client.edit("a", pod_cidrs=["10.9.9.0/24"], manager="kubectl")
        with caplog.at_level(logging.WARNING, logger="ipledger.sync"):
            worker.request_resync()
            await waiting.until(
                lambda: client.nodes["a"].pod_cidrs == ("10.0.1.0/24",),
                timeout=5,
                what="the drift on node a repaired",
            )
        stop.set()

    assert worker.metrics.drift_repairs == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "['10.9.9.0/24']" in warning.getMessage()
    assert "kubectl" in warning.getMessage()
    assert store.tables.holder(CLUSTER) is None  # released on the way out


async def test_a_change_notified_while_writing_is_picked_up(client: MemoryClusterClient) -> None:
    store = memory.MemorySyncStore()
    worker = sync.ClusterSync(
        CLUSTER, client, store, sync.SyncSettings(qps=0, poll_interval_s=30, flush_interval_s=0)
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await waiting.until(lambda: worker.metrics.resyncs == 1, timeout=5, what="the first resync")
        for version in range(1, 6):
            store.tables.put(CLUSTER, intent("a", version, f"10.0.{version}.0/24"))
            store.tables.put(CLUSTER, intent(f"other-{version}", version, "10.1.0.0/24"))
        # The fallback poll is 30 s away: only the notification can bring these in time.
        await waiting.until(
            lambda: store.tables.progress(CLUSTER).get("a") == (5, None),
            timeout=3,
            what="node a's version 5 mirrored on the notification",
        )
        stop.set()

    assert client.nodes["a"].pod_cidrs == ("10.0.5.0/24",)
    assert len({f"other-{v}" for v in range(1, 6)} & set(client.nodes)) == 5


async def test_a_second_worker_waits_for_the_lock(client: MemoryClusterClient) -> None:
    store = memory.MemorySyncStore()
    other = memory.MemorySyncStore(store.tables)
    assert await other.try_lock(CLUSTER)
    worker = sync.ClusterSync(
        CLUSTER, client, store, sync.SyncSettings(qps=0, lock_poll_s=0.01, flush_interval_s=0)
    )
    store.tables.put(CLUSTER, intent("a", 1, "10.0.1.0/24"))
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await waiting.until(
            lambda: worker.metrics.lock_waits >= 3, timeout=5, what="three waits for the lock"
        )
        assert not worker.metrics.leader and client.requests == []
        await other.unlock(CLUSTER)
        await waiting.until(
            lambda: store.tables.progress(CLUSTER).get("a") == (1, None),
            timeout=5,
            what="node a mirrored once the lock came free",
        )
        stop.set()
    assert worker.metrics.takeovers == 1


# --- adoption planning ------------------------------------------------------------------------

POOL = ports.ClusterPool(
    ipv4_cidrs=(ipaddress.IPv4Network("10.0.0.0/16"),),
    ipv4_mask=24,
    ipv6_cidrs=(ipaddress.IPv6Network("fd00::/104"),),
    ipv6_mask=120,
)


def observed(name: str, *cidrs: str, addresses: Sequence[str] = ()) -> ports.ObservedNode:
    return ports.ObservedNode(name=name, pod_cidrs=cidrs, addresses=tuple(addresses))


def test_adoption_takes_nodes_inside_the_pool_and_reports_the_others() -> None:
    listed = [
        observed("good", "fd00::100/120", "10.0.7.0/24", addresses=["192.0.2.7"]),
        observed("outside", "10.1.0.0/24"),
        observed("wrong-mask", "10.0.8.0/25"),
        observed("bad", "10.0.9.1/24"),
        observed("two-v4", "10.0.1.0/24", "10.0.2.0/24"),
        observed("v6-only", "fd00::200/120"),
        observed("empty"),
        observed("known", "10.0.3.0/24"),
        observed("taken", "10.0.4.0/24"),
    ]
    known = {"known": ("10.0.3.0/24",), "taken": ("10.0.5.0/24",)}

    plan = sync.plan_adoption(CLUSTER, listed, POOL, known)

    assert [(e.node, e.pod_cidrs, e.addresses) for e in plan.events] == [
        ("good", ("10.0.7.0/24", "fd00::100/120"), ("192.0.2.7",)),
        ("v6-only", ("fd00::200/120",), ()),
    ]
    refused = dict(plan.refused)
    assert set(refused) == {"outside", "wrong-mask", "bad", "two-v4", "taken"}
    assert "outside the pool" in refused["outside"]
    assert "/25" in refused["wrong-mask"]
    assert "invalid CIDR" in refused["bad"]
    assert "already allocated" in refused["taken"]
    assert plan.already == ["known"]
    assert plan.empty == ["empty"]
    assert all(e.cluster == CLUSTER and e.id.startswith("adopt-") for e in plan.events)


def test_adoption_event_ids_are_stable_across_runs() -> None:
    listed = [observed("good", "10.0.7.0/24")]

    first = sync.plan_adoption(CLUSTER, listed, POOL, {})
    second = sync.plan_adoption(CLUSTER, listed, POOL, {})

    assert [e.id for e in first.events] == [e.id for e in second.events]


def test_a_family_the_pool_does_not_enable_is_refused() -> None:
    v4_only = ports.ClusterPool(ipv4_cidrs=(ipaddress.IPv4Network("10.0.0.0/8"),), ipv4_mask=24)

    plan = sync.plan_adoption(CLUSTER, [observed("a", "10.0.1.0/24", "fd00::/120")], v4_only, {})

    assert plan.events == []
    assert "does not enable" in dict(plan.refused)["a"]


# --- the deployment manifests -------------------------------------------------------------------


def test_rbac_grants_only_what_the_worker_uses() -> None:
    documents = list(yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()))
    by_kind = {d["kind"]: d for d in documents}

    rules = {
        (group, resource): sorted(rule["verbs"])
        for rule in by_kind["ClusterRole"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("cilium.io", "ciliumnodes"): sorted(["get", "list", "watch", "create", "patch"]),
        ("cilium.io", "ciliumnodes/status"): ["patch"],
    }
    binding = by_kind["ClusterRoleBinding"]
    account = by_kind["ServiceAccount"]["metadata"]
    assert binding["roleRef"]["name"] == by_kind["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    (deployment,) = yaml.safe_load_all((MANIFESTS / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]
    assert deployment["metadata"]["namespace"] == account["namespace"]
    assert pod["containers"][0]["args"] == ["sync"]


# --- settings ---------------------------------------------------------------------------------


def test_each_cluster_maps_to_a_kubeconfig_and_context() -> None:
    env = {"IPLEDGER_KUBECONFIGS": "east=/etc/kube/east, west=/etc/kube/all#west-admin,north=#n"}

    targets = Settings.from_env(env).kube_targets()

    assert targets == {
        "east": KubeTarget(kubeconfig=Path("/etc/kube/east"), context=None),
        "west": KubeTarget(kubeconfig=Path("/etc/kube/all"), context="west-admin"),
        "north": KubeTarget(kubeconfig=None, context="n"),
    }


def test_one_cluster_uses_the_default_kubeconfig_unless_told() -> None:
    assert Settings.from_env({}).kube_targets() == {"default": KubeTarget()}
    told = Settings.from_env(
        {
            "IPLEDGER_SYNC_CLUSTER": "east",
            "IPLEDGER_KUBECONFIG": "/k",
            "IPLEDGER_KUBE_CONTEXT": "c",
        }
    )
    assert told.kube_targets() == {"east": KubeTarget(kubeconfig=Path("/k"), context="c")}


def test_sync_settings_are_read_and_checked() -> None:
    settings = Settings.from_env(
        {
            "IPLEDGER_SYNC_QPS": "0",
            "IPLEDGER_SYNC_BURST": "5",
            "IPLEDGER_RESYNC_INTERVAL_S": "30",
            "IPLEDGER_SYNC_CREATE_MISSING": "false",
            "IPLEDGER_SYNC_DELETE_ORPHANS": "yes",
            "IPLEDGER_SYNC_MIRROR_POD_IPS": "1",
        }
    )
    assert (settings.sync_qps, settings.sync_burst, settings.resync_interval_s) == (0, 5, 30)
    assert (settings.create_missing, settings.delete_orphans, settings.mirror_pod_ips) == (
        False,
        True,
        True,
    )
    for bad in (
        {"IPLEDGER_SYNC_QPS": "-1"},
        {"IPLEDGER_SYNC_QPS": "fast"},
        {"IPLEDGER_SYNC_BURST": "0"},
        {"IPLEDGER_SYNC_CREATE_MISSING": "maybe"},
        {"IPLEDGER_KUBECONFIGS": "east"},
        {"IPLEDGER_KUBECONFIGS": "east=/a,east=/b"},
    ):
        with pytest.raises(errors.ConfigurationError):
            Settings.from_env(bad)
