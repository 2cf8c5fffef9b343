"""The Prometheus metrics: read from the live counters at scrape time, never kept per chunk.

Names follow Prometheus's conventions: the `balancer_` prefix, base units, `_total` on
counters, and the labels `service` and `backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

if TYPE_CHECKING:
    from balancer.service.service import Service


class Services(Protocol):
    """What the metrics read: the process's services."""

    services: dict[str, Service]


class Collector:
    """Reads the live counters at scrape time, so the relay pays nothing per chunk."""

    def __init__(self, balancer: Services) -> None:
        self.balancer = balancer

    def collect(self) -> Any:
        labels = ["service", "backend"]
        conns = CounterMetricFamily(
            "balancer_backend_connections", "Connections relayed to a backend.", labels=labels
        )
        active = GaugeMetricFamily(
            "balancer_backend_active_connections", "Open connections to a backend.", labels=labels
        )
        up = GaugeMetricFamily(
            "balancer_backend_up", "1 when the backend is healthy, else 0.", labels=labels
        )
        eligible = GaugeMetricFamily(
            "balancer_backend_eligible",
            "1 when the backend takes new connections (healthy and enabled).",
            labels=labels,
        )
        weight = GaugeMetricFamily("balancer_backend_weight", "Configured weight.", labels=labels)
        received = CounterMetricFamily(
            "balancer_backend_received_bytes", "Bytes from clients to the backend.", labels=labels
        )
        sent = CounterMetricFamily(
            "balancer_backend_sent_bytes", "Bytes from the backend to clients.", labels=labels
        )
        failures = CounterMetricFamily(
            "balancer_backend_failures",
            "Passive failures by the rule that judged them (refused, connect and "
            "before_request count against the backend, several_clients too; one_client not).",
            labels=[*labels, "rule"],
        )
        ejections = CounterMetricFamily(
            "balancer_backend_ejections", "Passive ejections of a backend.", labels=labels
        )
        ejections_refused = CounterMetricFamily(
            "balancer_backend_ejections_refused",
            "Passive ejections not made: max_ejection_percent of the backends were out.",
            labels=labels,
        )
        transitions = CounterMetricFamily(
            "balancer_backend_transitions",
            "State changes of a backend (up, down, drain, ...).",
            labels=[*labels, "to"],
        )
        terminations = CounterMetricFamily(
            "balancer_connection_terminations",
            "Finished connections by termination reason.",
            labels=[*labels, "reason"],
        )
        connect = HistogramMetricFamily(
            "balancer_backend_connect_seconds", "Time to connect to the backend.", labels=labels
        )
        duration = HistogramMetricFamily(
            "balancer_connection_duration_seconds",
            "Lifetime of relayed connections.",
            labels=labels,
        )
        service_active = GaugeMetricFamily(
            "balancer_service_active_connections", "Open client connections.", labels=["service"]
        )
        service_queued = GaugeMetricFamily(
            "balancer_service_queued_connections",
            "Clients waiting in the queue for a backend below its max_connections.",
            labels=["service"],
        )
        service_conns = CounterMetricFamily(
            "balancer_service_connections", "Client connections accepted.", labels=["service"]
        )
        panic = GaugeMetricFamily(
            "balancer_service_panic",
            "1 while the service panics: too few backends up, it spreads over those the "
            "active checks hold up.",
            labels=["service"],
        )
        refused = CounterMetricFamily(
            "balancer_refused_connections",
            "Clients refused by ACLs, limits, queues or a bad PROXY header.",
            labels=["service", "reason"],
        )
        for service in self.balancer.services.values():
            for reason, count in service.refusals.items():
                refused.add_metric([service.name, str(reason)], count)
            opened = service.open_connections()
            service_active.add_metric([service.name], opened)
            service_queued.add_metric([service.name], service.queued())
            service_conns.add_metric([service.name], service.accepted + opened)
            panic.add_metric([service.name], 1 if service.pool.panicking else 0)
            for reason, count in service.stats.terminations.items():
                if reason in ("no_backend", "connect_failed", "client_aborted"):
                    terminations.add_metric([service.name, "", reason], count)
            live = service.live_bytes()
            for b in service.pool.backends.values():
                key = [service.name, b.key]
                live_in, live_out = live.get(b, (0, 0))
                conns.add_metric(key, b.total)
                active.add_metric(key, b.active)
                up.add_metric(key, 1 if b.health == "up" else 0)
                eligible.add_metric(key, 1 if b in service.pool.eligible else 0)
                weight.add_metric(key, b.weight)
                received.add_metric(key, b.bytes_in + live_in)
                sent.add_metric(key, b.bytes_out + live_out)
                for rule, count in b.failures.items():
                    failures.add_metric([*key, rule], count)
                ejections.add_metric(key, b.ejections)
                ejections_refused.add_metric(key, b.ejections_refused)
                for to, count in b.transitions.items():
                    transitions.add_metric([*key, to], count)
                for reason, count in b.stats.terminations.items():
                    terminations.add_metric([*key, reason], count)
                connect.add_metric(key, b.stats.connect.cumulative(), b.stats.connect.sum)
                duration.add_metric(key, b.stats.duration.cumulative(), b.stats.duration.sum)
        yield from (
            service_conns, service_active, service_queued, panic, refused, conns, active, up,
            eligible, weight, received, sent, failures, ejections, ejections_refused,
            transitions, terminations, connect, duration,
        )  # fmt: skip
