"""The process's share of descriptors: the soft limit raised to the hard one, and how many
relayed connections fit in it."""

from __future__ import annotations

import resource

from balancer.dataplane import stream
from balancer.observability.logs import EventLog

RESERVED_DESCRIPTORS = 64  # for the log, health checks, the admin API and listeners


def connection_budget() -> int:
    """Relayed connections this process can hold: two descriptors each, beside the reserve
    and the pipes that bulk transfers splice through (see stream.PIPES)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(1, (soft - RESERVED_DESCRIPTORS - 2 * stream.pipe_limit()) // 2)


def raise_descriptor_limit(log: EventLog) -> None:
    """Lift the soft limit on open descriptors to the hard limit, and say so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.event("limits", f"open-file limit stays {soft}: cannot raise it to {hard}: {exc}")
            return
    log.event(
        "limits",
        f"open-file limit {hard} (was {soft}): at most {connection_budget()} relayed connections "
        f"per process, and {stream.pipe_limit()} pipes to splice bulk transfers through",
    )
