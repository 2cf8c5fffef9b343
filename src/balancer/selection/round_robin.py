"""Smooth weighted round-robin, as nginx does it.

One worker keeps each backend's current weight across rebuilds, as nginx does, so shares stay
exact while backends come and go and weights change (SmoothRotation); a pick compares only one
backend per distinct weight (SmoothPicks), not all of them. Several workers walk one cycle,
worked out once for the weights (a part at each pick if it is long), with a position in shared
memory (see balancer.shared), which also carries on across rebuilds.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections.abc import Iterator, Sequence
from functools import reduce
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from balancer.pool.backend import Backend


class Cursor(Protocol):
    """A position in the schedule that several workers share (service.shared.SharedCursor)."""

    def next(self, length: int) -> int:
        """The position to take, below `length`; the next call gets the one after it."""


MAX_CYCLE = 65536
RESOLUTION = 64  # the least total weight a smooth cycle works with
# Backends out of rotation whose place is remembered (drained, down, slow-starting elsewhere).
MAX_HELD = 4096
KEPT_SCHEDULES = 4  # workers' schedules kept for weights seen before
SCHEDULE_WORK = 4096  # comparisons of a workers' schedule worked out at a pick (see _work_out)


def selection_weight(backend: Backend) -> int:
    """In sixteenths, so a slow-starting backend's fractional weight still counts."""
    return max(1, round(backend.effective_weight * 16))


def reduced_weights(weights: Sequence[int]) -> list[int]:
    """The weights over their gcd; scaled down if a cycle would be longer than MAX_CYCLE."""
    if not weights:
        return []
    divisor = reduce(math.gcd, weights)
    reduced = [w // divisor for w in weights]
    total = sum(reduced)
    if total > MAX_CYCLE:
        # Exact shares would need too long a cycle; keep them to within 1/MAX_CYCLE.
        reduced = [max(1, round(w * MAX_CYCLE / total)) for w in reduced]
    return reduced


class SmoothPicks:
    """Smooth weighted round-robin's picks one at a time, the same as nginx's, in
    O(k + log n) for n backends of k distinct weights rather than O(n).

    A pick adds every weight to its backend's current weight; the highest (the first of equals)
    is picked and pays the total. Adding weights never changes the order among backends of
    the same weight, only a pick does; so each weight keeps its backends in a heap, and a pick
    compares only the heaps' leaders. A current weight is `base + steps * weight`; once a
    cycle's worth of steps has gone by, the bases take the steps in (O(n) every total picks,
    and the total is at least n), so the numbers stay as small as the current weights.
    """

    __slots__ = ("base", "groups", "steps", "total", "weights")

    def __init__(self, weights: Sequence[int], start: Sequence[int]) -> None:
        self.weights = list(weights)
        self.total = sum(weights)
        self._rebase(list(start))

    def _rebase(self, current: list[int]) -> None:
        self.base = current
        self.steps = 0
        heaps: dict[int, list[tuple[int, int]]] = {}
        for index, (weight, value) in enumerate(zip(self.weights, current, strict=True)):
            heaps.setdefault(weight, []).append((-value, index))  # (highest first, then first)
        for heap in heaps.values():
            heapq.heapify(heap)
        self.groups = list(heaps.items())

    def pick(self) -> int:
        if self.steps == self.total:
            self._rebase(self.current())
        steps = self.steps = self.steps + 1
        groups = iter(self.groups)
        weight, chosen = next(groups)
        negated, best = chosen[0]
        best_value = steps * weight - negated
        for weight, heap in groups:
            negated, index = heap[0]
            value = steps * weight - negated
            if value > best_value or (value == best_value and index < best):
                best, best_value, chosen = index, value, heap
        self.base[best] -= self.total
        heapq.heapreplace(chosen, (-self.base[best], best))
        return best

    def current(self) -> list[int]:
        """The current weights after the picks made so far."""
        steps = self.steps
        return [b + steps * w for b, w in zip(self.base, self.weights, strict=True)]


def smooth_run(
    weights: Sequence[int], start: Sequence[int], picks: int
) -> tuple[list[int], list[int]]:
    """`picks` picks of smooth weighted round-robin from the current weights `start`: the
    indexes picked, and the current weights after them."""
    run = SmoothPicks(weights, start)
    pick = run.pick
    return [pick() for _ in range(picks)], run.current()


def smooth_schedule(weights: Sequence[int]) -> list[int]:
    """One cycle of indexes: each index appears weight/gcd times, spread out, not in bursts."""
    reduced = reduced_weights(weights)
    return smooth_run(reduced, [0] * len(reduced), sum(reduced))[0]


class SmoothWeights:
    """nginx's smooth weighted round-robin state: each backend's current weight, carried over
    every rebuild (nginx keeps a peer's current_weight the same way).

    A pick adds every weight to its backend's current weight, and the highest is picked and
    pays the total. A current weight is what a backend is owed (or owes) in picks, times the
    total, so across a rebuild it is rescaled to the new total; a backend out of rotation
    keeps it until it returns. Each backend then stays within a pick or two of its exact share
    of the picks made while it was eligible, however often the eligible set changes; and a
    rebuild that changes nothing changes nothing.
    """

    def __init__(self) -> None:
        self.keys: tuple[str, ...] = ()
        self.weights: list[int] = []
        self.total = 0
        self.current: list[int] = []
        # key -> (current weight, the total it is counted against), oldest first.
        self.held: dict[str, tuple[int, int]] = {}

    def update(self, keys: Sequence[str], weights: Sequence[int]) -> None:
        held = self.held
        for key, value in zip(self.keys, self.current, strict=True):
            held.pop(key, None)
            held[key] = (value, self.total)
        total = sum(weights)
        current = []
        for key in keys:
            value, counted = held.pop(key, (0, total))
            if counted != total:  # rescale, rounding to nearest, in integers
                value = (2 * value * total + counted) // (2 * counted)
            current.append(value)
        while len(held) > MAX_HELD:
            del held[next(iter(held))]
        self.keys, self.weights, self.total = tuple(keys), list(weights), total
        self.current = current

    def advance(self) -> list[int]:
        """Add every weight to its current weight; the current weights, for the choice."""
        current = self.current
        current[:] = map(operator.add, current, self.weights)
        return current

    def charge(self, index: int) -> None:
        self.current[index] -= self.total


class SmoothRotation(SmoothWeights):
    """Smooth weighted round-robin's picks for one worker: the current weights carried over
    every rebuild (SmoothWeights), the picks made by SmoothPicks, so that a pick costs
    O(k + log n) and a rebuild O(n) (plus one pass over a kept cycle, if one is being walked).

    The picks of each cycle (the total weight's worth) are kept: once a cycle has brought the
    current weights back to where it started (the first from a fresh start, or one or two
    after a rebuild), it is walked again and again until the next rebuild, at O(1) a pick.
    """

    def __init__(self) -> None:
        super().__init__()
        self.picks: SmoothPicks | None = None  # made at the first pick after a rebuild
        self.cycle: list[int] = []  # the picks made since `start`
        self.start: list[int] = []  # the current weights the cycle began from
        self.position = -1  # walking `cycle` again, this far into it; -1: picking

    def update(self, keys: Sequence[str], weights: Sequence[int]) -> None:
        self.current = self._now()
        self.picks, self.cycle, self.position = None, [], -1
        reduced = reduced_weights(weights)
        # Whole numbers count what a backend is owed, in 1/total of a pick: at least
        # 1/RESOLUTION, so that rescaling them over rebuilds loses next to nothing.
        scale = -(-RESOLUTION // sum(reduced)) if reduced else 1
        super().update(keys, [w * scale for w in reduced])

    def _now(self) -> list[int]:
        """The current weights after the picks made so far."""
        if self.picks is None:
            return self.current
        if self.position < 0:
            return self.picks.current()
        made = self.position
        counts = [0] * len(self.start)
        for index in self.cycle[:made]:
            counts[index] += 1
        total = self.total
        return [
            s + made * w - total * c
            for s, w, c in zip(self.start, self.weights, counts, strict=True)
        ]

    def pick(self) -> int:
        position = self.position
        if position >= 0:
            cycle = self.cycle
            if position == len(cycle):
                position = 0
            self.position = position + 1
            return cycle[position]
        picks = self.picks
        if picks is None:
            picks = self.picks = SmoothPicks(self.weights, self.current)
            self.start = list(self.current)
        index = picks.pick()
        cycle = self.cycle
        cycle.append(index)
        if len(cycle) == self.total:
            now = picks.current()
            if now == self.start:
                self.position = len(cycle)  # (the next pick starts it again)
            else:
                self.start, self.cycle = now, []
        return index


class RoundRobin:
    """Over each cycle every backend gets exactly its weight's share, interleaved."""

    def __init__(self) -> None:
        self._backends: tuple[Backend, ...] = ()
        self._weights: list[int] = []
        self._smooth = SmoothRotation()
        # Built on first use with a shared cursor: the one cycle all workers walk. The last
        # few used are kept by weights, so a backend that flaps in and out costs no new one.
        self._schedule: list[int] | None = None
        self._schedules: dict[tuple[int, ...], list[int]] = {}
        # A schedule too long to work out at once is worked out a part at each pick (see
        # _work_out): its weights, its picker, and its picks so far.
        self._making: tuple[tuple[int, ...], SmoothPicks, list[int]] | None = None
        # With several workers, a position shared by all of them (see balancer.shared). It is
        # never reset: a rebuild carries on from it, modulo the new cycle's length.
        self.cursor: Cursor | None = None

    def update(self, backends: Sequence[Backend]) -> None:
        self._backends = tuple(backends)
        self._weights = [selection_weight(b) for b in backends]
        self._smooth.update([b.key for b in backends], self._weights)
        weights = tuple(self._weights)
        self._schedule = self._schedules.pop(weights, None)
        if self._schedule is not None:  # (the latest used is the last to be dropped)
            self._schedules[weights] = self._schedule
        if self._making is not None and self._making[0] != weights:
            self._making = None

    def candidates(self, client: str) -> Iterator[Backend]:
        backends = self._backends
        if not backends:
            return
        first = -1
        if self.cursor is not None:
            schedule = self._schedule or self._work_out()
            if schedule is not None:
                first = schedule[self.cursor.next(len(schedule))]
        if first < 0:
            first = self._smooth.pick()  # (a worker's own, until its schedule is worked out)
        yield backends[first]
        count = len(backends)
        for step in range(1, count):
            yield backends[(first + step) % count]

    def _work_out(self) -> list[int] | None:
        """Work out more of the workers' schedule: about SCHEDULE_WORK comparisons' worth of
        picks at each call, so a long one (1,000 backends of 100 distinct weights: 50,000
        picks of 100 comparisons each) costs no long stall; the schedule once it is whole."""
        making = self._making
        if making is None:  # (update() drops one made for other weights)
            reduced = reduced_weights(self._weights)
            picker = SmoothPicks(reduced, [0] * len(reduced))
            making = self._making = (tuple(self._weights), picker, [])
        weights, picker, made = making
        pick = picker.pick
        share = max(1, SCHEDULE_WORK // len(picker.groups))
        made.extend(pick() for _ in range(min(share, picker.total - len(made))))
        if len(made) < picker.total:
            return None
        self._making = None
        self._schedule = self._schedules[weights] = made
        if len(self._schedules) > KEPT_SCHEDULES:
            del self._schedules[next(iter(self._schedules))]
        return made
