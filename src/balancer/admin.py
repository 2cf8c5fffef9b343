"""The admin HTTP server: REST API, Prometheus metrics and the live dashboard.

It runs on the balancer's own event loop, so it reads and changes the pools directly. Every
error is a JSON body `{"error": "..."}` with the right status. With a token set, every path but
the dashboard page itself needs `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from balancer.config import MAX_WEIGHT, Address, parse_address
from balancer.pool import ADMIN_STATES, DRAIN, Backend

if TYPE_CHECKING:
    from balancer.app import Balancer
    from balancer.service import Service

MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminError(Exception):
    """The admin server cannot start; the message says why in one line."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _iso(ts: float) -> str:
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
        "failures": backend.failures,
        "connect_failures": backend.connect_failures,
        "transitions": dict(backend.transitions),
        "last_change": _iso(backend.last_change),
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


class _Collector:
    """Reads the live counters at scrape time, so the relay pays nothing per chunk."""

    def __init__(self, balancer: Balancer) -> None:
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
            "Passive failures: refused or timed-out connects, resets before answering.",
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
                failures.add_metric(key, b.failures)
                for to, count in b.transitions.items():
                    transitions.add_metric([*key, to], count)
                for reason, count in b.stats.terminations.items():
                    terminations.add_metric([*key, reason], count)
                connect.add_metric(key, b.stats.connect.cumulative(), b.stats.connect.sum)
                duration.add_metric(key, b.stats.duration.cumulative(), b.stats.duration.sum)
        yield from (
            service_conns, service_active, service_queued, refused, conns, active, up, eligible,
            weight, received, sent, failures, transitions, terminations, connect, duration,
        )  # fmt: skip


class Admin:
    def __init__(self, balancer: Balancer, listen: Address, token: str | None) -> None:
        if not is_loopback(listen.host) and not token:
            raise AdminError(
                f"the admin API on non-loopback address {listen} needs a token: set [admin] "
                "token or token_file, or --admin-token"
            )
        self.balancer = balancer
        self.listen = listen
        self.token = token
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(balancer))
        self.runner: web.AppRunner | None = None
        self.address = str(listen)
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors, self._auth])
        self.app.add_routes(
            [
                web.get("/", self.dashboard),
                web.get("/metrics", self.metrics),
                web.get("/api/services", self.services),
                web.get("/api/backends", self.backends),
                web.post("/api/backends", self.add_backend),
                web.patch("/api/backends/{service}/{address}", self.change_backend),
                web.delete("/api/backends/{service}/{address}", self.remove_backend),
                web.get("/api/stats", self.stats),
                web.post("/api/reload", self.reload),
                web.get("/api/openapi.json", self.openapi),
            ]
        )
        self._removals: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.listen.host, self.listen.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            reason = (exc.strerror or str(exc)).lower()
            raise AdminError(f"admin API cannot listen on {self.listen}: {reason}") from None
        sockets = getattr(site._server, "sockets", None)  # the bound port, when 0 was asked
        if sockets:
            host, port = sockets[0].getsockname()[:2]
            self.address = f"{host}:{port}"

    async def stop(self) -> None:
        for task in self._removals:
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()

    # -- middleware ------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"request body larger than {MAX_BODY} bytes")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.reason)
        except Exception as exc:  # an admin request must never take the balancer down
            self.balancer.log.event("error", f"admin {request.method} {request.path}: {exc!r}")
            return error(500, f"internal error: {exc}")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token and request.path != "/":
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), self.token.encode()
            ):
                what = "missing" if not given else "wrong"
                return web.json_response(
                    {"error": f"{what} token: send Authorization: Bearer TOKEN"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    # -- helpers ---------------------------------------------------------------------------

    async def _body(self, request: web.Request, allowed: set[str]) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(reason=f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(reason="body must be a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            allowed_text = ", ".join(sorted(allowed))
            raise web.HTTPBadRequest(
                reason=f"unknown field(s) {', '.join(unknown)}; allowed: {allowed_text}"
            )
        return body

    def _service(self, name: object, status: int = 404) -> Service:
        service = self.balancer.services.get(name) if isinstance(name, str) else None
        if service is None:
            known = ", ".join(self.balancer.services) or "none"
            exc = web.HTTPNotFound if status == 404 else web.HTTPBadRequest
            raise exc(reason=f"unknown service {name!r}; services: {known}")
        return service

    def _backend(self, request: web.Request) -> tuple[Service, Backend]:
        service = self._service(request.match_info["service"])
        text = request.match_info["address"]
        try:
            address = parse_address(text)
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=f"address: {exc}") from None
        backend = service.pool.backends.get(address)
        if backend is None:
            raise web.HTTPNotFound(reason=f"service {service.name!r} has no backend {address}")
        return service, backend

    @staticmethod
    def _weight(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
            raise web.HTTPBadRequest(
                reason=f"weight must be a whole number from 1 to {MAX_WEIGHT}, got {value!r}"
            )
        return value

    # -- handlers --------------------------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.StreamResponse:
        page = resources.files("balancer").joinpath("static/dashboard.html").read_text()
        return web.Response(text=page, content_type="text/html")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def services(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([service_json(s) for s in self.balancer.services.values()])

    async def backends(self, request: web.Request) -> web.StreamResponse:
        wanted = request.query.get("service")
        services = (
            [self._service(wanted)] if wanted is not None else self.balancer.services.values()
        )
        return web.json_response(
            [backend_json(s, b, s.live_bytes()) for s in services for b in s.pool.backends.values()]
        )

    async def add_backend(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, {"service", "address", "weight", "state"})
        service = self._service(body.get("service"), status=400)
        try:
            address = parse_address(body.get("address"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=f"address: {exc}") from None
        weight = self._weight(body.get("weight", 1))
        state = body.get("state", "enabled")
        if state not in ADMIN_STATES:
            raise web.HTTPBadRequest(reason=f"state must be one of {', '.join(ADMIN_STATES)}")
        if address in service.pool.backends:
            return error(409, f"service {service.name!r} already has backend {address}")
        backend = service.add_backend(address, weight, reason="admin API", state=state)
        return web.json_response(backend_json(service, backend, {}), status=201)

    async def change_backend(self, request: web.Request) -> web.StreamResponse:
        service, backend = self._backend(request)
        body = await self._body(request, {"weight", "state"})
        if not body:
            raise web.HTTPBadRequest(reason="nothing to change: give weight and/or state")
        weight = self._weight(body["weight"]) if "weight" in body else None
        state = body.get("state")
        if state is not None and state not in ADMIN_STATES:
            raise web.HTTPBadRequest(
                reason=f"state must be one of {', '.join(ADMIN_STATES)}, got {state!r}"
            )
        # Validated whole before anything changes.
        if weight is not None:
            service.pool.set_weight(backend, weight)
        if state is not None:
            service.pool.set_state(backend, state, "admin API")
        return web.json_response(backend_json(service, backend, service.live_bytes()))

    async def remove_backend(self, request: web.Request) -> web.StreamResponse:
        service, backend = self._backend(request)
        if backend.active == 0:
            service.remove_backend(backend, "admin API")
            return web.json_response({"removed": backend.key, "active": 0})
        service.pool.set_state(backend, DRAIN, "admin API: removing once idle")
        task = asyncio.get_running_loop().create_task(self._remove_when_idle(service, backend))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)
        return web.json_response({"draining": backend.key, "active": backend.active}, status=202)

    async def _remove_when_idle(self, service: Service, backend: Backend) -> None:
        while backend.active > 0 and service.pool.backends.get(backend.address) is backend:
            await asyncio.sleep(0.1)
        if service.pool.backends.get(backend.address) is backend:
            service.remove_backend(backend, "admin API: drained")

    async def stats(self, request: web.Request) -> web.StreamResponse:
        result = []
        for service in self.balancer.services.values():
            entry = service_json(service)
            entry.update(service.stats.summary())
            live = service.live_bytes()
            backends = [
                backend_json(service, b, live, stats=True) for b in service.pool.backends.values()
            ]
            entry["bytes_in"] = sum(b["bytes_in"] for b in backends)
            entry["bytes_out"] = sum(b["bytes_out"] for b in backends)
            entry["backends"] = backends
            result.append(entry)
        return web.json_response({"time": time.time(), "services": result})

    async def reload(self, request: web.Request) -> web.StreamResponse:
        errors = await self.balancer.reload("admin API")
        if errors:
            return web.json_response(
                {"error": "reload rejected; the running config is unchanged", "errors": errors},
                status=400,
            )
        return web.json_response({"reloaded": True})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        spec = json.loads(resources.files("balancer").joinpath("static/openapi.json").read_text())
        return web.json_response(spec)
