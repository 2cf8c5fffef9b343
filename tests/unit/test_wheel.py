"""The timer wheel: a member is told once, not before its deadline and at most a tick after;
a far deadline is told up to a second early; a tick's members that all left free its set."""

from __future__ import annotations

import asyncio
import math

from balancer.dataplane.wheel import FAR, PER_SECOND, TICK, Wheel


class Member:
    def __init__(self, loop: asyncio.AbstractEventLoop, fail: bool = False) -> None:
        self.loop = loop
        self.fail = fail
        self.told: list[float] = []
        self.done = loop.create_future()

    def expired(self) -> None:
        self.told.append(self.loop.time())
        if not self.done.done():
            self.done.set_result(None)
        if self.fail:
            raise RuntimeError("a failing member")


def test_members_are_told_once_between_their_deadline_and_a_tick_later() -> None:
    asyncio.run(_members_are_told_once())


async def _members_are_told_once() -> None:
    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _, context: errors.append(context["exception"]))
    wheel = Wheel()
    start = loop.time()
    # Several members in one tick, one of them failing, and a later one alone in its tick.
    members = [Member(loop, fail=i == 1) for i in range(4)] + [Member(loop)]
    deadlines = [start + 0.05 + i * 0.001 for i in range(4)] + [start + 0.2]
    for member, deadline in zip(members, deadlines, strict=True):
        wheel.add(member, deadline, start)
    left = Member(loop)
    wheel.remove(left, wheel.add(left, start + 0.05, start))  # left before its tick: never told
    await asyncio.wait_for(asyncio.gather(*(m.done for m in members)), timeout=10)
    for member, deadline in zip(members, deadlines, strict=True):
        assert len(member.told) == 1
        assert deadline <= member.told[0] <= deadline + TICK + 0.5  # (a loaded machine is late)
    assert not left.told
    assert [str(e) for e in errors] == ["a failing member"]
    assert len(wheel) == 0 and not wheel.ticks


def test_a_far_deadline_is_told_early_and_can_rejoin() -> None:
    asyncio.run(_far())


async def _far() -> None:
    loop = asyncio.get_running_loop()
    wheel = Wheel()
    told: list[float] = []
    done = loop.create_future()
    start = loop.time()
    # 0.9 s past a whole second, so the early tell comes 0.9 s before the deadline (a deadline
    # within a tick after a whole second would be told once, on time).
    deadline = math.floor(start + FAR) + 1.9

    class Again:
        def expired(self) -> None:
            now = loop.time()
            told.append(now)
            if now < deadline:
                wheel.add(self, deadline, now)  # (what a session does: join again)
            else:
                done.set_result(None)

    tick = wheel.add(Again(), deadline, start)
    assert tick == math.floor(deadline) * PER_SECOND  # (the whole second before the deadline)
    await asyncio.wait_for(done, timeout=30)
    # Told on the whole second before the deadline, then at it.
    assert len(told) == 2
    assert deadline - 1.0 <= told[0] < deadline <= told[1] <= deadline + TICK + 0.5


def test_a_tick_whose_members_left_keeps_no_set() -> None:
    asyncio.run(_emptied())


async def _emptied() -> None:
    loop = asyncio.get_running_loop()
    wheel = Wheel()
    now = loop.time()
    members = [Member(loop) for _ in range(1000)]
    ticks = {wheel.add(member, now + 0.5, now) for member in members}
    assert len(ticks) == 1 and len(wheel) == 1000
    tick = ticks.pop()
    for member in members:
        wheel.remove(member, tick)
    assert wheel.ticks == {tick: None}  # (the loop timer is still set: a new member reuses it)
    again = Member(loop)
    assert wheel.add(again, now + 0.5, now) == tick
    await asyncio.wait_for(again.done, timeout=10)
    assert not wheel.ticks and not any(m.told for m in members)
