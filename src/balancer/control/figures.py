"""The figures a worker reports to its supervisor, and their sums over workers.

Cumulative counts and histograms go over the wire twice a second; the supervisor keeps those
of workers that died, so the totals never go back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from balancer.observability.stats import BackendStats, Timing

if TYPE_CHECKING:
    from balancer.service.service import Service


def _timing_wire(timing: Timing) -> tuple[list[int], int, str]:
    return (timing.buckets, timing.sum_us, timing.hdr.encode().decode())


def _timing_from_wire(wire: tuple[list[int], int, str]) -> Timing:
    from hdrh.histogram import HdrHistogram

    timing = Timing()
    timing.buckets, timing.sum_us = list(wire[0]), wire[1]
    if timing.count:
        timing.hdr = HdrHistogram.decode(wire[2].encode())
    return timing


def _stats_wire(stats: BackendStats) -> tuple[Any, Any, dict[str, int]]:
    return (_timing_wire(stats.connect), _timing_wire(stats.duration), dict(stats.terminations))


def _stats_from_wire(wire: tuple[Any, Any, dict[str, int]]) -> BackendStats:
    stats = BackendStats()
    stats.connect = _timing_from_wire(wire[0])
    stats.duration = _timing_from_wire(wire[1])
    stats.terminations.update(wire[2])
    return stats


def worker_figures(services: dict[str, Service]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, service in services.items():
        live = service.live_bytes()
        backends = {}
        for b in service.pool.backends.values():
            live_in, live_out = live.get(b, (0, 0))
            backends[b.key] = {
                "active": b.active,
                "total": b.total,
                "bytes_in": b.bytes_in + live_in,
                "bytes_out": b.bytes_out + live_out,
                "connect_failures": b.connect_failures,
                "failures": dict(b.failures),
                "stats": _stats_wire(b.stats),
            }
        figures[name] = {
            "refused": dict(service.refusals),
            "accepted": service.accepted,
            "open": len(service.sessions),
            "queued": len(service.queue),
            "stats": _stats_wire(service.stats),
            "backends": backends,
        }
    return figures


@dataclass
class Totals:
    """Cumulative figures of one service or backend, summed over workers."""

    total: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    connect_failures: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    stats: BackendStats = field(default_factory=BackendStats)

    def add_totals(self, other: Totals) -> None:
        self.total += other.total
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.connect_failures += other.connect_failures
        self.failures.update(other.failures)
        self.stats.connect.merge(other.stats.connect)
        self.stats.duration.merge(other.stats.duration)
        self.stats.terminations.update(other.stats.terminations)

    def add(self, figures: dict[str, Any]) -> None:
        self.total += figures.get("total", figures.get("accepted", 0))
        self.bytes_in += figures.get("bytes_in", 0)
        self.bytes_out += figures.get("bytes_out", 0)
        self.connect_failures += figures.get("connect_failures", 0)
        self.failures.update(figures.get("failures", {}))
        other = _stats_from_wire(figures["stats"])
        self.stats.connect.merge(other.connect)
        self.stats.duration.merge(other.duration)
        self.stats.terminations.update(other.terminations)
