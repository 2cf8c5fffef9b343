"""Services and backends as the API and the dashboard show them (JSON objects)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from balancer.pool.backend import Backend

if TYPE_CHECKING:
    from balancer.service.service import Service


def iso_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def backend_json(
    service: Service,
    backend: Backend,
    live: dict[Backend, tuple[int, int]],
    *,
    stats: bool = False,
) -> dict[str, Any]:
    """A backend as the API shows it; `live` holds the bytes of its still-open connections."""
    live_in, live_out = live.get(backend, (0, 0))
    result: dict[str, Any] = {
        "service": service.name,
        "address": backend.key,
        "weight": backend.weight,
        "effective_weight": backend.effective_weight,
        "health": backend.health,
        "state": backend.state,
        "eligible": backend in service.pool.eligible,
        "active": backend.active,
        "total": backend.total,
        "bytes_in": backend.bytes_in + live_in,
        "bytes_out": backend.bytes_out + live_out,
        "failures": sum(backend.failures.values()),
        "failure_rules": dict(backend.failures),
        "checks_up": backend.checks_up,
        "ejected": backend.ejected,
        "ejections": backend.ejections,
        "ejections_refused": backend.ejections_refused,
        "connect_failures": backend.connect_failures,
        "transitions": dict(backend.transitions),
        "last_change": iso_time(backend.last_change),
        "last_change_ts": backend.last_change,
    }
    if stats:
        result.update(backend.stats.summary())
    return result


def service_json(service: Service) -> dict[str, Any]:
    return {
        "name": service.name,
        "listen": service.address,
        "algorithm": service.config.algorithm,
        "backends": len(service.pool.backends),
        "eligible": len(service.pool.eligible),
        "active": service.open_connections(),
        "total": service.accepted + service.open_connections(),
        "queued": service.queued(),
        "panic": service.pool.panicking,
        "refused": {str(k): v for k, v in service.refusals.items()},
    }
