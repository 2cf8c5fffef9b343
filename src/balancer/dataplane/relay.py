"""The proxy: moves bytes between a client connection and a backend connection.

Built on asyncio Protocols served by `stream.Stream` transports. Once the backend is
connected (and, with `retry_replay`, has answered), each side's stream writes what it reads
straight to the other's: relaying a chunk is one write, with no coroutine, no copy and no call
into the session, and the streams count the bytes and the times. Backpressure runs both ways:
when one side's write buffer fills, reading from the other side stops until it drains. An EOF
from one side is forwarded as a half-close to the other; the connection ends when both
directions have ended, or either side resets: then the other side gets what the reset side
sent before it, and a close. Every connection ends with exactly one termination reason.

A backend connection that fails before any byte has flowed either way is retried on the next
candidate, invisibly to the client; with `retry_replay`, so is one that fails after the client
spoke but before the backend answered, and the client's first bytes are sent again.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator, Sized
from typing import TYPE_CHECKING, Protocol, cast

from balancer.core.errors import RESOURCE_ERRORS, describe_error
from balancer.core.termination import FINISHED as _FINISHED
from balancer.core.termination import Termination
from balancer.dataplane.dial import Dial
from balancer.dataplane.stream import Stream, nodelay
from balancer.observability.logs import AccessRecord
from balancer.protocols import proxy_protocol

if TYPE_CHECKING:
    from balancer.config.model import ServiceConfig
    from balancer.dataplane.stream import Poller
    from balancer.dataplane.wheel import Wheel
    from balancer.pool.backend import Backend


class Service(Protocol):
    """What a session needs of its service (service.Service): settings, admission, the queue,
    the backends to try, and where to report failures and the finished connection."""

    name: str
    config: ServiceConfig
    closing: bool
    sessions: set[Session]
    wheel: Wheel
    poller: Poller | None
    on_recovery: Callable[[], None] | None

    @property
    def pool(self) -> _Eligible: ...

    @property
    def queue(self) -> Sized: ...

    def admit(self, session: Session) -> Termination | None: ...
    def start_when_room(self, session: Session) -> None: ...
    def candidates(self, client: str) -> Iterator[Backend]: ...
    def acquire(self, backend: Backend) -> None: ...
    def release(self, backend: Backend) -> None: ...
    def enqueue(self, session: Session) -> bool: ...
    def requeue(self, session: Session) -> None: ...
    def dequeue(self, session: Session) -> None: ...
    def refusal(self, reason: Termination, peer: str, detail: str) -> None: ...
    def algorithm_failed(self, session: Session, exc: Exception) -> None: ...
    def log_no_backend(self, session: Session, error: str) -> None: ...
    def connect_failed(self, backend: Backend, error: str, *, refused: bool) -> str: ...
    def backend_failed(
        self, backend: Backend, error: str, client: str, forwarded: bool
    ) -> str: ...
    def backend_answered(self, backend: Backend) -> None: ...
    def finished(self, session: Session, record: AccessRecord) -> None: ...


class _Eligible(Protocol):
    @property
    def eligible(self) -> tuple[Backend, ...]: ...


LINGER = 2.0  # seconds a refused client may keep sending before we close


def _endpoint(address: object) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def _show(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Session(asyncio.Protocol):
    """One client connection and its backend connection; this object is the client side."""

    __slots__ = (
        "accepted_at",
        "admitted",
        "answered",
        "attempts",
        "backend",
        "backend_eof",
        "backend_open",
        "bytes_in_then",
        "bytes_out_then",
        "candidates",
        "client",
        "client_eof",
        "client_ip",
        "client_open",
        "connect_ms",
        "connecting",
        "destination",
        "dial",
        "dial_started",
        "dialing",
        "failures",
        "finished",
        "full",
        "header_buffer",
        "header_size",
        "last_error",
        "linger",
        "loop",
        "peer",
        "preface",
        "queue_timer",
        "queued_until",
        "reading_header",
        "refusing",
        "relaying_since",
        "replay",
        "replay_size",
        "running",
        "service",
        "source",
        "started",
        "termination",
        "tick",
        "up_transport",
        "upstream",
    )

    def __init__(self, service: Service, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.loop = loop
        self.client: Stream | None = None
        self.upstream: Upstream | None = None
        self.up_transport: Stream | None = None
        self.backend: Backend | None = None
        self.candidates: Iterator[Backend] | None = None
        self.attempts = 0
        self.peer = "-"
        self.client_ip = ""
        self.source: tuple[str, int] | None = None  # the client, or what a PROXY header says
        self.destination: tuple[str, int] | None = None  # looked up when a PROXY header needs it
        self.started = 0.0
        self.accepted_at = 0.0
        self.connect_ms = -1.0
        self.answered = False  # the backend in use has sent its first bytes
        self.bytes_in_then = 0  # the figures of a finished session (its streams are dropped)
        self.bytes_out_then = 0
        self.termination: Termination | None = None
        self.client_eof = False
        self.backend_eof = False
        self.client_open = False
        self.backend_open = False
        self.refusing = False
        self.admitted = False  # counted in the per-client and max_connections figures
        self.running = False  # past max_connections' gate: connecting or relaying
        self.reading_header = service.config.accept_proxy
        self.header_buffer = b""
        self.header_size = 0  # the PROXY header's bytes, which are not the client's
        self.preface = b""  # client bytes read before a backend existed (after a PROXY header)
        self.replay: list[bytes] | None = [] if service.config.passive.retry_replay else None
        self.replay_size = 0
        self.relaying_since = 0.0
        self.tick = 0  # the tick of service.wheel this session waits in (0: none)
        self.linger: asyncio.TimerHandle | None = None  # a refused client's last seconds
        self.connecting = False  # dialing, queued, or waiting for the backend's transport
        self.dial: Dial | None = None
        self.dialing: Backend | None = None  # the backend being dialed, until upstream_made
        self.dial_started = 0.0
        self.full = False  # a candidate was skipped for being at its max_connections
        self.last_error = ""
        self.failures = ""  # the rule that judged each failed backend, comma-separated
        self.queue_timer: asyncio.TimerHandle | None = None
        self.queued_until = 0.0  # when the wait in the queue ends, from the first time queued
        self.finished = False

    # -- client side ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(Stream, transport)
        self.client = transport
        self.client_open = True
        self.accepted_at = self.loop.time()
        self.started = time.monotonic()  # (uvloop's loop.time() has millisecond steps)
        self.source = _endpoint(transport.get_extra_info("peername"))
        if self.source is not None:
            self.client_ip = self.source[0]
            self.peer = _show(self.source)
        self.service.sessions.add(self)
        if self.service.on_recovery is not None:
            self.service.on_recovery()
        if self.service.closing:
            self.end(Termination.SHUTDOWN)
            return
        if self.reading_header:
            # The header must come within client_first_byte (or connect) time.
            self._arm(self.accepted_at)
            return
        transport.pause_reading()
        self._admit()

    def _admit(self) -> None:
        """Apply ACLs and limits for the client's address, then go on to connect."""
        refusal = self.service.admit(self)
        if refusal is not None:
            self.termination = refusal
            assert self.client is not None
            self.client.close()
            return
        self.admitted = True
        self.service.start_when_room(self)

    def start(self) -> None:
        """Called by the service once there is room under its max_connections."""
        self.running = True
        if self.client_open:
            self._connect()

    @property
    def bytes_in(self) -> int:
        """The client's bytes so far (its stream counts them)."""
        return self._counts()[0]

    @property
    def bytes_out(self) -> int:
        """The backend's bytes so far (of the backend connection in use: one abandoned for a
        retry had sent none)."""
        return self._counts()[1]

    def _counts(self) -> tuple[int, int]:
        client, transport = self.client, self.up_transport
        bytes_in, bytes_out = self.bytes_in_then, self.bytes_out_then
        if client is not None and not self.reading_header:
            bytes_in = client.received - self.header_size
        if transport is not None:
            bytes_out = transport.received
        return bytes_in, bytes_out

    def data_received(self, data: bytes | memoryview) -> None:
        """Client bytes (a view valid only during the call: see stream.Handler), until they
        can go straight to the backend's stream (see _relay_directly)."""
        if self.reading_header:
            self._header_data(data)
            return
        if self.replay is not None:
            self._keep_for_replay(data)
        transport = self.up_transport
        if transport is not None:
            transport.write(data)
        elif not self.refusing:
            # No backend yet (reading should be paused): keep it for the one that comes.
            self.preface += data
            assert self.client is not None
            self.client.pause_reading()
        # else: refused, and reading the client's input only to drop it before closing

    def _header_data(self, data: bytes | memoryview) -> None:
        buffer = self.header_buffer + data
        try:
            parsed = proxy_protocol.parse(buffer)
        except proxy_protocol.ProxyProtocolError as exc:
            self.service.refusal(Termination.BAD_PROXY_HEADER, self.peer, str(exc))
            self.end(Termination.BAD_PROXY_HEADER)
            return
        if parsed is None:
            self.header_buffer = buffer
            return
        header, length = parsed
        self.reading_header = False
        self.header_buffer = b""
        self.header_size = length
        if header.source is not None:
            self.source, self.destination = header.source, header.destination
            self.client_ip = header.source[0]
            self.peer = _show(header.source)
        rest = buffer[length:]
        if rest:
            self.preface = rest
            if self.replay is not None:
                self._keep_for_replay(rest)
        assert self.client is not None
        self.client.pause_reading()
        self._admit()

    def _keep_for_replay(self, data: bytes | memoryview) -> None:
        assert self.replay is not None
        self.replay_size += len(data)
        if self.replay_size > self.service.config.passive.replay_limit:
            self.replay = None  # too much to replay: a failure from here on is final
        else:
            self.replay.append(bytes(data))

    def eof_received(self) -> bool:
        if self.refusing or self.reading_header:
            return False  # refused and answered, or gone before its PROXY header
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
        elif exc is not None and self.termination in _FINISHED:
            self.termination = Termination.CLIENT_RESET
        if self.connecting:
            self._stop_connecting()
        if self.up_transport is not None and self.backend_open:
            # A reset too: what the client sent before it goes on to the backend, then a
            # close (as in nginx; HAProxy delivers it, then resets), not a cut-off stream.
            self.up_transport.close()
        self._maybe_finish()

    def pause_writing(self) -> None:
        if self.up_transport is not None:
            self.up_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up_transport is not None and self.backend_open:
            self.up_transport.resume_reading()
            self._resumed(client=False)

    def _resumed(self, client: bool) -> None:
        """Reading one side again after backpressure: its silence is counted from now."""
        now = self.loop.time()
        timeouts = self.service.config.timeouts
        stream = self.client if client else self.up_transport
        if stream is not None:
            stream.heard = now
            if timeouts.client if client else timeouts.server:
                self._arm(now)  # (its timeout did not run while paused)

    # -- connecting -------------------------------------------------------------------------

    def _connect(self) -> None:
        """Start (or resume) walking the candidates; the client is not read meanwhile."""
        assert self.client is not None
        self.client.pause_reading()
        self.connecting = True
        self._next()

    def _next(self) -> None:
        """Dial the next candidate; or wait in the queue if every one left is busy; or refuse.

        While clients wait in the queue, a new client does not take a capped backend's free
        slot from them: it joins the queue behind them (first come, first served, as HAProxy).
        """
        service = self.service
        attempts = service.config.retries + 1
        while self.attempts < attempts:
            try:
                if self.candidates is None:
                    self.candidates = iter(service.candidates(self.client_ip))
                backend = next(self.candidates, None)
            except Exception as exc:  # (a plug-in algorithm's defect)
                self.candidates = None
                self.connecting = False
                service.algorithm_failed(self, exc)
                tried = self.attempts
                self._refuse(Termination.CONNECT_FAILED if tried else Termination.NO_BACKEND)
                return
            if backend is None:
                break
            if (self.attempts or self.full) and backend not in service.pool.eligible:
                continue  # (drained, removed or down since the list was made)
            limit = backend.max_connections
            if limit and (
                backend.active + backend.others >= limit
                or (service.queue and not self.queued_until)  # (its free slot is the queue's)
            ):
                self.full = True
                continue
            self.attempts += 1
            service.acquire(backend)
            self.dialing = backend
            self.dial_started = time.monotonic()
            self.dial = Dial(
                self.loop, backend.address, service.config.timeouts.connect, self._dialed
            )
            self.dial.start()
            if self.dial is not None and self.client is not None:
                self.client.guard()  # (not connected at once: learn meanwhile of a reset)
            return
        if self.full and self.attempts < attempts:
            self._queue()
            return
        self.connecting = False
        if self.attempts:
            service.log_no_backend(self, self.last_error)
        self._refuse(Termination.CONNECT_FAILED if self.attempts else Termination.NO_BACKEND)

    def _dialed(self, sock: socket.SocketType | None, exc: BaseException | None) -> None:
        backend = self.dialing
        assert backend is not None
        self.dial = None
        if sock is not None:
            self.connect_ms = (time.monotonic() - self.dial_started) * 1000.0
            try:
                nodelay(sock)  # (Dial made it non-blocking)
            except OSError as error:  # (reset already)
                sock.close()
                exc = error
            else:
                protocol = Upstream(self, backend)  # (its connection_made: upstream_made)
                Stream(self.loop, sock, protocol, epoll=self.service.poller).start()
                return
        self.dialing = None
        self._connect_failed(backend, exc)

    def _connect_failed(self, backend: Backend, exc: BaseException | None) -> None:
        service = self.service
        service.release(backend)
        self.last_error = describe_error(exc)
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRORS:
            # Our shortage, not the backend's: blame no one, and do not retry.
            self.connecting = False
            service.refusal(Termination.NO_RESOURCES, self.peer, self.last_error)
            self._refuse(Termination.NO_RESOURCES)
            return
        refused = isinstance(exc, ConnectionRefusedError)
        self._failed(service.connect_failed(backend, self.last_error, refused=refused))
        self._next()

    def _queue(self) -> None:
        """Every candidate not yet tried is at its max_connections: wait for a slot.

        A session that was woken for a slot and found it taken (by a new connection in the
        same turn, or by another worker) goes back to the head of the queue, and its wait
        still ends queue_timeout after it first joined.
        """
        service = self.service
        if self.queued_until:
            service.requeue(self)
        elif service.enqueue(self):
            self.queued_until = self.loop.time() + service.config.limits.queue_timeout
        else:
            self.connecting = False
            service.refusal(Termination.QUEUE_FULL, self.peer, "queue full")
            self._refuse(Termination.QUEUE_FULL)
            return
        self.queue_timer = self.loop.call_at(self.queued_until, self._queue_timed_out)
        if self.client is not None:
            self.client.guard()

    def slot_freed(self) -> None:
        """Called by the service, which took this session off the queue: a slot is free."""
        assert self.queue_timer is not None  # (whatever clears it takes the session off first)
        self.queue_timer.cancel()
        self.queue_timer = None
        self.candidates = None
        self.full = False
        self._next()

    def _queue_timed_out(self) -> None:
        self.queue_timer = None
        service = self.service
        service.dequeue(self)
        self.connecting = False
        waited = f"no free slot within queue_timeout {service.config.limits.queue_timeout:g}s"
        service.refusal(Termination.QUEUE_TIMEOUT, self.peer, waited)
        self._refuse(Termination.QUEUE_TIMEOUT)

    def _stop_connecting(self) -> None:
        """The client left while connecting: give up the attempt or the place in the queue."""
        if self.dial is not None:
            self.dial.cancel()
            self.dial = None
            assert self.dialing is not None
            self.service.release(self.dialing)
            self.dialing = None
            self.connecting = False
        elif self.queue_timer is not None:
            self.queue_timer.cancel()
            self.queue_timer = None
            self.service.dequeue(self)
            self.connecting = False

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
        self._disarm()
        if self.linger is None:
            self.linger = self.loop.call_later(LINGER, self._linger_over)

    def _linger_over(self) -> None:
        """A refused client's time is up: close, dropping what it has not read (a client that
        stopped reading would otherwise hold the connection open for ever)."""
        self.linger = None
        if self.client is not None and self.client.get_write_buffer_size():
            self.client.abort()
        self.end()

    def upstream_made(self, upstream: Upstream, transport: Stream) -> None:
        backend = upstream.backend
        self.connecting = False
        self.dialing = None
        self.upstream = upstream
        self.up_transport = transport
        self.backend = backend
        self.backend_open = True
        backend.total += 1
        if not self.client_open:
            transport.close()
            return
        assert self.client is not None
        version = backend.send_proxy or self.service.config.send_proxy
        if version and self.destination is None:
            self.destination = _endpoint(self.client.get_extra_info("sockname"))
        if version and self.source is not None and self.destination is not None:
            transport.write(proxy_protocol.build(version, self.source, self.destination))
        if self.replay:
            transport.write(b"".join(self.replay))
        elif self.preface:
            transport.write(self.preface)
        self.preface = b""
        self.queued_until = 0.0  # (a later wait in the queue is a new one)
        now = self.client.heard = transport.heard = self.relaying_since = self.loop.time()
        if self.replay is None:
            self._relay_directly()
        if self.client_eof:
            transport.write_eof()
        elif not transport.protocol_paused:  # (else Upstream.resume_writing resumes it)
            self.client.resume_reading()
        self._arm(now)  # (after the resume: a paused client's timeout would be left out)

    # -- backend side (called by Upstream) ----------------------------------------------------

    def upstream_data(self, data: bytes | memoryview) -> None:
        """The backend's first bytes: it answered. (The rest go straight to the client.)"""
        self.replay = None
        self.answered = True
        assert self.backend is not None and self.client is not None
        self.service.backend_answered(self.backend)
        self._relay_directly()
        self.client.write(data)

    def _relay_directly(self) -> None:
        """From now on each side's stream writes what it reads to the other's: nothing
        written to the backend needs keeping for a replay any more. (A retry on another
        backend undoes this: see _failed_early.)"""
        client, transport = self.client, self.up_transport
        assert client is not None and transport is not None
        client.target = transport
        if self.answered:
            transport.target = client

    def _failed_early(self, upstream: Upstream, exc: Exception | None) -> bool:
        """Retry elsewhere when the backend failed before anything was lost; True if so."""
        if upstream is not self.upstream:
            return True  # an earlier, already abandoned backend connection
        if upstream.blamed:
            return False  # (its EOF was, and now its reset: one failure, not two)
        unanswered = not self.answered and (exc is not None or not self.client_eof)
        if not unanswered or not self.client_open:
            return False  # (a client that left first is no fault of the backend's)
        service = self.service
        if (
            exc is None
            and not self.bytes_in
            and self.loop.time() - self.relaying_since > service.config.timeouts.connect
        ):
            return False  # a client that sent nothing, closed by the backend's idle timeout
        self.last_error = f"{describe_error(exc)} before answering"
        upstream.blamed = True
        self._failed(
            service.backend_failed(
                upstream.backend, describe_error(exc), self.client_ip, self.bytes_in > 0
            )
        )
        if self.termination is not None and self.termination is not Termination.CLIENT_CLOSED:
            return False  # (ending already; a client's half-close is no reason not to retry)
        if self.bytes_in and self.replay is None:
            return False  # the client's bytes are gone with that backend
        # Abandon this backend connection and walk on down the candidates.
        service.release(upstream.backend)
        self.upstream = None
        self.backend = None
        self.backend_open = False
        transport, self.up_transport = self.up_transport, None
        if transport is not None:
            transport.abort()
        assert self.client is not None
        self.client.target = None
        self._connect()
        return True

    def _failed(self, rule: str) -> None:
        self.failures = f"{self.failures},{rule}" if self.failures else rule

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
        elif exc is not None and self.termination in _FINISHED:
            self.termination = Termination.BACKEND_RESET
        if self.client is not None and self.client_open:
            self.client.close()  # (after a reset too: what the backend sent is delivered)
        self._maybe_finish()

    # -- timeouts ---------------------------------------------------------------------------

    def _deadline(self) -> tuple[float, Termination] | None:
        """The earliest timeout that applies now, and the reason it would end the connection."""
        timeouts = self.service.config.timeouts
        if self.reading_header:
            wait = timeouts.client_first_byte or timeouts.connect
            return self.accepted_at + wait, Termination.BAD_PROXY_HEADER
        if self.upstream is None:
            return None
        client, transport = self.client, self.up_transport
        assert client is not None and transport is not None
        last_client, last_backend = client.heard, transport.heard
        deadline = (max(last_client, last_backend) + timeouts.idle, Termination.IDLE_TIMEOUT)
        # A side is timed out for its silence only while it is expected to send: not once it
        # has sent its EOF, nor while its reading is paused because the other side is not
        # taking the bytes (its timeout starts again when reading resumes).
        if timeouts.client and not self.client_eof and not client.paused:
            deadline = min(deadline, (last_client + timeouts.client, Termination.CLIENT_TIMEOUT))
        if timeouts.server and not self.backend_eof and not transport.paused:
            deadline = min(deadline, (last_backend + timeouts.server, Termination.SERVER_TIMEOUT))
        if timeouts.client_first_byte and not self.bytes_in:
            first = self.relaying_since + timeouts.client_first_byte
            deadline = min(deadline, (first, Termination.FIRST_BYTE_TIMEOUT))
        return deadline

    def _arm(self, now: float) -> None:
        self._disarm()
        deadline = self._deadline()
        if deadline is not None:
            self.tick = self.service.wheel.add(self, deadline[0], now)

    def _disarm(self) -> None:
        if self.tick:
            self.service.wheel.remove(self, self.tick)
            self.tick = 0

    def expired(self) -> None:
        """The wheel's tick for this session came: end it if a deadline has passed."""
        self.tick = 0
        deadline = self._deadline()
        if deadline is None:
            return
        now = self.loop.time()
        if deadline[0] <= now:
            if deadline[1] is Termination.BAD_PROXY_HEADER:
                self.service.refusal(deadline[1], self.peer, "no complete PROXY header in time")
            self.end(deadline[1])
            # What is still unsent goes too: a peer that stopped reading would otherwise hold
            # the connection open for ever.
            for transport in (self.client, self.up_transport):
                if transport is not None and transport.get_write_buffer_size():
                    transport.abort()
        else:
            self.tick = self.service.wheel.add(self, deadline[0], now)

    # -- ending -----------------------------------------------------------------------------

    def end(self, reason: Termination | None = None) -> None:
        """Close both sides, flushing what was already accepted for writing."""
        if reason is not None and (self.termination is None or self.termination in _FINISHED):
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
        self._disarm()
        if self.linger is not None:
            self.linger.cancel()
        self.bytes_in_then, self.bytes_out_then = self._counts()
        backend = self.backend
        if backend is not None:
            self.service.release(backend)
            backend.bytes_in += self.bytes_in_then
            backend.bytes_out += self.bytes_out_then
        self.service.finished(
            self,
            AccessRecord(
                service=self.service.name,
                client=self.peer,
                backend=backend.key if backend is not None else "-",
                connect_ms=self.connect_ms,
                duration_ms=(time.monotonic() - self.started) * 1000.0,
                bytes_in=self.bytes_in_then,
                bytes_out=self.bytes_out_then,
                retries=max(self.attempts - 1, 0),
                failures=self.failures or "-",
                termination=str(self.termination or Termination.CLIENT_CLOSED),
            ),
        )
        # Break the reference cycles, so everything is freed now rather than by a later
        # garbage collection: under connection churn, that garbage raised the heap's
        # high-water mark, which the allocator then kept.
        self.upstream = None
        self.up_transport = None
        self.client = None
        self.candidates = None
        self.linger = None


class Upstream(asyncio.Protocol):
    """The backend side of a session."""

    __slots__ = ("backend", "blamed", "session")

    def __init__(self, session: Session, backend: Backend) -> None:
        self.session = session
        self.backend = backend
        self.blamed = False  # counted as a failure of its backend's (once per connection)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.upstream_made(self, cast(Stream, transport))

    def data_received(self, data: bytes | memoryview) -> None:
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
            self.session._resumed(client=True)
