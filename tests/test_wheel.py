"""The timer wheel: a member is told once, not before its deadline and at most a tick after."""

from __future__ import annotations

import asyncio

from balancer.wheel import TICK, Wheel


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
        wheel.add(member, deadline)
    left = Member(loop)
    wheel.remove(left, wheel.add(left, start + 0.05))  # left before its tick: never told
    await asyncio.wait_for(asyncio.gather(*(m.done for m in members)), timeout=10)
    for member, deadline in zip(members, deadlines, strict=True):
        assert len(member.told) == 1
        assert deadline <= member.told[0] <= deadline + TICK + 0.5  # (a loaded machine is late)
    assert not left.told
    assert [str(e) for e in errors] == ["a failing member"]
    assert len(wheel) == 0 and not wheel.ticks


def test_a_member_can_rejoin_from_its_callback() -> None:
    asyncio.run(_rejoin())


async def _rejoin() -> None:
    loop = asyncio.get_running_loop()
    wheel = Wheel()
    told: list[float] = []
    done = loop.create_future()

    class Again:
        def expired(self) -> None:
            told.append(loop.time())
            if len(told) < 3:
                wheel.add(self, loop.time() + 0.01)
            else:
                done.set_result(None)

    wheel.add(Again(), loop.time())
    await asyncio.wait_for(done, timeout=10)
    assert len(told) == 3 and told == sorted(told)
