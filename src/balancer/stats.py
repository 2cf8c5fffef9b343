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
PERCENTILES = (50, 90, 99)


class Timing:
    """A distribution of durations, in seconds."""

    __slots__ = ("_hdr", "buckets", "count", "pending", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0
        self._hdr = HdrHistogram(1, 3_600_000_000, 2)  # microseconds, up to an hour
        # Values not yet in the HDR histogram, as {value: count}. Each is cut to its top 8
        # bits, which is the precision a 2-digit HDR histogram keeps anyway, so they fall in
        # few keys; they are added when the histogram is read. (HdrHistogram.record_value
        # is pure Python and was the dearest step of finishing a connection.)
        self.pending: dict[int, int] = {}

    def record(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds
        value = max(1, min(int(seconds * 1e6), 3_600_000_000))
        shift = value.bit_length() - 8
        if shift > 0:
            value = value >> shift << shift
        self.pending[value] = self.pending.get(value, 0) + 1

    @property
    def hdr(self) -> HdrHistogram:
        """The HDR histogram, with every recorded value in it."""
        if self.pending:
            for value, count in self.pending.items():
                self._hdr.record_value(value, count)
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
        self.count += other.count
        self.sum += other.sum
        self.hdr.add(other.hdr)


class BackendStats:
    """What one backend has done: connect times, durations and termination reasons."""

    __slots__ = ("connect", "duration", "terminations")

    def __init__(self) -> None:
        self.connect = Timing()
        self.duration = Timing()
        self.terminations: Counter[str] = Counter()

    def record(self, connect_ms: float, duration_ms: float, termination: str) -> None:
        if connect_ms >= 0:
            self.connect.record(connect_ms / 1000.0)
        self.duration.record(duration_ms / 1000.0)
        self.terminations[termination] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "connect_ms": self.connect.percentiles_ms(),
            "duration_ms": self.duration.percentiles_ms(),
            "terminations": dict(self.terminations),
        }
