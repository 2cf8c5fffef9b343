"""Per-backend figures that the log, the admin API and the metrics read.

Recording happens once per finished connection (never per chunk): a bucket count for the
Prometheus histograms and an HDR histogram for exact percentiles.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

from hdrh.histogram import HdrHistogram

# Prometheus histogram bucket bounds, seconds.
BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
BOUNDS_US = tuple(round(bound * 1e6) for bound in BUCKETS)
HIGHEST_US = 3_600_000_000  # an hour: the HDR histogram's range is 1 us to this
PERCENTILES = (50, 90, 99)


class Timing:
    """A distribution of durations, to the microsecond."""

    __slots__ = ("_hdr", "buckets", "pending", "sum_us")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum_us = 0
        self._hdr = HdrHistogram(1, HIGHEST_US, 2)
        # Values not yet in the HDR histogram, as {value: count}. Each is cut to its top 8
        # bits, which is the precision a 2-digit HDR histogram keeps anyway, so they fall in
        # few keys; they are added when the histogram is read. (HdrHistogram.record_value
        # is pure Python and was the dearest step of finishing a connection.)
        self.pending: dict[int, int] = {}

    def record_us(self, us: int) -> None:
        """Record a duration of `us` microseconds (as an int: it is a dictionary key)."""
        self.buckets[bisect.bisect_left(BOUNDS_US, us)] += 1
        self.sum_us += us
        shift = us.bit_length() - 8
        if shift > 0:
            us = us >> shift << shift
        pending = self.pending
        pending[us] = pending.get(us, 0) + 1

    def add(self, buckets: list[int], sum_us: int, values: dict[int, int]) -> None:
        """Durations recorded elsewhere (the compiled data plane), as `record_us` keeps them:
        bucket counts, their sum, and each value cut to its top 8 bits with its count."""
        mine = self.buckets
        for i, count in enumerate(buckets):
            mine[i] += count
        self.sum_us += sum_us
        pending = self.pending
        for value, count in values.items():
            pending[value] = pending.get(value, 0) + count

    @property
    def count(self) -> int:
        return sum(self.buckets)

    @property
    def sum(self) -> float:
        """In seconds."""
        return self.sum_us / 1e6

    @property
    def hdr(self) -> HdrHistogram:
        """The HDR histogram, with every recorded value in it."""
        if self.pending:
            for value, count in self.pending.items():
                self._hdr.record_value(min(max(value, 1), HIGHEST_US), count)
            self.pending.clear()
        return self._hdr

    @hdr.setter
    def hdr(self, histogram: HdrHistogram) -> None:
        self.pending.clear()
        self._hdr = histogram

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs as Prometheus wants them."""
        pairs = []
        running = 0
        for bound, count in zip((*[repr(b) for b in BUCKETS], "+Inf"), self.buckets, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs

    def percentiles_ms(self) -> dict[str, float | None]:
        result: dict[str, float | None]
        if not self.count:
            result = {f"p{p}": None for p in PERCENTILES}
            result["max"] = None
            return result
        result = {f"p{p}": self.hdr.get_value_at_percentile(p) / 1000.0 for p in PERCENTILES}
        result["max"] = self.hdr.get_max_value() / 1000.0
        return result

    def merge(self, other: Timing) -> None:
        for i, count in enumerate(other.buckets):
            self.buckets[i] += count
        self.sum_us += other.sum_us
        self.hdr.add(other.hdr)


class BackendStats:
    """What one backend has done: connect times, durations and termination reasons."""

    __slots__ = ("connect", "duration", "terminations")

    def __init__(self) -> None:
        self.connect = Timing()
        self.duration = Timing()
        self.terminations: Counter[str] = Counter()

    def record(self, connect_us: int, duration_us: int, termination: str) -> None:
        """One finished connection; `connect_us` is negative if it never connected."""
        if connect_us >= 0:
            self.connect.record_us(connect_us)
        self.duration.record_us(duration_us)
        self.terminations[termination] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "connect_ms": self.connect.percentiles_ms(),
            "duration_ms": self.duration.percentiles_ms(),
            "terminations": dict(self.terminations),
        }
