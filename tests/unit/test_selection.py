"""Each algorithm's promise, checked as a property with hypothesis (pure: no I/O)."""

from __future__ import annotations

import math
import random
import sys
from collections import Counter
from functools import reduce
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer import selection as algorithms
from balancer.core.address import Address
from balancer.pool.backend import Backend
from balancer.selection.least_connections import LeastConnections, load
from balancer.selection.power_of_two import PowerOfTwo
from balancer.selection.round_robin import (
    RoundRobin,
    SmoothRotation,
    smooth_run,
    smooth_schedule,
)
from balancer.selection.source_hash import (
    MAX_POINTS,
    POINTS_PER_WEIGHT,
    SourceHash,
    points_per_weight,
)
from balancer.selection.weighted_random import WeightedRandom

weights_strategy = st.lists(st.integers(1, 20), min_size=1, max_size=8)


def backends(weights: list[int]) -> list[Backend]:
    return [Backend(Address("127.0.0.1", 9000 + i), w) for i, w in enumerate(weights)]


def first(algorithm: algorithms.Algorithm, client: str = "10.0.0.1") -> Backend:
    return next(iter(algorithm.candidates(client)))


# -- round robin -------------------------------------------------------------------------------


@given(weights_strategy, st.integers(1, 4))
def test_round_robin_exact_shares_over_whole_cycles(weights: list[int], cycles: int) -> None:
    pool = backends(weights)
    rr = RoundRobin()
    rr.update(pool)
    divisor = reduce(math.gcd, weights)
    cycle = sum(weights) // divisor
    picks = Counter(first(rr).key for _ in range(cycle * cycles))
    assert picks == {b.key: b.weight // divisor * cycles for b in pool}


@given(weights_strategy)
def test_round_robin_is_smooth(weights: list[int]) -> None:
    """At every point of a cycle, each backend is within two picks of its exact share: picks
    are interleaved, never sent in a burst to one backend and then made up for."""
    schedule = smooth_schedule(weights)
    total = len(schedule)
    share = [w / sum(weights) for w in weights]
    counts = [0] * len(weights)
    for made, index in enumerate(schedule, 1):
        counts[index] += 1
        assert all(abs(c - made * p) < 2 for c, p in zip(counts, share, strict=True))
    assert sum(counts) == total


@given(weights_strategy)
def test_candidates_are_every_backend_once(weights: list[int]) -> None:
    pool = backends(weights)
    for algorithm in (RoundRobin(), LeastConnections(), WeightedRandom(random.Random(1)),
                      PowerOfTwo(random.Random(2)), SourceHash()):  # fmt: skip
        algorithm.update(pool)
        order = [b.key for b in algorithm.candidates("192.0.2.7")]
        assert sorted(order) == sorted(b.key for b in pool)


def nginx_smooth_run(
    weights: list[int], start: list[int], picks: int
) -> tuple[list[int], list[int]]:
    """Smooth weighted round-robin as nginx writes it: every weight added to its backend's
    current weight, the highest (the first of equals) picked, and it pays the total."""
    total, current, order = sum(weights), list(start), []
    for _ in range(picks):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = current.index(max(current))
        current[best] -= total
        order.append(best)
    return order, current


@settings(max_examples=300)
@given(st.data())
def test_round_robin_picks_are_nginxs(data: st.DataObject) -> None:
    """The picks compare one backend per distinct weight; they must be exactly nginx's, from
    any current weights and for several cycles (past the point where the bases are reset)."""
    weights = data.draw(st.lists(st.sampled_from([1, 2, 3, 5, 8]), min_size=1, max_size=12))
    bound = 2 * sum(weights)
    start = data.draw(st.lists(st.integers(-bound, bound), min_size=len(weights),
                               max_size=len(weights)))  # fmt: skip
    picks = data.draw(st.integers(0, 4 * sum(weights)))
    assert smooth_run(weights, start, picks) == nginx_smooth_run(weights, start, picks)


class NginxRotation(SmoothRotation):
    """The same carried-over state, picked the plain way: every current weight advanced."""

    def pick(self) -> int:
        current = self.advance()
        best = current.index(max(current))
        self.charge(best)
        return best


@settings(max_examples=200)
@given(
    st.lists(st.integers(1, 4), min_size=2, max_size=5),
    st.lists(st.tuples(st.integers(1, 31), st.integers(0, 300)), min_size=1, max_size=6),
)
def test_round_robin_rotation_is_nginxs_across_rebuilds(
    weights: list[int], phases: list[tuple[int, int]]
) -> None:
    """Picks kept and walked again once a cycle comes back, across rebuilds that change who is
    in rotation (each phase a subset, by bit mask) and long enough for several cycles."""
    keys = [f"b{i}" for i in range(len(weights))]
    fast, plain = SmoothRotation(), NginxRotation()
    for mask, picks in phases:
        chosen = [i for i in range(len(weights)) if mask >> i & 1] or [0]
        for rotation in (fast, plain):
            rotation.update([keys[i] for i in chosen], [weights[i] for i in chosen])
        assert [fast.pick() for _ in range(picks)] == [plain.pick() for _ in range(picks)]


def test_round_robin_examples() -> None:
    rr = RoundRobin()
    pool = backends([1, 1, 1])
    rr.update(pool)
    assert Counter(first(rr).key for _ in range(300)) == {b.key: 100 for b in pool}
    pool = backends([1, 2, 3])
    rr.update(pool)
    assert Counter(first(rr).key for _ in range(600)) == {
        pool[0].key: 100,
        pool[1].key: 200,
        pool[2].key: 300,
    }
    assert [i for i in smooth_schedule([5, 1, 1])] == [0, 0, 1, 0, 2, 0, 0]


def intermittent_shares(
    algorithm: algorithms.Algorithm, weights: list[int], phases: list[tuple[bool, int]]
) -> tuple[Counter[str], dict[str, float]]:
    """Picks per backend while the last backend goes in and out of rotation, `update` called on
    every change, and each backend's exact share of the picks made while it was eligible."""
    pool = backends(weights)
    picks: Counter[str] = Counter()
    entitled = {b.key: 0.0 for b in pool}
    for present, count in phases:
        eligible = pool if present else pool[:-1]
        algorithm.update(eligible)
        total = sum(b.weight for b in eligible)
        for _ in range(count):
            picks[first(algorithm).key] += 1
            for b in eligible:
                entitled[b.key] += b.weight / total
    return picks, entitled


def test_round_robin_intermittent_backend_keeps_its_share() -> None:
    """D is drained and enabled again every 3 connections; each rebuild used to restart the
    cycle at A, so D got none of the 90 picks it was eligible for (its share: 22.5)."""
    picks, entitled = intermittent_shares(RoundRobin(), [1, 1, 1, 1], [(False, 3), (True, 3)] * 30)
    assert entitled["127.0.0.1:9003"] == 22.5
    for key, share in entitled.items():
        assert abs(picks[key] - share) <= 1.5, (picks, entitled)


@settings(max_examples=200)
@given(
    st.lists(st.integers(1, 10), min_size=2, max_size=6),
    st.lists(st.tuples(st.booleans(), st.integers(1, 12)), min_size=1, max_size=40),
)
def test_round_robin_shares_hold_across_rebuilds(
    weights: list[int], phases: list[tuple[bool, int]]
) -> None:
    """However often the eligible set changes, every backend stays within a few picks of its
    exact share of the picks made while it was eligible."""
    picks, entitled = intermittent_shares(RoundRobin(), weights, phases)
    for key, share in entitled.items():
        assert abs(picks[key] - share) < 2, (picks, entitled)


@given(weights_strategy, st.integers(1, 60))
def test_round_robin_rebuild_without_change_keeps_the_cycle(weights: list[int], picks: int) -> None:
    """A rebuild that changes nothing (an admin no-op, a reload, other backends' slow-start
    steps landing on the same weights) must not restart the cycle."""
    steady = RoundRobin()
    steady.update(backends(weights))
    expected = [first(steady).key for _ in range(picks)]
    rebuilt = RoundRobin()
    seen = []
    for _ in range(picks):
        rebuilt.update(backends(weights))  # fresh Backend objects, same addresses and weights
        seen.append(first(rebuilt).key)
    assert seen == expected


def test_round_robin_slow_start_steps_keep_shares() -> None:
    """Slow start's ten steps rebuild the pool ten times. With two connections per step the
    restarted cycle sent every one to A and B, none to the returning C."""
    pool = backends([1, 1, 1])
    rr = RoundRobin()
    picks: Counter[str] = Counter()
    entitled = {b.key: 0.0 for b in pool}
    for step in range(1, 11):
        pool[2].effective_weight = step / 10
        rr.update(pool)
        for _ in range(2):
            picks[first(rr).key] += 1
            for b in pool:
                entitled[b.key] += b.effective_weight / (2 + pool[2].effective_weight)
    for key, share in entitled.items():  # C: 4.1 of the 20
        assert abs(picks[key] - share) <= 1, (picks, entitled)


def test_round_robin_shared_cursor_continues_across_rebuilds() -> None:
    """With workers, the position lives in shared memory and survives every rebuild; two
    workers walking it between them still give exact shares."""
    from balancer.service.shared import SharedCursor, SharedState

    state = SharedState(None, 2)
    try:
        workers = [RoundRobin(), RoundRobin()]
        for rr in workers:
            rr.cursor = SharedCursor(state, 0)
        pool = backends([1, 2, 3])
        picks: Counter[str] = Counter()
        for turn in range(60):
            rr = workers[turn % 2]
            rr.update(pool)
            picks[first(rr).key] += 1
        assert picks == {pool[0].key: 10, pool[1].key: 20, pool[2].key: 30}
    finally:
        state.close()


def test_round_robin_workers_schedules_kept_for_a_flapping_backend() -> None:
    """Schedules are kept by weights: a pool that flaps between sets, and weights that change,
    give the same picks as schedules worked out afresh at every rebuild."""
    from balancer.service.shared import SharedCursor, SharedState

    state = SharedState(None, 2)
    try:
        kept = RoundRobin()
        kept.cursor = SharedCursor(state, 0)
        pool = backends([1, 2, 3, 4, 5, 6])
        sets = [pool, pool[:-1], pool[1:], pool[:-1], pool, pool[2:], pool[1:], pool]
        for turn in range(200):
            eligible = sets[turn % len(sets)]
            if turn % 50 == 49:
                pool[turn % 6].weight += 1
                pool[turn % 6].effective_weight += 1
            kept.update(eligible)
            picked = first(kept).key
            state.set_cursor(0, state.cursor(0) - 1)  # (the same position again)
            afresh = RoundRobin()
            afresh.cursor = kept.cursor
            afresh.update(eligible)
            assert first(afresh).key == picked
    finally:
        state.close()


def test_round_robin_workers_long_schedule_is_worked_out_a_part_at_a_pick() -> None:
    """A workers' schedule too long to work out at once (300 backends of 50 distinct weights:
    7,650 picks) is worked out over many picks; meanwhile the worker makes its own smooth
    picks, then it walks the whole schedule at the shared cursor."""
    from balancer.selection.round_robin import SCHEDULE_WORK
    from balancer.service.shared import SharedCursor, SharedState

    weights = [1 + i % 50 for i in range(300)]
    pool = backends(weights)
    state = SharedState(None, 2)
    try:
        rr, alone = RoundRobin(), RoundRobin()
        rr.cursor = SharedCursor(state, 0)
        rr.update(pool)
        alone.update(pool)
        schedule = smooth_schedule(weights)
        calls = -(-len(schedule) // (SCHEDULE_WORK // 50))
        assert calls > 10
        for _ in range(calls - 1):  # (the last part comes with the last of these picks)
            assert first(rr) is first(alone)
        assert state.cursor(0) == 0  # (the shared cursor is not moved meanwhile)
        picks = [first(rr).key for _ in range(2 * len(schedule))]
        assert picks == [pool[i].key for i in schedule] * 2
    finally:
        state.close()


# -- least connections -------------------------------------------------------------------------


@given(weights_strategy, st.lists(st.integers(0, 30), min_size=8, max_size=8))
def test_least_connections_picks_the_least_loaded(weights: list[int], active: list[int]) -> None:
    pool = backends(weights)
    for backend, count in zip(pool, active, strict=False):
        backend.active = count
    lc = LeastConnections()
    lc.update(pool)
    order = list(lc.candidates("x"))
    assert load(order[0]) == min(load(b) for b in pool)
    assert [load(b) for b in order] == sorted(load(b) for b in pool)


@given(st.integers(1, 8), st.integers(1, 10))
def test_least_connections_rotates_among_equals(count: int, rounds: int) -> None:
    pool = backends([1] * count)
    lc = LeastConnections()
    lc.update(pool)
    picks = Counter(first(lc).key for _ in range(count * rounds))  # idle: nothing held
    assert picks == {b.key: rounds for b in pool}


@given(weights_strategy, st.integers(1, 5))
def test_least_connections_held_connections_follow_weights(weights: list[int], rounds: int) -> None:
    pool = backends(weights)
    lc = LeastConnections()
    lc.update(pool)
    for _ in range(sum(weights) * rounds):
        first(lc).active += 1  # each connection stays open
    assert {b.key: b.active for b in pool} == {b.key: b.weight * rounds for b in pool}


def test_thirty_held_over_three() -> None:
    pool = backends([1, 1, 1])
    lc = LeastConnections()
    lc.update(pool)
    for _ in range(30):
        first(lc).active += 1
    assert [b.active for b in pool] == [10, 10, 10]


def test_least_connections_counts_other_workers() -> None:
    pool = backends([1, 1])
    pool[0].others = 5  # held by another worker process
    lc = LeastConnections()
    lc.update(pool)
    assert first(lc) is pool[1]


def test_least_connections_intermittent_backend_keeps_its_share() -> None:
    """Idle backends tie; the tie used to go round from A again after every rebuild, so a
    backend drained and enabled every 3 connections never got one."""
    lc = LeastConnections()
    picks, entitled = intermittent_shares(lc, [1, 1, 1, 1], [(False, 3), (True, 3)] * 30)
    for key, share in entitled.items():
        assert abs(picks[key] - share) <= 1.5, (picks, entitled)


@settings(max_examples=100)
@given(
    st.lists(st.integers(1, 10), min_size=2, max_size=6),
    st.lists(st.tuples(st.booleans(), st.integers(1, 12)), min_size=1, max_size=40),
)
def test_least_connections_equal_idle_shares_hold_across_rebuilds(
    weights: list[int], phases: list[tuple[bool, int]]
) -> None:
    """Equal weights, idle: every pick is a tie, and the ties stay shared evenly."""
    equal = [weights[0]] * len(weights)
    picks, entitled = intermittent_shares(LeastConnections(), equal, phases)
    for key, share in entitled.items():
        assert abs(picks[key] - share) < 2, (picks, entitled)


def test_least_connections_rebuild_without_change_keeps_rotating() -> None:
    pool = backends([1, 1, 1])
    lc = LeastConnections()
    picks: Counter[str] = Counter()
    for _ in range(30):
        lc.update(pool)
        picks[first(lc).key] += 1
    assert picks == {b.key: 10 for b in pool}


def test_least_connections_long_busy_backend_gets_no_run_of_ties() -> None:
    """A backend passed over for a long time (it held a connection) must not then win every
    tie for as long again: what it is owed for ties is bounded."""
    pool = backends([1, 1, 1])
    lc = LeastConnections()
    lc.update(pool)
    pool[0].active = 1
    for _ in range(1000):
        assert first(lc) is not pool[0]  # B and C: load 1 against A's 2
    pool[0].active = 0
    picks = Counter(first(lc).key for _ in range(30))
    assert picks[pool[0].key] <= 13


def brute_force_order(pool: list[Backend]) -> list[float]:
    return sorted(load(b) for b in pool)


@settings(max_examples=150)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=7),
    st.lists(
        st.tuples(st.sampled_from(["pick", "end", "others", "rebuild", "weight"]),
                  st.integers(0, 1000)),
        min_size=1, max_size=80,
    ),
)  # fmt: skip
def test_least_connections_heap_follows_every_change(
    weights: list[int], steps: list[tuple[str, int]]
) -> None:
    """The heap is told of each change to a backend's counts (connections opened and ended here,
    on other workers), and rebuilt with the pool: after any sequence of them, a pick is the
    least loaded backend and the candidates come in order of load, as comparing every backend
    gives. (A missed decrease, say, leaves a backend with a stale high load: never picked.)"""
    pool = backends(weights)
    lc = LeastConnections()
    eligible = list(pool)
    lc.update(eligible)
    for action, n in steps:
        backend = pool[n % len(pool)]
        if action == "pick":
            order = list(lc.candidates("x"))
            if not eligible:
                assert order == []
                continue
            assert [load(b) for b in order] == brute_force_order(eligible)
            assert sorted(order, key=id) == sorted(eligible, key=id)
            order[0].active += 1
        elif action == "end" and backend.active:
            backend.active -= 1
        elif action == "others":
            backend.others = n % 5
        elif action == "rebuild":
            eligible = [b for i, b in enumerate(pool) if (n >> i) & 1]
            lc.update(eligible)
        elif action == "weight":
            backend.weight = backend.effective_weight = 1 + n % 6
            lc.update(eligible)
    if eligible:
        assert load(first(lc)) == min(load(b) for b in eligible)


def test_least_connections_pick_does_not_compare_every_backend() -> None:
    """A pick looks at the heap's top: with 2,000 backends, a change to one and then a pick
    call `load` on no other backend (comparing them all called it 2,000 times a pick)."""
    import balancer.selection.least_connections as module

    pool = backends([1] * 2000)
    lc = LeastConnections()
    lc.update(pool)
    calls = 0
    real = module.load

    def counted(backend: Backend) -> float:
        nonlocal calls
        calls += 1
        return real(backend)

    module.load = counted
    try:
        for _ in range(100):
            picked = first(lc)
            picked.active += 1
            assert load(picked) == 2.0  # (every pick goes to an idle backend, round the pool)
    finally:
        module.load = real
    assert calls == 0
    assert len({b.key for b in pool if b.active}) == 100


def test_least_connections_ended_connection_makes_a_backend_first_again() -> None:
    pool = backends([1, 1, 1])
    lc = LeastConnections()
    lc.update(pool)
    for b in pool:
        b.active = 2
    pool[1].active = 1  # (told through Backend.moved: nothing is rebuilt)
    assert first(lc) is pool[1]
    pool[1].others = 3  # another worker's connections count as well
    assert first(lc) in (pool[0], pool[2])


def test_least_connections_leaving_backends_are_no_longer_watched() -> None:
    pool = backends([1, 1, 1])
    lc = LeastConnections()
    lc.update(pool)
    assert all(b.moved is not None for b in pool)
    lc.update(pool[:2])
    assert pool[2].moved is None and pool[0].moved is not None
    pool[2].active = 5  # (a drained backend's connections end: nothing to do)
    lc.update(pool)
    pool[2].active = 0
    assert load(first(lc)) == 1.0


def test_least_connections_retry_walks_the_backends_of_its_pick() -> None:
    """A retry's candidates are the pool as it was at the pick, even if it was rebuilt since
    (a health change while the first connect was failing)."""
    pool = backends([1, 1, 1, 1])
    lc = LeastConnections()
    lc.update(pool)
    pool[0].active = 3
    walk = iter(lc.candidates("x"))
    picked = next(walk)
    lc.update(pool[:2])
    rest = list(walk)
    assert sorted([picked, *rest], key=id) == sorted(pool, key=id)
    assert rest[-1] is pool[0]  # (the busiest last)


def test_pool_replacing_the_algorithm_stops_telling_the_old_one() -> None:
    from balancer.pool.pool import Pool

    pool = Pool("web", LeastConnections())
    added = [pool.add(Address("127.0.0.1", 9100 + i), 1) for i in range(3)]
    assert all(b.moved is not None for b in added)
    pool.replace_algorithm(RoundRobin())
    pool.rebuild()
    assert all(b.moved is None for b in added)


# -- random and power of two -------------------------------------------------------------------


@settings(max_examples=20)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=5), st.integers(0, 1000))
def test_weighted_random_shares(weights: list[int], seed: int) -> None:
    pool = backends(weights)
    algorithm = WeightedRandom(random.Random(seed))
    algorithm.update(pool)
    draws = 20000
    picks = Counter(first(algorithm).key for _ in range(draws))
    total = sum(weights)
    for b in pool:
        p = b.weight / total
        sigma = math.sqrt(draws * p * (1 - p))
        assert abs(picks[b.key] - draws * p) < 5 * sigma


@given(weights_strategy, st.lists(st.integers(0, 20), min_size=8, max_size=8), st.integers())
def test_power_of_two_prefers_the_lighter(weights: list[int], active: list[int], seed: int) -> None:
    pool = backends(weights)
    for backend, count in zip(pool, active, strict=False):
        backend.active = count
    algorithm = PowerOfTwo(random.Random(seed))
    algorithm.update(pool)
    order = list(algorithm.candidates("x"))
    if len(order) > 1:
        assert load(order[0]) <= load(order[1])


def test_power_of_two_spreads_held_connections() -> None:
    pool = backends([1, 1, 1])
    algorithm = PowerOfTwo(random.Random(7))
    algorithm.update(pool)
    for _ in range(300):
        first(algorithm).active += 1
    assert max(b.active for b in pool) - min(b.active for b in pool) <= 2


# -- consistent hashing ------------------------------------------------------------------------

clients = [f"10.{i // 250}.{i % 250}.{(i * 7) % 250}" for i in range(2000)]


def mapping(pool: list[Backend]) -> dict[str, str]:
    ring = SourceHash()
    ring.update(pool)
    return {c: first(ring, c).key for c in clients}


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 10), st.data())
def test_source_hash_moves_only_the_leaving_backends_clients(
    count: int, data: st.DataObject
) -> None:
    pool = backends([1] * count)
    leaving = data.draw(st.integers(0, count - 1))
    before = mapping(pool)
    after = mapping([b for i, b in enumerate(pool) if i != leaving])
    moved = [c for c in clients if before[c] != after[c]]
    assert all(before[c] == pool[leaving].key for c in moved)
    assert len(moved) == sum(1 for c in clients if before[c] == pool[leaving].key)
    assert len(moved) <= 2 * len(clients) / count


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 9))
def test_source_hash_joining_backend_only_takes_clients(count: int) -> None:
    pool = backends([1] * (count + 1))
    before = mapping(pool[:count])
    after = mapping(pool)
    newcomer = pool[count].key
    assert all(after[c] == newcomer for c in clients if before[c] != after[c])


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([12, 64]),
    st.lists(
        st.tuples(st.integers(0, 63), st.integers(0, 4)),  # (backend, its weight; 0: out)
        min_size=1,
        max_size=12,
    ),
)
def test_source_hash_ring_changed_in_place_is_the_ring_built_afresh(
    size: int, changes: list[tuple[int, int]]
) -> None:
    """A ring that takes a changed backend's points off and puts its new ones on (in place:
    sorted in for 12 backends, one by one for 64 of weights up to 2) maps every client, and
    orders every fallback, as one built from scratch for that pool."""
    pool = backends([1] * size)
    weights = {b.key: 1 for b in pool}
    ring = SourceHash()
    ring.update(pool)
    for index, weight in changes:
        weights[pool[index % size].key] = weight if size == 12 else min(weight, 2)
        now = [Backend(b.address, weights[b.key]) for b in pool if weights[b.key]]
        ring.update(now)
        fresh = SourceHash()
        fresh.update(now)
        for client in clients[::10]:
            assert [b.key for b in ring.candidates(client)] == [
                b.key for b in fresh.candidates(client)
            ]


def test_source_hash_ring_size_is_bounded() -> None:
    """Heavy pools get fewer points per weight, halving (to one at the least), so that a ring
    stays within MAX_POINTS."""
    assert points_per_weight(1) == POINTS_PER_WEIGHT
    assert points_per_weight(MAX_POINTS // POINTS_PER_WEIGHT) == POINTS_PER_WEIGHT
    assert points_per_weight(MAX_POINTS // POINTS_PER_WEIGHT + 1) == POINTS_PER_WEIGHT // 2
    for total in (10_000, 50_500, 300_000, 10 * MAX_POINTS):
        per_weight = points_per_weight(total)
        assert per_weight == 1 or total * per_weight <= MAX_POINTS
    pool = backends([100] * 30)  # 300,000 points at 100 per weight
    ring = SourceHash()
    ring.update(pool)
    owners = Counter(first(ring, c).key for c in clients)
    assert set(owners) == {b.key for b in pool}  # (each of the 30 has its 1/30 of the ring)


def test_source_hash_is_stable_and_order_free() -> None:
    pool = backends([1, 2, 1, 3])
    assert mapping(pool) == mapping(list(reversed(pool)))


# -- registry ----------------------------------------------------------------------------------


def test_registry_and_user_algorithms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("round_robin", "least_connections", "random", "power_of_two", "source_hash"):
        assert algorithms.resolve(name) is algorithms.REGISTRY[name]
    (tmp_path / "my_lb.py").write_text(
        "class Fixed:\n"
        "    def update(self, backends):\n"
        "        self.backends = list(backends)\n"
        "    def candidates(self, client):\n"
        "        return iter(sorted(self.backends, key=lambda b: b.key, reverse=True))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for path in ("my_lb:Fixed", "my_lb.Fixed"):
        algorithm = algorithms.create(path)
        pool = backends([1, 1])
        algorithm.update(pool)
        assert first(algorithm) is pool[1]
    sys.modules.pop("my_lb", None)
    with pytest.raises(ValueError, match="unknown algorithm 'fastest'"):
        algorithms.resolve("fastest")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        algorithms.resolve("no_such_module.Thing")
    with pytest.raises(ValueError, match="not a class with update"):
        algorithms.resolve("math.pi")
