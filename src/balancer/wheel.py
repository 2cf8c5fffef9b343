"""Coarse timers for many connections: one loop timer per tick, not one per connection.

Every relayed connection has a deadline (idle, client, server, first-byte timeout) that almost
never fires: under connection churn it is set and cancelled thousands of times a second. An
asyncio TimerHandle for each costs an object, a heap push and a cancellation (about 6% of the
user-space instructions of a connection, measured with callgrind). Here a deadline is rounded up
to the next tick of TICK seconds and the connection joins that tick's set; the loop holds one
timer per tick in use, whatever the number of connections in it. HAProxy's timers work the same
way in spirit (a wheel of expiry dates), at millisecond rather than tick resolution.

A tick whose members all left still fires once, finding nothing to do: cheaper than cancelling
its loop timer and making it again for the next connection that lands in it.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

TICK = 1 / 32  # seconds: how late a deadline may fire, at most


class Member(Protocol):
    def expired(self) -> None:
        """The tick this member joined has come (its deadline may have moved since)."""


class Wheel:
    """Deadlines of many members on one loop; `add` returns the tick to give `remove`."""

    def __init__(self) -> None:
        self.ticks: dict[int, set[Member]] = {}

    def add(self, member: Member, when: float) -> int:
        tick = math.ceil(when / TICK)
        members = self.ticks.get(tick)
        if members is None:
            members = self.ticks[tick] = set()
            asyncio.get_running_loop().call_at(tick * TICK, self._fire, tick)
        members.add(member)
        return tick

    def remove(self, member: Member, tick: int) -> None:
        members = self.ticks.get(tick)
        if members is not None:
            members.discard(member)

    def _fire(self, tick: int) -> None:
        for member in self.ticks.pop(tick, ()):
            try:
                member.expired()
            except Exception as error:  # (the others must still be told)
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "error in a deadline's callback", "exception": error}
                )

    def __len__(self) -> int:
        return sum(len(members) for members in self.ticks.values())
