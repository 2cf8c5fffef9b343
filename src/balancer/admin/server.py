"""The admin HTTP server: REST API, Prometheus metrics and the live dashboard.

It runs on the balancer's own event loop, so it reads and changes the pools directly. Every
error is a JSON body `{"error": "..."}` with the right status. With a token set, every path but
the dashboard page itself needs `Authorization: Bearer TOKEN`.

A web page the operator visits must not drive the API, so (see `_guard`): a POST or PATCH needs
`Content-Type: application/json`, which no form and no fetch without a CORS preflight can send
(and no preflight is ever granted); a request with a foreign `Origin` is refused; and a `Host`
other than a loopback name or the listen address is refused unless the token comes with it, so
a DNS name rebound to 127.0.0.1 reaches nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from balancer.admin.metrics import Collector
from balancer.admin.security import host_name, is_loopback
from balancer.admin.views import backend_json, service_json
from balancer.config.model import MAX_WEIGHT
from balancer.core.address import Address, parse_address
from balancer.observability.logs import EventLog
from balancer.pool.backend import DRAIN, Backend, check_state
from balancer.service.service import Service

MAX_BODY = 64 * 1024
REMOVAL_POLL = 0.1  # seconds between looks at a backend waiting to be removed once idle
JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Controlled(Protocol):
    """What the admin API drives: the process's services, its reload and its log (control.app's
    Balancer)."""

    services: dict[str, Service]
    log: EventLog

    async def reload(self, trigger: str) -> list[str]:
        """Re-read the config file and apply it; the errors if it was rejected."""

    def open_on(self, backend: Backend) -> int:
        """The backend's open connections now, in every worker."""


class AdminError(Exception):
    """The admin server cannot start; the message says why in one line."""


class ApiError(Exception):
    """A request the API refuses: answered as `{"error": message}` with `status`.

    (Not aiohttp's HTTPException: its reason goes into the status line, where a line break
    quoted from the request is an error of its own.)
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Admin:
    def __init__(self, balancer: Controlled, listen: Address, token: str | None) -> None:
        if not is_loopback(listen.host) and not token:
            raise AdminError(
                f"the admin API on non-loopback address {listen} needs a token: set [admin] "
                "token or token_file, or --admin-token"
            )
        self.balancer = balancer
        self.listen = listen
        self.token = token
        self.registry = CollectorRegistry()
        self.registry.register(Collector(balancer))
        self.runner: web.AppRunner | None = None
        self.address = str(listen)
        self.port = listen.port  # the bound one once started
        self.app = web.Application(
            client_max_size=MAX_BODY,
            middlewares=[self._errors, self._guard, self._auth, self._json_only],
        )
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
        # Backends deleted while busy, each removed by its task once idle (see remove_backend).
        self._removals: dict[Backend, tuple[Service, asyncio.Task[None]]] = {}

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
            self.port = port

    async def stop(self) -> None:
        for _, task in self._removals.values():
            task.cancel()
        self._removals.clear()
        if self.runner is not None:
            await self.runner.cleanup()

    # -- middleware ------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error(exc.status, exc.message)
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"request body larger than {MAX_BODY} bytes")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.reason)
        except Exception as exc:  # an admin request must never take the balancer down
            self.balancer.log.event("error", f"admin {request.method} {request.path}: {exc!r}")
            return error(500, f"internal error: {exc}")

    def _token_given(self, request: web.Request) -> bool:
        if not self.token:
            return False
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.token.encode()
        )

    def _own_hosts(self, request: web.Request) -> set[str]:
        """Host names this listener answers to besides loopback ones: its listen address and
        the address the connection came in on (both IP literals unless a name was given)."""
        hosts = {self.listen.host.lower()}
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple) and sockname:
            hosts.add(str(sockname[0]).lower())
        return hosts

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse what a web page could send here: a foreign Host (DNS rebinding) and a foreign
        Origin (cross-site requests). Browsers always send Host; a request without one is not
        from a browser and is let through."""
        given = request.headers.get("Host")
        host = host_name(given) if given is not None else None
        if given is not None and not (
            (host is not None and (is_loopback(host) or host in self._own_hosts(request)))
            or (self.token and (request.path == "/" or self._token_given(request)))
        ):
            # (With a token, the page at / holds no data and every other path needs the token.)
            return error(
                421,
                f"Host {given!r} is not this admin server: use its address "
                f"{Address(self.listen.host, self.port)}, localhost, 127.0.0.1 or [::1] (other "
                "names are "
                "refused so that a DNS name pointed at this machine cannot reach the API"
                + ("; or send the token)" if self.token else ")"),
            )
        origin = request.headers.get("Origin")
        if origin is not None and not self._own_origin(origin, given):
            return error(
                403,
                f"cross-origin request refused: Origin {origin!r} is not this admin server's "
                "own; the API serves only its own dashboard page and clients that send no Origin",
            )
        return await handler(request)

    def _own_origin(self, origin: str, host: str | None) -> bool:
        """The Origin of a page this listener served: by the name the request came to, or by
        a loopback name or its listen address with its own port."""
        origin = origin.strip().lower()
        own = {f"http://{name}:{self.port}" for name in ("localhost", "127.0.0.1", "[::1]")}
        own.add(f"http://{Address(self.listen.host, self.port)}".lower())
        if host is not None:
            host = host.strip().lower()
            own.update({f"http://{host}", f"https://{host}"})  # (https: behind a TLS proxy)
        return origin in own

    @web.middleware
    async def _json_only(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """POST and PATCH need `Content-Type: application/json`, with or without a body: the
        one type a form or a fetch without a CORS preflight cannot send. A DELETE needs none
        when it has no body: a browser sends no cross-site DELETE without a preflight."""
        if (
            request.method in ("POST", "PATCH", "DELETE")
            and request.match_info.http_exception is None  # (an unknown path stays a 404)
            and request.content_type != JSON
            and not (
                request.method == "DELETE"
                and "Content-Type" not in request.headers
                and not request.body_exists
            )
        ):
            given = request.headers.get("Content-Type")
            return error(
                415,
                f"{request.method} needs Content-Type: {JSON} (got "
                + (repr(given) if given is not None else "none")
                + "), so that no web page can send it from another site",
            )
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token and request.path != "/":
            given = request.headers.get("Authorization", "")
            if not self._token_given(request):
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
        # (ValueError: bad JSON or UTF-8, or a number of more than 4,300 digits; RecursionError:
        # arrays nested some thousands deep)
        try:
            body = json.loads(raw or b"null")
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise ApiError(400, f"unknown field(s) {names}; allowed: {', '.join(sorted(allowed))}")
        return body

    def _service(self, name: object, status: int = 404) -> Service:
        service = self.balancer.services.get(name) if isinstance(name, str) else None
        if service is None:
            known = ", ".join(self.balancer.services) or "none"
            raise ApiError(status, f"unknown service {name!r}; services: {known}")
        return service

    def _backend(self, request: web.Request) -> tuple[Service, Backend]:
        service = self._service(request.match_info["service"])
        text = request.match_info["address"]
        try:
            address = parse_address(text)
        except ValueError as exc:
            raise ApiError(400, f"address: {exc}") from None
        backend = service.pool.backends.get(address)
        if backend is None:
            raise ApiError(404, f"service {service.name!r} has no backend {address}")
        return service, backend

    @staticmethod
    def _weight(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
            raise ApiError(
                400, f"weight must be a whole number from 1 to {MAX_WEIGHT}, got {value!r}"
            )
        return value

    @staticmethod
    def _state(value: object) -> str:
        try:
            check_state(value)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return cast(str, value)

    # -- handlers --------------------------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.StreamResponse:
        page = resources.files("balancer.admin").joinpath("static/dashboard.html").read_text()
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
            raise ApiError(400, f"address: {exc}") from None
        weight = self._weight(body.get("weight", 1))
        state = self._state(body.get("state", "enabled"))
        if address in service.pool.backends:
            return error(409, f"service {service.name!r} already has backend {address}")
        backend = service.add_backend(address, weight, reason="admin API", state=state)
        return web.json_response(backend_json(service, backend, {}), status=201)

    async def change_backend(self, request: web.Request) -> web.StreamResponse:
        service, backend = self._backend(request)
        body = await self._body(request, {"weight", "state"})
        if not body:
            raise ApiError(400, "nothing to change: give weight and/or state")
        weight = self._weight(body["weight"]) if "weight" in body else None
        state = self._state(body["state"]) if "state" in body else None
        # Validated whole before anything changes.
        if weight is not None:
            service.pool.set_weight(backend, weight)
        if state is not None:
            # The operator says what the backend is to be now: a pending removal ends.
            self._cancel_removal(service, backend, f"state set to {state} by the admin API")
            service.pool.set_state(backend, state, "admin API")
        return web.json_response(backend_json(service, backend, service.live_bytes()))

    async def remove_backend(self, request: web.Request) -> web.StreamResponse:
        service, backend = self._backend(request)
        active = self.balancer.open_on(backend)
        if active == 0:
            service.remove_backend(backend, "admin API")
            return web.json_response({"removed": backend.key, "active": 0})
        service.pool.set_state(backend, DRAIN, "admin API: removing once idle")
        if backend not in self._removals:  # (a DELETE again: the one task goes on)
            task = asyncio.get_running_loop().create_task(self._remove_when_idle(service, backend))
            self._removals[backend] = (service, task)
            task.add_done_callback(lambda _: self._forget_removal(backend, task))
        return web.json_response({"draining": backend.key, "active": active}, status=202)

    async def _remove_when_idle(self, service: Service, backend: Backend) -> None:
        """Remove the backend once its connections have finished, if it is still draining and
        still the same object in the pool; a reload or a change of state ends the wait (the
        reload sets a backend the file lists back to enabled, or removes one it does not)."""
        while True:
            if service.pool.backends.get(backend.address) is not backend:
                return  # removed meanwhile (by a reload, or a service gone)
            if backend.state != DRAIN:
                self._log_cancelled(service, backend, f"state is {backend.state} again")
                return
            if self.balancer.open_on(backend) <= 0:
                service.remove_backend(backend, "admin API: drained")
                return
            await asyncio.sleep(REMOVAL_POLL)

    def _forget_removal(self, backend: Backend, task: asyncio.Task[None]) -> None:
        if backend in self._removals and self._removals[backend][1] is task:
            del self._removals[backend]

    def _cancel_removal(self, service: Service, backend: Backend, why: str) -> None:
        _, task = self._removals.pop(backend, (service, None))
        if task is not None and not task.done():
            task.cancel()
            self._log_cancelled(service, backend, why)

    def _settle_removals(self) -> None:
        """After a reload: end at once the waits it has made pointless (the tasks would see
        it on their next look; a SIGHUP reload leaves it to them)."""
        for backend, (service, task) in list(self._removals.items()):
            if self.balancer.services.get(service.name) is not service or (
                service.pool.backends.get(backend.address) is not backend
            ):
                self._removals.pop(backend, None)
                task.cancel()
            elif backend.state != DRAIN:
                self._cancel_removal(service, backend, f"state is {backend.state} again")

    def _log_cancelled(self, service: Service, backend: Backend, why: str) -> None:
        self.balancer.log.event(
            "removal_cancelled",
            f"{backend.key} removal_cancelled: no longer removed once idle, {why}",
            service=service.name,
            backend=backend.key,
        )

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
        self._settle_removals()
        if errors:
            return web.json_response(
                {"error": "reload rejected; the running config is unchanged", "errors": errors},
                status=400,
            )
        return web.json_response({"reloaded": True})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        spec = json.loads(
            resources.files("balancer.admin").joinpath("static/openapi.json").read_text()
        )
        return web.json_response(spec)
