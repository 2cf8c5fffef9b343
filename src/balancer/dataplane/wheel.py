"""Coarse timers for many connections: one loop timer per tick, not one per connection.

Every relayed connection has a deadline (idle, client, server, first-byte timeout) that almost
never fires: under connection churn it is set and cancelled thousands of times a second. An
asyncio TimerHandle for each costs an object, a heap push and a cancellation (about 6% of the
user-space instructions of a connection, measured with callgrind). Here a deadline is rounded up
to the next tick of TICK seconds and the connection joins that tick's set; the loop holds one
timer per tick in use, whatever the number of connections in it. HAProxy's timers work the same
way in spirit (a wheel of expiry dates), at millisecond rather than tick resolution.

A deadline more than FAR seconds away joins the whole second before it instead: its member is
told early and joins again, then at tick resolution. So the loop holds at most one timer per
second for far deadlines (the idle timeout is 300 s by default) plus 32 per second for near
ones. A tick whose members all left keeps its loop timer, which then fires finding nothing to
do (cheaper than cancelling it and making it again for the next member), but not its set,
whose table can be large after a burst.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

PER_SECOND = 32  # ticks
TICK = 1 / PER_SECOND  # seconds: how late a deadline may fire, at most
FAR = 2.0  # seconds: deadlines further away wait on whole seconds first


class Member(Protocol):
    def expired(self) -> None:
        """The tick this member joined has come; its deadline may not have (see Wheel)."""


class Wheel:
    """Deadlines of many members on one loop; `add` returns the tick to give `remove`.

    A member is told at or after its deadline and at most a tick late, or, for a deadline more
    than FAR seconds away, up to a second early; it then joins again for what is left.
    """

    def __init__(self) -> None:
        self.ticks: dict[int, set[Member] | None] = {}  # None: left empty, the timer is still set

    def add(self, member: Member, when: float, now: float) -> int:
        tick = math.ceil(when / TICK)
        if when - now > FAR:
            tick = tick // PER_SECOND * PER_SECOND
        members = self.ticks.get(tick)
        if members is None:
            if tick not in self.ticks:
                asyncio.get_running_loop().call_at(tick * TICK, self._fire, tick)
            members = self.ticks[tick] = set()
        members.add(member)
        return tick

    def remove(self, member: Member, tick: int) -> None:
        members = self.ticks.get(tick)
        if members is not None:
            members.discard(member)
            if not members:
                self.ticks[tick] = None

    def _fire(self, tick: int) -> None:
        for member in self.ticks.pop(tick, None) or ():
            try:
                member.expired()
            except Exception as error:  # (the others must still be told)
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "error in a deadline's callback", "exception": error}
                )

    def __len__(self) -> int:
        return sum(len(members) for members in self.ticks.values() if members)
