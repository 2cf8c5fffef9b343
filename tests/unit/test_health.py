"""Health in-process: rise and fall, passive ejection and its doubling, return, slow start.

The tracker runs on a real event loop (its ejections and ramps are loop timers); checks are
fed to it as results, or run against a real listening socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

from balancer.config.model import HealthCheckConfig, PassiveConfig
from balancer.core.address import Address
from balancer.health.tracker import SLOW_START_STEPS, Health
from balancer.pool.backend import DOWN, UP, Backend
from balancer.pool.pool import Pool
from balancer.selection.round_robin import RoundRobin

T = TypeVar("T")
NO_CHECKS = HealthCheckConfig(enabled=False)
# A lone backend is never ejected passively unless every backend may be: the tests of the
# ejection itself use one backend, and allow every backend to go.
ALL = 100


def run(test: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await test()

    return asyncio.run(bounded())


class Watched:
    """A pool of `count` backends with health tracking, and its events as they come."""

    def __init__(self, check: HealthCheckConfig, passive: PassiveConfig, count: int = 1) -> None:
        self.pool = Pool("web", RoundRobin())
        self.backends = [self.pool.add(Address("127.0.0.1", 9001 + i)) for i in range(count)]
        self.health = Health(self.pool, check, passive)
        self.events: list[tuple[str, str]] = []
        self.changed = asyncio.Event()
        self.pool.listeners.append(self._event)

    def _event(self, event: str, backend: Backend, message: str) -> None:
        self.events.append((event, message))
        self.changed.set()

    async def next_event(self) -> tuple[str, str]:
        seen = len(self.events)
        while len(self.events) == seen:
            self.changed.clear()
            await self.changed.wait()
        return self.events[seen]


def test_fall_and_rise_count_consecutive_results() -> None:
    async def test() -> None:
        watched = Watched(HealthCheckConfig(rise=2, fall=3), PassiveConfig())
        backend = watched.backends[0]
        for error in ("refused", None, "refused", "refused"):  # (a pass breaks the run)
            watched.health.record(backend, error)
        assert backend.health == UP
        watched.health.record(backend, "connection refused")
        assert backend.health == DOWN
        assert watched.events[-1] == (
            "down",
            "3 consecutive tcp check failures, connection refused",
        )
        watched.health.record(backend, None)
        assert backend.health == DOWN
        watched.health.record(backend, None)
        assert backend.health == UP
        assert watched.events[-1] == ("up", "2 consecutive tcp checks passed")

    run(test)


def test_a_check_that_could_not_run_says_nothing() -> None:
    async def test() -> None:
        from balancer.health.probe import SKIPPED

        watched = Watched(HealthCheckConfig(fall=1), PassiveConfig())
        watched.health.record(watched.backends[0], SKIPPED)
        assert watched.backends[0].health == UP and not watched.events

    run(test)


def test_passive_failures_eject_and_the_ejection_doubles() -> None:
    async def test() -> None:
        passive = PassiveConfig(
            max_fails=2, ejection_time=0.1, max_ejection_time=0.3, max_ejection_percent=ALL
        )
        watched = Watched(NO_CHECKS, passive)
        backend = watched.backends[0]
        health = watched.health
        health.passive_failure(backend, "connection reset by peer before answering", refused=False)
        health.passive_success(backend)  # (an answer in between: the count starts again)
        health.passive_failure(backend, "connection reset by peer before answering", refused=False)
        assert backend.health == UP
        health.passive_failure(backend, "connection reset by peer before answering", refused=False)
        assert backend.health == DOWN and backend.ejected and backend.ejections == 1
        assert watched.events[-1] == (
            "down",
            "ejected for 0.1s after 2 consecutive failures "
            "(connection reset by peer before answering)",
        )
        # Without active checks the ejection's end brings it back.
        assert await watched.next_event() == ("up", "ejection of 0.1s over")
        # Again soon after: twice as long; then capped at max_ejection_time.
        for expected in ("0.2s", "0.3s"):
            health.passive_failure(backend, "connect: connection refused", refused=True)
            assert watched.events[-1][1].startswith(f"ejected for {expected} after 1 consecutive")
            assert (await watched.next_event())[0] == "up"

    run(test)


def test_refused_connects_have_their_own_limit() -> None:
    async def test() -> None:
        watched = Watched(
            NO_CHECKS, PassiveConfig(max_fails=5, max_fails_refused=2, max_ejection_percent=ALL)
        )
        backend = watched.backends[0]
        watched.health.passive_failure(backend, "connect: connection refused", refused=True)
        assert backend.health == UP
        watched.health.passive_failure(backend, "connect: connection refused", refused=True)
        assert backend.health == DOWN
        assert (
            "2 consecutive refused connects (connect: connection refused)"
            in (watched.events[-1][1])
        )

    run(test)


def test_an_ejected_backend_with_checks_needs_rise_passes_after_the_ejection() -> None:
    async def test() -> None:
        check = HealthCheckConfig(rise=2, interval=60.0)  # (no probe comes in the test's time)
        watched = Watched(
            check, PassiveConfig(max_fails_refused=1, ejection_time=0.2, max_ejection_percent=ALL)
        )
        backend = watched.backends[0]
        watched.health.passive_failure(backend, "connect: connection refused", refused=True)
        for _ in range(3):
            watched.health.record(backend, None)  # passes during the ejection do not end it
        assert backend.health == DOWN
        event = await watched.next_event()
        assert event == ("up", "ejection over and 3 consecutive checks passed")

    run(test)


def test_slow_start_ramps_a_returning_backend_in_ten_steps() -> None:
    async def test() -> None:
        passive = PassiveConfig(
            max_fails_refused=1, ejection_time=0.05, slow_start=0.45, max_ejection_percent=ALL
        )
        watched = Watched(NO_CHECKS, passive)
        backend = watched.backends[0]
        backend.weight = 10
        weights: list[float] = []
        watched.pool.rebuild_listeners.append(lambda pool: weights.append(backend.effective_weight))
        watched.health.passive_failure(backend, "connect: connection refused", refused=True)
        event = await watched.next_event()
        assert event == ("up", "ejection of 0.05s over, slow start over 0.45s")
        assert backend.effective_weight == 1.0  # a tenth at its return
        while backend.effective_weight < backend.weight:
            await asyncio.sleep(0.02)
        ramp = [w for w in weights if w > 0]
        assert ramp[-SLOW_START_STEPS:] == [float(step) for step in range(1, 11)]
        assert backend.weight == 10  # (the operator's weight never moved)

    run(test)


def test_a_backend_that_never_went_down_starts_at_full_weight() -> None:
    async def test() -> None:
        # A discovered port comes up on its first passed check, without a slow start.
        watched = Watched(HealthCheckConfig(rise=3), PassiveConfig(slow_start=10.0))
        backend = watched.backends[0]
        watched.pool.set_health(backend, DOWN, "discovered")
        backend.transitions.clear()
        watched.health.record(backend, None)
        assert backend.health == UP and backend.effective_weight == backend.weight
        assert watched.events[-1] == ("up", "tcp check passed")

    run(test)


def test_checks_turned_off_by_a_reload_bring_back_what_only_they_held_down() -> None:
    async def test() -> None:
        passive = PassiveConfig(ejection_time=5.0, max_ejection_percent=ALL)
        watched = Watched(HealthCheckConfig(fall=1), passive, count=2)
        checked, ejected = watched.backends
        watched.health.record(checked, "connection refused")
        watched.health.passive_failure(ejected, "connect: connection refused", refused=True)
        watched.health.reconfigure(NO_CHECKS, PassiveConfig(ejection_time=5.0), None)
        assert checked.health == UP  # only the checks held it down
        assert ejected.health == DOWN  # its ejection still runs
        watched.health.stop()

    run(test)


def test_a_real_probe_finds_a_listener_and_misses_a_closed_port() -> None:
    async def test() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            check = HealthCheckConfig(interval=0.05, timeout=0.5, rise=1, fall=1)
            watched = Watched(check, PassiveConfig(), count=0)
            backend = watched.pool.add(Address("127.0.0.1", port), health=DOWN)
            watched.health.sync()  # one probe loop per backend
            while backend.health != UP:
                await watched.next_event()
            listener.close()
            while backend.health != DOWN:
                await watched.next_event()
            assert "connection refused" in watched.events[-1][1]
            watched.health.stop()

    run(test)


def test_the_ejection_cap_is_at_least_one_and_never_all() -> None:
    from balancer.health.tracker import ejection_cap

    assert [ejection_cap(n, 10) for n in (0, 1, 2, 3, 10, 19, 20, 100)] == [
        0, 0, 1, 1, 1, 1, 2, 10,
    ]  # fmt: skip
    assert [ejection_cap(n, 50) for n in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 2]
    assert [ejection_cap(n, 100) for n in (1, 3)] == [1, 3]  # (asked for: all may go)
    assert [ejection_cap(n, 0) for n in (1, 3)] == [0, 0]  # (passive ejection off)


def test_passive_ejection_stops_at_the_cap_and_says_so() -> None:
    async def test() -> None:
        notices: list[tuple[str, str, str]] = []
        passive = PassiveConfig(max_fails_refused=1, ejection_time=60.0, failure_window=60.0)
        watched = Watched(NO_CHECKS, passive, count=3)
        health = watched.health
        health.notice = lambda event, b, text: notices.append((event, b.key, text))
        first, second, third = watched.backends
        health.passive_failure(first, "connect: connection refused", refused=True)
        assert first.health == DOWN and first.ejected and first.ejections == 1
        for _ in range(3):
            health.passive_failure(second, "connect: connection refused", refused=True)
        assert second.health == UP and second.ejections_refused == 3 and not second.ejected
        # Logged once in the window, with what it would have been and why it was not.
        assert notices == [
            (
                "ejection_refused",
                second.key,
                "not ejected after 1 consecutive refused connect (connect: connection refused):"
                " 1 of 3 enabled backends may be ejected at once (max_ejection_percent 10)",
            )
        ]
        # A drained backend frees no room: it is not enabled, and does not count.
        watched.pool.set_state(third, "drain")
        health.passive_failure(third, "connect: connection refused", refused=True)
        assert third.health == DOWN
        health.stop()

    run(test)


def test_a_lone_backend_is_never_ejected_passively() -> None:
    async def test() -> None:
        watched = Watched(NO_CHECKS, PassiveConfig(max_fails=1), count=1)
        [backend] = watched.backends
        for _ in range(100):
            watched.health.passive_failure(backend, "reset before answering", refused=False)
        assert backend.health == UP and backend.ejections == 0

    run(test)


def test_the_checks_verdict_is_kept_apart_from_an_ejection() -> None:
    async def test() -> None:
        check = HealthCheckConfig(rise=2, fall=2, interval=60.0)
        passive = PassiveConfig(max_fails_refused=1, ejection_time=60.0, max_ejection_percent=100)
        watched = Watched(check, passive)
        [backend] = watched.backends
        watched.health.passive_failure(backend, "connect: connection refused", refused=True)
        assert backend.health == DOWN and backend.checks_up  # (ejected; the checks say up)
        watched.health.record(backend, "connection refused")
        assert backend.checks_up
        watched.health.record(backend, "connection refused")
        assert not backend.checks_up  # (fall reached)
        watched.health.record(backend, None)
        watched.health.record(backend, None)
        assert backend.checks_up and backend.health == DOWN  # (the ejection still holds it)
        watched.health.stop()

    run(test)


def test_a_backend_back_from_ejection_but_not_yet_up_still_counts_toward_the_cap() -> None:
    async def test() -> None:
        check = HealthCheckConfig(rise=2, interval=60.0)  # (no probe comes in the test's time)
        passive = PassiveConfig(max_fails_refused=1, ejection_time=0.05)
        watched = Watched(check, passive, count=3)
        first, second, _ = watched.backends
        watched.health.passive_failure(first, "connect: connection refused", refused=True)
        await asyncio.sleep(0.1)  # the ejection is over; no check has passed since
        assert first.health == DOWN and not first.ejected
        watched.health.passive_failure(second, "connect: connection refused", refused=True)
        assert second.health == UP and second.ejections_refused == 1
        # Once the checks find the first one down, that is their verdict, not an ejection.
        for _ in range(check.fall):
            watched.health.record(first, "connection refused")
        watched.health.passive_failure(second, "connect: connection refused", refused=True)
        assert second.health == DOWN and second.ejected
        watched.health.stop()

    run(test)
