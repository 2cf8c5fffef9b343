"""The proxy: moves bytes between a client connection and a backend connection.

Built on asyncio Protocols and transports, so relaying a chunk is one callback and one write
with no coroutine and no copy. Backpressure runs both ways: when one side's write buffer fills,
reading from the other side stops until it drains. An EOF from one side is forwarded as a
half-close to the other; the connection ends when both directions have ended, or either side
resets. Every connection ends with exactly one termination reason.

A backend connection that fails before any byte has flowed either way is retried on the next
candidate, invisibly to the client; with `retry_replay`, so is one that fails after the client
spoke but before the backend answered, and the client's first bytes are sent again.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING

from balancer.logs import AccessRecord

if TYPE_CHECKING:
    from balancer.pool import Backend
    from balancer.service import Service

LINGER = 2.0  # seconds a refused client may keep sending before we close


class Termination(StrEnum):
    CLIENT_CLOSED = "client_closed"  # the client finished first (EOF or close)
    BACKEND_CLOSED = "backend_closed"  # the backend finished first
    CLIENT_RESET = "client_reset"
    BACKEND_RESET = "backend_reset"
    NO_BACKEND = "no_backend"  # no backend was eligible
    CONNECT_FAILED = "connect_failed"  # every connect attempt failed
    CLIENT_ABORTED = "client_aborted"  # the client left while the backend connect was pending
    IDLE_TIMEOUT = "idle_timeout"
    SHUTDOWN = "shutdown"


def describe_error(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    if isinstance(exc, TimeoutError):
        return "connect timeout"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class Session(asyncio.Protocol):
    """One client connection and its backend connection; this object is the client side."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.loop = asyncio.get_running_loop()
        self.client: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.up_transport: asyncio.Transport | None = None
        self.backend: Backend | None = None
        self.candidates: Iterator[Backend] | None = None
        self.attempts = 0
        self.peer = "-"
        self.client_ip = ""
        self.started = 0.0
        self.connect_ms = -1.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.termination: Termination | None = None
        self.client_eof = False
        self.backend_eof = False
        self.client_open = False
        self.backend_open = False
        self.refusing = False
        self.replay: list[bytes] | None = [] if service.config.passive.retry_replay else None
        self.replay_size = 0
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.connector: asyncio.Task[None] | None = None
        self.connecting = False
        self.finished = False

    # -- client side ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.client = transport
        self.client_open = True
        self.started = self.last_activity = self.loop.time()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client_ip = str(peer[0])
            self.peer = (
                f"[{peer[0]}]:{peer[1]}" if ":" in self.client_ip else f"{peer[0]}:{peer[1]}"
            )
        self.service.sessions.add(self)
        if self.service.closing:
            self.end(Termination.SHUTDOWN)
            return
        self._connect()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.last_activity = self.loop.time()
        if self.replay is not None:
            self._keep_for_replay(data)
        transport = self.up_transport
        if transport is not None:
            transport.write(data)
        # else: refused, and reading the client's input only to drop it before closing

    def _keep_for_replay(self, data: bytes) -> None:
        assert self.replay is not None
        self.replay_size += len(data)
        if self.replay_size > self.service.config.passive.replay_limit:
            self.replay = None  # too much to replay: a failure from here on is final
        else:
            self.replay.append(data)

    def eof_received(self) -> bool:
        if self.refusing:
            return False  # the client has read our answer and finished
        self.client_eof = True
        if self.termination is None and not self.backend_eof:
            self.termination = Termination.CLIENT_CLOSED
        if self.up_transport is not None and self.backend_open:
            if self.backend_eof:
                self.end()
            else:
                self.up_transport.write_eof()
        return True  # keep our side open: the backend may still be answering

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_open = False
        if self.termination is None:
            if self.upstream is None:
                self.termination = Termination.CLIENT_ABORTED
            else:
                self.termination = Termination.CLIENT_RESET if exc else Termination.CLIENT_CLOSED
        if self.connector is not None and not self.connector.done():
            self.connector.cancel()
        if self.up_transport is not None and self.backend_open:
            if exc is None:
                self.up_transport.close()
            else:
                self.up_transport.abort()
        self._maybe_finish()

    def pause_writing(self) -> None:
        if self.up_transport is not None:
            self.up_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up_transport is not None and self.backend_open:
            self.up_transport.resume_reading()

    # -- connecting -------------------------------------------------------------------------

    def _connect(self) -> None:
        """Start (or resume) walking the candidates; the client is not read meanwhile."""
        assert self.client is not None
        self.client.pause_reading()
        self.connecting = True
        self.connector = self.loop.create_task(self._run_connect())

    async def _run_connect(self) -> None:
        try:
            await self._try_backends()
        finally:
            self.connecting = False
            self._maybe_finish()

    async def _try_backends(self) -> None:
        service = self.service
        if self.candidates is None:
            self.candidates = service.candidates(self.client_ip)
        attempts = service.config.retries + 1
        timeout = service.config.timeouts.connect
        last_error = ""
        for backend in self.candidates:
            if self.attempts == attempts:
                break
            self.attempts += 1
            service.acquire(backend)
            begin = self.loop.time()
            try:
                async with asyncio.timeout(timeout):
                    await self.loop.create_connection(
                        lambda b=backend: Upstream(self, b),  # type: ignore[misc]
                        backend.address.host,
                        backend.address.port,
                    )
            except (OSError, TimeoutError) as exc:
                service.release(backend)
                last_error = describe_error(exc)
                service.connect_failed(
                    backend, last_error, refused=isinstance(exc, ConnectionRefusedError)
                )
                continue
            except asyncio.CancelledError:
                service.release(backend)
                raise
            self.connect_ms = (self.loop.time() - begin) * 1000.0
            return
        if self.attempts:
            service.log_no_backend(self, last_error)
        self._refuse(Termination.CONNECT_FAILED if self.attempts else Termination.NO_BACKEND)

    def _refuse(self, reason: Termination) -> None:
        """Send the optional message, then close without resetting the client.

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        the message in flight; so the client's bytes are read and dropped until it closes, or
        for at most LINGER seconds (nginx's lingering close).
        """
        self.termination = reason
        client = self.client
        if client is None or not self.client_open:
            return
        self.refusing = True
        self.replay = None
        message = self.service.config.no_backend_message
        if message:
            client.write(message)
        client.write_eof()
        client.resume_reading()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = self.loop.call_later(LINGER, self.end)

    def upstream_made(self, upstream: Upstream, transport: asyncio.Transport) -> None:
        backend = upstream.backend
        self.upstream = upstream
        self.up_transport = transport
        self.backend = backend
        self.backend_open = True
        backend.total += 1
        if not self.client_open:
            transport.close()
            return
        assert self.client is not None
        if self.replay:
            transport.write(b"".join(self.replay))
        if self.client_eof:
            transport.write_eof()
        else:
            self.client.resume_reading()
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_later(
                self.service.config.timeouts.idle, self._check_idle
            )

    # -- backend side (called by Upstream) ----------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        if not self.bytes_out:
            self._first_answer()
        self.bytes_out += len(data)
        self.last_activity = self.loop.time()
        assert self.client is not None
        self.client.write(data)

    def _first_answer(self) -> None:
        self.replay = None
        assert self.backend is not None
        self.service.backend_answered(self.backend)

    def _failed_early(self, upstream: Upstream, exc: Exception | None) -> bool:
        """Retry elsewhere when the backend failed before anything was lost; True if so."""
        if upstream is not self.upstream:
            return True  # an earlier, already abandoned backend connection
        unanswered = self.bytes_out == 0 and (exc is not None or not self.client_eof)
        if not unanswered:
            return False
        self.service.backend_failed(upstream.backend, describe_error(exc))
        if not self.client_open or self.termination is not None:
            return False
        if self.bytes_in and self.replay is None:
            return False  # the client's bytes are gone with that backend
        # Abandon this backend connection and walk on down the candidates.
        self.service.release(upstream.backend)
        self.upstream = None
        self.backend = None
        self.backend_open = False
        transport, self.up_transport = self.up_transport, None
        if transport is not None:
            transport.abort()
        self._connect()
        return True

    def upstream_eof(self, upstream: Upstream) -> None:
        if self._failed_early(upstream, None):
            return
        self.backend_eof = True
        if self.termination is None and not self.client_eof:
            self.termination = Termination.BACKEND_CLOSED
        if self.client is not None and self.client_open:
            if self.client_eof:
                self.end()
            else:
                self.client.write_eof()

    def upstream_lost(self, upstream: Upstream, exc: Exception | None) -> None:
        if self._failed_early(upstream, exc):
            return
        self.backend_open = False
        if self.termination is None:
            self.termination = Termination.BACKEND_RESET if exc else Termination.BACKEND_CLOSED
        if self.client is not None and self.client_open:
            if exc is None:
                self.client.close()
            else:
                self.client.abort()
        self._maybe_finish()

    # -- ending -----------------------------------------------------------------------------

    def _check_idle(self) -> None:
        idle = self.service.config.timeouts.idle
        remaining = self.last_activity + idle - self.loop.time()
        if remaining > 0:
            self.idle_timer = self.loop.call_later(remaining, self._check_idle)
        else:
            self.idle_timer = None
            self.end(Termination.IDLE_TIMEOUT)

    def end(self, reason: Termination | None = None) -> None:
        """Close both sides, flushing what was already accepted for writing."""
        if reason is not None and self.termination is None:
            self.termination = reason
        if self.client is not None and self.client_open:
            self.client.close()
        if self.up_transport is not None and self.backend_open:
            self.up_transport.close()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.finished or self.client_open or self.backend_open or self.connecting:
            return
        self.finished = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        backend = self.backend
        if backend is not None:
            self.service.release(backend)
            backend.bytes_in += self.bytes_in
            backend.bytes_out += self.bytes_out
        self.service.finished(
            self,
            AccessRecord(
                service=self.service.name,
                client=self.peer,
                backend=backend.key if backend is not None else "-",
                connect_ms=self.connect_ms,
                duration_ms=(self.loop.time() - self.started) * 1000.0,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                retries=max(self.attempts - 1, 0),
                termination=str(self.termination or Termination.CLIENT_CLOSED),
            ),
        )


class Upstream(asyncio.Protocol):
    """The backend side of a session."""

    def __init__(self, session: Session, backend: Backend) -> None:
        self.session = session
        self.backend = backend

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.session.upstream_made(self, transport)

    def data_received(self, data: bytes) -> None:
        self.session.upstream_data(data)

    def eof_received(self) -> bool:
        self.session.upstream_eof(self)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        client = self.session.client
        if client is not None and self.session.client_open and self.session.upstream is self:
            client.pause_reading()

    def resume_writing(self) -> None:
        client = self.session.client
        if client is not None and self.session.client_open and self.session.upstream is self:
            client.resume_reading()
