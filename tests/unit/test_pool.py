"""The pool in-process: membership, states, rebuilds, events, panic, and backends that leave
with connections open."""

from __future__ import annotations

from collections import Counter

import pytest

from balancer.core.address import Address
from balancer.pool.backend import DOWN, DRAIN, ENABLED, MAINTENANCE, UP, check_state
from balancer.pool.pool import Pool
from balancer.selection.round_robin import RoundRobin


def address(port: int) -> Address:
    return Address("127.0.0.1", port)


class Events:
    """Records the pool's events, its panics and each eligible set it was rebuilt with."""

    def __init__(self, pool: Pool) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.panics: list[tuple[bool, int, int, int]] = []
        self.rebuilds: list[tuple[int, ...]] = []
        pool.listeners.append(lambda event, b, text: self.events.append((event, b.key, text)))
        pool.panic_listeners.append(
            lambda c: self.panics.append((c.panicking, c.healthy, c.spread, c.enabled))
        )
        pool.rebuild_listeners.append(
            lambda p: self.rebuilds.append(tuple(b.address.port for b in p.eligible))
        )

    def kinds(self) -> list[str]:
        return [event for event, _, _ in self.events]


def shares(pool: Pool, count: int) -> Counter[int]:
    return Counter(next(iter(pool.candidates("10.0.0.1"))).address.port for _ in range(count))


def test_add_and_remove_rebuild_once_each_and_say_so() -> None:
    pool = Pool("web", RoundRobin())
    events = Events(pool)
    a = pool.add(address(9001))
    b = pool.add(address(9002), 2)
    assert list(pool.eligible) == [a, b]
    assert shares(pool, 300) == {9001: 100, 9002: 200}
    with pytest.raises(KeyError, match="already exists"):
        pool.add(address(9001))
    pool.remove(address(9001), "operator")
    assert list(pool.eligible) == [b]
    assert events.rebuilds == [(9001,), (9001, 9002), (9002,)]
    assert events.kinds() == ["added", "added", "removed"]
    assert events.events[1] == ("added", "127.0.0.1:9002", "weight 2, up, enabled")
    assert events.events[2] == ("removed", "127.0.0.1:9001", "operator: 0 connections still open")
    assert a.transitions == {"added": 1, "removed": 1}


def test_quiet_add_announces_nothing_until_asked() -> None:
    pool = Pool("web", RoundRobin())
    events = Events(pool)
    backend = pool.add(address(9001), quiet=True)
    assert events.kinds() == []
    pool.announce_added(backend, "reload")
    assert events.events == [("added", "127.0.0.1:9001", "reload: weight 1, up, enabled")]


def test_only_up_and_enabled_backends_are_eligible() -> None:
    pool = Pool("web", RoundRobin())
    events = Events(pool)
    a, b, c = (pool.add(address(p)) for p in (9001, 9002, 9003))
    pool.set_state(a, DRAIN, "operator")
    pool.set_state(b, MAINTENANCE, "operator")
    pool.set_health(c, DOWN, "3 consecutive tcp check failures")
    assert list(pool.eligible) == []
    pool.set_health(c, UP, "2 consecutive tcp checks passed")
    assert list(pool.eligible) == [c]
    # A change that changes nothing is neither rebuilt nor told.
    before = len(events.rebuilds)
    pool.set_state(a, DRAIN, "operator")
    pool.set_health(c, UP, "again")
    assert len(events.rebuilds) == before
    assert events.kinds()[-4:] == ["drain", "maintenance", "down", "up"]
    pool.set_state(a, ENABLED)
    assert list(pool.eligible) == [a, c]


def test_a_backend_added_in_drain_never_takes_a_connection() -> None:
    pool = Pool("web", RoundRobin())
    events = Events(pool)
    pool.add(address(9001), state=DRAIN)
    assert events.rebuilds == [()]
    with pytest.raises(ValueError, match="state must be one of"):
        pool.add(address(9002), state="paused")
    assert address(9002) not in pool.backends


def test_weights_and_slow_start_weights() -> None:
    pool = Pool("web", RoundRobin())
    events = Events(pool)
    a = pool.add(address(9001), 4)
    b = pool.add(address(9002), 4)
    pool.set_effective_weight(a, 1.0)  # (slow start's first step: selection sees a quarter)
    assert a.weight == 4 and shares(pool, 500) == {9001: 100, 9002: 400}
    pool.set_weight(a, 8)  # the ramp goes on at the same fraction of the new weight
    assert a.effective_weight == 2.0
    assert events.events[-1] == ("weight", "127.0.0.1:9001", "weight 4 -> 8")
    pool.set_weight(b, 4)
    assert events.kinds().count("weight") == 1


def test_panic_spreads_over_every_enabled_backend_when_none_is_up() -> None:
    pool = Pool("web", RoundRobin(), panic=True)
    events = Events(pool)
    a, b, c = (pool.add(address(p)) for p in (9001, 9002, 9003))
    pool.set_state(c, MAINTENANCE)
    pool.set_health(a, DOWN, "ejected")
    assert not pool.panicking and list(pool.eligible) == [b]  # (1 of 2 is half: no panic)
    pool.set_health(b, DOWN, "ejected")
    assert pool.panicking and list(pool.eligible) == [a, b]  # (not the one in maintenance)
    pool.set_health(a, UP, "back")
    assert not pool.panicking and list(pool.eligible) == [a]
    assert events.panics == [(True, 0, 2, 2), (False, 1, 1, 2)]


def test_without_panic_no_backend_up_means_none_eligible() -> None:
    pool = Pool("web", RoundRobin())
    a = pool.add(address(9001))
    pool.set_health(a, DOWN, "refused")
    assert list(pool.eligible) == [] and not pool.panicking


def test_a_busy_backend_removed_and_added_again_is_the_same_object() -> None:
    pool = Pool("web", RoundRobin())
    old = pool.add(address(9001), 2)
    old.active = 3
    pool.remove(address(9001))
    assert pool.leaving[address(9001)] is old
    back = pool.add(address(9001), 5)
    assert back is old and back.weight == 5 and back.active == 3
    # An idle one is forgotten: the address comes back as a new backend.
    back.active = 0
    pool.remove(address(9001))
    fresh = pool.add(address(9001))
    assert fresh is not old


def test_staged_changes_rebuild_once_when_the_caller_says() -> None:
    pool = Pool("web", RoundRobin())
    events = Events(pool)
    a = pool.stage_add(address(9001), 1, UP)
    pool.stage_add(address(9002), 1, UP)
    assert list(pool.eligible) == [] and events.rebuilds == []
    pool.stage_remove(address(9002))
    pool.rebuild()
    assert list(pool.eligible) == [a] and events.rebuilds == [(9001,)]
    assert events.kinds() == []


def test_a_stale_health_change_for_a_replaced_backend_is_ignored() -> None:
    pool = Pool("web", RoundRobin())
    old = pool.add(address(9001))
    pool.remove(address(9001))
    new = pool.add(address(9001))
    pool.set_health(old, DOWN, "a check of the old one")
    assert new.health == UP and list(pool.eligible) == [new]


def test_check_state() -> None:
    for state in (ENABLED, DRAIN, MAINTENANCE):
        check_state(state)
    with pytest.raises(ValueError, match="state must be one of enabled, drain, maintenance"):
        check_state("up")


def test_panic_below_the_threshold_spreads_over_what_the_checks_hold_up() -> None:
    pool = Pool("web", RoundRobin(), panic=True, panic_threshold=50)
    events = Events(pool)
    a, b, c, d = (pool.add(address(p)) for p in (9001, 9002, 9003, 9004))
    # Two passively ejected (down, but the checks still say up), one down by the checks.
    for ejected in (a, b):
        pool.set_health(ejected, DOWN, "ejected")
    c.checks_up = False
    pool.set_health(c, DOWN, "3 consecutive tcp check failures")
    assert pool.panicking  # 1 of 4 up: below half
    assert list(pool.eligible) == [a, b, d]  # (never the one the checks hold down)
    assert events.panics == [(True, 1, 3, 4)]
    pool.set_health(a, UP, "back")
    assert not pool.panicking and list(pool.eligible) == [a, d]  # 2 of 4: not below half
    assert events.panics[-1] == (False, 2, 2, 4)


def test_no_panic_when_the_checks_hold_up_no_more_than_are_up() -> None:
    pool = Pool("web", RoundRobin(), panic=True, panic_threshold=50)
    a, b, c = (pool.add(address(p)) for p in (9001, 9002, 9003))
    for down in (a, b):
        down.checks_up = False
        pool.set_health(down, DOWN, "3 consecutive tcp check failures")
    assert not pool.panicking and list(pool.eligible) == [c]
    c.checks_up = False
    pool.set_health(c, DOWN, "3 consecutive tcp check failures")
    assert not pool.panicking and list(pool.eligible) == []


def test_the_panic_threshold_is_a_share_of_the_enabled_backends() -> None:
    pool = Pool("web", RoundRobin(), panic=True, panic_threshold=75)
    a, b, c, d = (pool.add(address(p)) for p in (9001, 9002, 9003, 9004))
    pool.set_health(a, DOWN, "ejected")
    assert not pool.panicking  # 3 of 4 is 75%: not below
    pool.set_health(b, DOWN, "ejected")
    assert pool.panicking and len(pool.eligible) == 4
    pool.set_state(a, DRAIN)
    pool.set_state(b, DRAIN)
    assert not pool.panicking and list(pool.eligible) == [c, d]  # 2 of 2 enabled
