"""Sockets served by callbacks: the listener's accept loop and a lean socket transport.

asyncio's server runs a coroutine task for every accepted connection, and its socket transport
keeps a dictionary of attributes and two address lookups per connection. A balancer holds two
sockets per client, so both costs count twice. `Listener` accepts in a plain reader callback
and hands each socket on at once; `Stream` is a transport with the same contract as asyncio's
selector socket transport (the `asyncio.Protocol` callbacks, flow control, half-close) and only
the state a relay needs.

Streams do not register with the event loop one by one: each loop has one `Poller`, an epoll
set of its own that the loop watches as a single descriptor. Registering a socket is then one
system call rather than asyncio's selector bookkeeping (measured at 2.3 against 10.4 us for an
add and remove), and each ready socket is served without a handle or a context copy. The loop
only needs `add_reader`, so this runs on asyncio's loops and on uvloop alike.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import select
import socket
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from balancer.core.errors import RESOURCE_ERRORS

# Every stream reads into one buffer per process and hands its handler a view of it, so a
# chunk is never allocated and only the part the other side's socket did not take is copied.
# 1 MiB reads made bulk transfers about 1.5 times as fast as 256 KiB ones (see the README).
READ_SIZE = 1024 * 1024
_BUFFER = bytearray(READ_SIZE)
_VIEW = memoryview(_BUFFER)
HIGH_WATER = 64 * 1024  # pause the protocol's writer above this many unsent bytes
LOW_WATER = 16 * 1024  # and resume it at or below this many
ACCEPT_BATCH = 64  # connections accepted per wake-up, so one busy listener cannot starve the rest
RETRY_ACCEPT = 1.0  # seconds a listener rests after accept() ran out of descriptors
_AGAIN = (BlockingIOError, InterruptedError)


_READ = select.EPOLLIN
_WRITE = select.EPOLLOUT
_TROUBLE = select.EPOLLERR | select.EPOLLHUP  # delivered to whichever side is watched
POLL_BATCH = 1024  # ready sockets served per wake-up of the loop

# Bulk transfers move through a pipe with splice(2): the kernel hands the pages on, and they are
# never copied into this process and back. A direction of a relay starts splicing after a read
# of SPLICE_FROM bytes or more, and copies again after a read of less than COPY_BELOW (small
# chunks cost less copied than spliced). A pipe is held only while it holds bytes.
SPLICE_FROM = 32 * 1024
COPY_BELOW = 4 * 1024
PIPE_SIZE = 1024 * 1024  # asked of the kernel for each pipe (Linux's default cap, pipe-max-size)
MAX_PIPES = 256  # open at once in a process (and never more than a sixteenth of its descriptors)
KEPT_PIPES = 4  # empty pipes kept open for the next transfer
PIPE_REFUSED_WAIT = 10.0  # seconds without new pipes after the kernel would not grow one
# The clock of asyncio's loop (uvloop's loop.time() is the same clock in millisecond steps).
_clock = time.monotonic


class Poller:
    """One epoll set for the streams of one event loop, watched by the loop as one descriptor.

    A stream's interest (read, write, both, none) is one `epoll_ctl`. Closing a socket takes
    it out of the set (the kernel does that), so a closing stream only forgets its entry.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.epoll = select.epoll()
        self.streams: dict[int, Stream] = {}
        self.lost: list[tuple[Stream, Exception | None]] = []  # to be told on the next turn
        loop.add_reader(self.epoll.fileno(), self._dispatch)

    def watch(self, stream: Stream, read: bool, write: bool) -> None:
        fd = stream.fd
        events = (_READ if read else 0) | (_WRITE if write else 0)
        if fd in self.streams:
            if events or stream.eof_in:
                # (Past its peer's EOF nothing is left to read: watched for nothing, it stays
                # in the set, where epoll still reports a reset at once.)
                self.epoll.modify(fd, events)
            else:
                # Paused (backpressure): out of the set. Bytes may wait unread before a reset,
                # which reading finds when it resumes, after them.
                self.unwatch(stream)
        elif events:
            self.epoll.register(fd, events)
            self.streams[fd] = stream

    def guard(self, stream: Stream) -> None:
        """Watch a stream for nothing: epoll still reports its errors and hang-ups."""
        if stream.fd not in self.streams:
            self.epoll.register(stream.fd, 0)
            self.streams[stream.fd] = stream

    def unwatch(self, stream: Stream) -> None:
        """Out of the set until it is watched again."""
        if self.streams.get(stream.fd) is stream:
            del self.streams[stream.fd]
            self.epoll.unregister(stream.fd)

    def forget(self, stream: Stream) -> None:
        """The stream's socket is about to be closed, which unregisters it."""
        if self.streams.get(stream.fd) is stream:
            del self.streams[stream.fd]

    def lose(self, loop: asyncio.AbstractEventLoop, stream: Stream, exc: Exception | None) -> None:
        """Call the stream's `_connection_lost` on the loop's next turn (one callback for all
        the streams that end in this turn)."""
        self.lost.append((stream, exc))
        if len(self.lost) == 1:
            loop.call_soon(self._lose, loop)

    def _lose(self, loop: asyncio.AbstractEventLoop) -> None:
        lost, self.lost = self.lost, []
        for stream, exc in lost:
            try:
                stream._connection_lost(exc)
            except Exception as error:  # (the others must still be told and closed)
                loop.call_exception_handler(
                    {"message": "error in connection_lost", "exception": error}
                )

    def _dispatch(self) -> None:
        streams = self.streams
        now = _clock()  # (when each stream in this batch was last heard from)
        for fd, events in self.epoll.poll(0, POLL_BATCH):
            stream = streams.get(fd)
            if stream is None:
                continue  # (forgotten by an earlier stream's callback in this batch)
            if events & (_READ | _TROUBLE) and stream.reading:
                stream._read_ready(now)
            elif events & _TROUBLE and not stream.writing:
                stream._trouble()  # (a guarded stream: see Stream.guard)
                continue
            if events & (_WRITE | _TROUBLE) and stream.writing:
                stream._write_ready()


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller] = weakref.WeakKeyDictionary()


def poller(loop: asyncio.AbstractEventLoop) -> Poller:
    """The loop's Poller, made on first use."""
    found = _pollers.get(loop)
    if found is None:
        found = _pollers[loop] = Poller(loop)
    return found


class Pipe:
    """A pipe between two sockets: what was spliced in from one and not yet out to the other."""

    __slots__ = ("held", "r", "w")

    def __init__(self, r: int, w: int) -> None:
        self.r = r
        self.w = w
        self.held = 0  # bytes in the pipe

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class Pipes:
    """The pipes of this process: at most `pipe_limit()` open, the empty ones kept for reuse."""

    def __init__(self) -> None:
        self.limit: int | None = None  # (worked out at the first use, past start-up)
        self.open = 0
        self.free: list[Pipe] = []
        self.refused_until = 0.0  # (see take)
        self.spliced = 0  # bytes moved through pipes, in all

    def take(self) -> Pipe | None:
        """An empty pipe, or None when none can be had (the cap, descriptors, or a kernel that
        will not grow one): the stream then copies, as without pipes."""
        if self.free:
            return self.free.pop()
        if self.limit is None:
            self.limit = pipe_limit()
        if self.open >= self.limit or (self.refused_until and _clock() < self.refused_until):
            return None
        # Out of descriptors, past pipe-max-size, or past the user's pipe pages
        # (fs.pipe-user-pages-soft, for a user without CAP_SYS_RESOURCE: a smaller pipe would
        # gain little): asking again at every large read would cost system calls for nothing.
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.refused_until = _clock() + PIPE_REFUSED_WAIT
            return None
        pipe = Pipe(r, w)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pipe.close()
            self.refused_until = _clock() + PIPE_REFUSED_WAIT
            return None
        self.open += 1
        return pipe

    def release(self, pipe: Pipe) -> None:
        """Keep an empty pipe for reuse (up to KEPT_PIPES: each counts in full against the
        user's pipe pages); close any other."""
        if not pipe.held and len(self.free) < KEPT_PIPES:
            self.free.append(pipe)
        else:
            self.open -= 1
            pipe.close()


def pipe_limit() -> int:
    """Pipes this process may hold open (two descriptors each, which the connection budget
    leaves them): none with BALANCER_SPLICE=off."""
    if os.environ.get("BALANCER_SPLICE", "").lower() in ("off", "0", "no", "false"):
        return 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_PIPES if soft == resource.RLIM_INFINITY else min(MAX_PIPES, soft // 16)


PIPES = Pipes()


class Handler(Protocol):
    """What a Stream serves: asyncio.Protocol's callbacks, but `data_received` gets a view
    of the shared read buffer, valid only until it returns (copy what must be kept).

    `pause_writing` must stop what is written to the stream until `resume_writing`: for a
    stream another one relays to (see Stream.target), pause that one's reading. (A source
    whose splice finds the pipe full would otherwise be woken again at once.)
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: memoryview) -> None: ...

    def eof_received(self) -> bool | None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class Stream(asyncio.Transport):
    """A connected, non-blocking TCP socket serving a `Handler`.

    What is read goes to the handler's `data_received`, or, once `target` is set, straight to
    that stream's `write` (a relay whose both sides are connected: one call per chunk instead
    of three or four). Either way `received` counts the bytes and `heard` is when the last came.
    Writes go to the socket at once; what the kernel does not take is copied, kept in order,
    and sent when the socket is writable. Above HIGH_WATER unsent bytes the handler's
    `pause_writing` is called, at LOW_WATER `resume_writing`. An EOF from the peer calls
    `eof_received`; if that returns a true value the socket stays open for writing
    (half-close). `connection_lost` is called exactly once, on a later turn of the loop, and
    then the socket is closed.
    """

    __slots__ = (
        "buffer",
        "buffered",
        "closing",
        "eof_in",
        "eof_out",
        "fd",
        "heard",
        "loop",
        "lost",
        "paused",
        "peer",
        "pipe",
        "poller",
        "protocol",
        "protocol_paused",
        "reading",
        "received",
        "sock",
        "splicing",
        "target",
        "writing",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.SocketType,
        protocol: Handler,
        peer: Any = None,
        epoll: Poller | None = None,
    ) -> None:
        # (BaseTransport.__init__ is not called: it would give every stream a dictionary.)
        self.loop = loop
        self.poller = epoll or poller(loop)  # (a caller that has the loop's Poller saves a lookup)
        self.sock = sock
        self.fd = sock.fileno()
        self.protocol: Handler | None = protocol
        self.peer = peer  # the peer's address when the caller knows it (from accept or connect)
        self.buffer: list[bytes | memoryview] = []
        self.buffered = 0
        self.reading = False  # watched for readability
        self.writing = False  # watched for writability: unsent bytes are buffered
        self.paused = False  # the protocol asked not to be given data
        self.eof_in = False  # the peer has sent its EOF
        self.eof_out = False  # write_eof was called
        self.closing = False
        self.lost = False  # connection_lost is scheduled or done
        self.protocol_paused = False
        self.received = 0  # bytes read from the socket
        self.heard = 0.0  # loop time of the last read (or as the handler resets it)
        self.target: Stream | None = None  # where reads go, instead of the handler
        self.splicing = False  # what is relayed to this stream goes through a pipe
        # Spliced bytes for this socket, to go after `buffer` (only while it holds some).
        self.pipe: Pipe | None = None

    def start(self) -> None:
        """Call the protocol's `connection_made`, then read unless it paused or closed us."""
        assert self.protocol is not None
        try:
            self.protocol.connection_made(self)
        except Exception as exc:
            self._handler_failed(exc)
            return
        if not self.paused and not self.closing:
            self._start_reading()

    # -- reading ----------------------------------------------------------------------------

    def _read_ready(self, now: float) -> None:
        target = self.target
        if target is not None and target.splicing and self._splice_ready(target, now):
            return
        try:
            size = self.sock.recv_into(_BUFFER)
        except _AGAIN:
            return
        except OSError as exc:
            self._force_close(exc)
            return
        protocol = self.protocol
        assert protocol is not None
        try:
            if size:
                self.received += size
                self.heard = now
                if target is None:
                    protocol.data_received(_VIEW[:size])
                elif target.buffer or target.lost or target.eof_out:
                    target.write(_VIEW[:size])
                    if size >= SPLICE_FROM and target.buffer:
                        target.splicing = True  # (once the buffer is sent)
                else:
                    # target.write, unrolled for the usual case (a call per chunk is 6% of a
                    # keep-alive request's instructions): the other socket takes it all.
                    try:
                        sent = target.sock.send(_VIEW[:size])
                    except _AGAIN:
                        sent = 0
                    except OSError as exc:
                        target._force_close(exc)
                        return
                    if sent < size:
                        target._keep(bytes(_VIEW[sent:size]))
                    if size >= SPLICE_FROM:
                        target.splicing = True
                return
            self.eof_in = True
            if not protocol.eof_received():
                self.close()
        except Exception as exc:
            self._handler_failed(exc)
            return
        if not self.lost:  # (a closed stream needs no epoll_ctl: see _schedule_lost)
            self._stop_reading()

    def _splice_ready(self, target: Stream, now: float) -> bool:
        """Read into the target's pipe, and send on what its socket takes (see SPLICE_FROM);
        False if this read is to be copied instead.

        The pipe is the target's write buffer, after `buffer` (which gets nothing while there
        is a pipe): while the target waits to send, what is read is only added to it. The
        source is paused once the pipe is full (by the target's protocol, as for `buffer`),
        and resumed when the target has sent all but LOW_WATER.
        """
        pipe = target.pipe
        if pipe is None:
            pipe = PIPES.take()
            if pipe is None:
                return False
            target.pipe = pipe
        try:
            size = os.splice(self.fd, pipe.w, PIPE_SIZE - pipe.held, flags=os.SPLICE_F_NONBLOCK)
        except _AGAIN:
            size = 0
        except OSError as exc:
            if not pipe.held:
                target._drop_pipe()
            self._force_close(exc)
            return True
        if not size:
            # The pipe is full (at PIPE_SIZE, or out of slots); or the peer's EOF; or nothing to
            # read after all; or urgent data (TCP's out-of-band byte), where splice stops for
            # good, returning nothing, while recv steps over it. recv tells which, once the
            # pipe has sent what it holds.
            if pipe.held:
                try:
                    target._pause_protocol()
                except Exception as exc:
                    self._handler_failed(exc)
                return True
            target._drop_pipe()
            return False
        try:
            self.received += size
            self.heard = now
            PIPES.spliced += size
            pipe.held += size
            if not target.writing:
                target._splice_out(pipe)
            if pipe.held >= PIPE_SIZE:
                target._pause_protocol()
            elif size < COPY_BELOW and target.pipe is None:
                # Small reads again: copy them. (Not while the pipe holds bytes: what is read
                # next must go after them.)
                target.splicing = False
        except Exception as exc:
            self._handler_failed(exc)
        return True

    def guard(self) -> None:
        """While this stream is neither read nor written (a client paused until its backend
        connection is ready), still learn at once that the peer reset it. (A peer's EOF is not
        seen until reading resumes: it may be a half-close after a complete request.)"""
        if not self.reading and not self.writing and not self.lost:
            self.poller.guard(self)

    def _trouble(self) -> None:
        """A stream watched for nothing has an error or a hang-up."""
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:  # (a reset)
            self._force_close(OSError(error, os.strerror(error)))
        else:
            # Both directions are shut (the peer's EOF and ours): nothing more can come. Out
            # of the set, else the hang-up would wake us every turn; the session ends it.
            self.poller.unwatch(self)

    def _handler_failed(self, exc: Exception) -> None:
        """A handler raised: report it and close this connection (as asyncio's transports
        do), so that it cannot stay open with no one serving it."""
        self.loop.call_exception_handler(
            {"message": "error in a connection's handler", "exception": exc, "transport": self}
        )
        self._force_close(exc)

    def _start_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self.poller.watch(self, True, self.writing)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.poller.watch(self, False, self.writing)

    def pause_reading(self) -> None:
        self.paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        self.paused = False
        if not self.closing and not self.eof_in and self.protocol:
            self._start_reading()

    def is_reading(self) -> bool:
        return self.reading

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_out:
            raise RuntimeError("write() after write_eof()")
        # (Spliced bytes waiting in a pipe would have to go first; only a stream relaying to
        # this one splices, and it never writes while the pipe holds them.)
        assert self.pipe is None
        if self.lost or not data:
            return
        sent = 0
        if not self.buffer:
            try:
                sent = self.sock.send(data)
            except _AGAIN:
                pass
            except OSError as exc:
                self._force_close(exc)
                return
            if sent == len(data):
                return
        # Keep the rest: a view of bytes (immutable) as it is, anything else as a copy (a view
        # of the read buffer, which the next read overwrites, or a caller's bytearray).
        self._keep(memoryview(data)[sent:] if isinstance(data, bytes) else bytes(data[sent:]))

    def _keep(self, rest: bytes | memoryview) -> None:
        """Queue what the socket did not take, to be sent when it is writable."""
        if not self.buffer:
            self.writing = True
            self.poller.watch(self, self.reading, True)
        self.buffer.append(rest)
        self.buffered += len(rest)
        if self.buffered > HIGH_WATER:
            self._pause_protocol()

    def _splice_out(self, pipe: Pipe) -> None:
        """Send what the pipe holds: the rest waits for the socket to be writable, and a pipe
        left empty is given back."""
        try:
            pipe.held -= os.splice(pipe.r, self.fd, pipe.held, flags=os.SPLICE_F_NONBLOCK)
        except _AGAIN:
            pass
        except OSError as exc:
            self._force_close(exc)
            return
        if not pipe.held:
            self._drop_pipe()
        elif not self.writing:
            self.writing = True
            self.poller.watch(self, self.reading, True)

    def _drop_pipe(self) -> None:
        pipe = self.pipe
        if pipe is not None:
            self.pipe = None
            PIPES.release(pipe)

    def _pause_protocol(self) -> None:
        if not self.protocol_paused and self.protocol and not self.lost:
            self.protocol_paused = True
            self.protocol.pause_writing()

    def _write_ready(self) -> None:
        buffer = self.buffer
        while buffer:
            data = buffer[0]
            try:
                sent = self.sock.send(data)
            except _AGAIN:
                break
            except OSError as exc:
                self._force_close(exc)
                return
            self.buffered -= sent
            if sent < len(data):
                buffer[0] = memoryview(data)[sent:]
                break
            del buffer[0]
        pipe = self.pipe
        if pipe is not None and not buffer:
            self._splice_out(pipe)
            if self.lost:
                return
        piped = self._piped()
        if self.protocol_paused and self.buffered + piped <= LOW_WATER and self.protocol:
            self.protocol_paused = False
            try:
                self.protocol.resume_writing()
            except Exception as exc:
                self._handler_failed(exc)
                return
        if buffer or piped or self.lost:
            return
        if self.closing:
            self._schedule_lost(None)
            return
        self._stop_writing()
        if self.eof_out:
            self._shutdown()

    def _stop_writing(self) -> None:
        if self.writing:
            self.writing = False
            self.poller.watch(self, self.reading, False)

    def write_eof(self) -> None:
        if self.eof_out or self.closing:
            return
        self.eof_out = True
        if not self.buffer and self.pipe is None:
            self._shutdown()

    def _piped(self) -> int:
        """Bytes waiting in the pipe (after those in `buffer`)."""
        return self.pipe.held if self.pipe is not None else 0

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._force_close(exc)

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self.buffered + self._piped()

    # -- closing ----------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """Stop reading; close once what was written has been sent."""
        if self.closing:
            return
        self.closing = True
        if self.buffer or self.pipe is not None:
            self._stop_reading()
        else:
            self._schedule_lost(None)

    def abort(self) -> None:
        """Close now, dropping anything unsent."""
        self._force_close(None)

    def _force_close(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.buffer.clear()
        self.buffered = 0
        self.closing = True
        self._schedule_lost(exc)

    def _schedule_lost(self, exc: Exception | None) -> None:
        """Stop serving the socket; on the loop's next turn, tell the handler and close it."""
        if not self.lost:
            self.lost = True
            self.splicing = False
            self._drop_pipe()  # (what a forced close leaves in it is dropped)
            # No epoll_ctl: closing the socket unregisters it, and events that come before
            # that find the stream forgotten.
            self.reading = self.writing = False
            self.poller.forget(self)
            self.poller.lose(self.loop, self, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        # (Two relayed streams target each other: unlinked here, they are freed at once, not
        # by a later garbage collection.)
        self.target = None
        protocol, self.protocol = self.protocol, None
        try:
            if protocol is not None:
                protocol.connection_lost(exc)
        finally:
            self.sock.close()

    # -- the rest of the transport interface --------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        try:
            if name == "peername":
                if self.peer is None:
                    self.peer = self.sock.getpeername()
                return self.peer
            if name == "sockname":
                return self.sock.getsockname()
        except OSError:
            return default
        if name == "socket":
            return self.sock
        return default

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        raise NotImplementedError("the limits are fixed: HIGH_WATER and LOW_WATER")


def nodelay(sock: socket.SocketType) -> None:
    """No Nagle delay: a relay's writes are whole chunks, to be sent as they come."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_NODELAY_INHERITED = sys.platform == "linux"


def prepare(sock: socket.SocketType) -> None:
    """Make an accepted socket ready for a Stream: non-blocking. (It has no Nagle delay
    already: an accepted socket inherits TCP_NODELAY from its listener on Linux, and `listen`
    sets it there; elsewhere it is set here.)"""
    sock.setblocking(False)
    if not _NODELAY_INHERITED:
        nodelay(sock)


Accepted = Callable[[socket.SocketType, Any], None]


class Listener:
    """Listening sockets whose connections are accepted in a reader callback.

    `accepted(sock, address)` gets each new connection; it may call `pause`, which takes effect
    before the next accept. When accept() fails for lack of descriptors or memory, the
    listener calls `exhausted(error)`, rests RETRY_ACCEPT seconds and tries again.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        accepted: Accepted,
        exhausted: Callable[[OSError], None],
    ) -> None:
        self.loop = loop
        self.sockets = sockets
        self.accepted = accepted
        self.exhausted = exhausted
        self.serving = False
        self.paused = False  # by the owner (pause/resume)
        self.resting: asyncio.TimerHandle | None = None  # after running out of descriptors
        self.closed = False

    def start(self) -> None:
        if self.closed or self.serving or self.paused or self.resting is not None:
            return
        self.serving = True
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _stop(self) -> None:
        if self.serving:
            self.serving = False
            for sock in self.sockets:
                self.loop.remove_reader(sock.fileno())

    def pause(self) -> None:
        self.paused = True
        self._stop()

    def resume(self) -> None:
        self.paused = False
        self.start()

    def _accept(self, listening: socket.socket) -> None:
        # (socket.accept would convert the family and type to enums for every connection.
        # Relayed sockets are the C type, socket.SocketType: socket.socket's constructor and
        # close are Python code, which cost 3.5% of a connection's instructions, both sides.)
        family = int(listening.family)
        for _ in range(ACCEPT_BATCH):
            if not self.serving:
                return
            try:
                fd, address = listening._accept()  # type: ignore[attr-defined]
            except (*_AGAIN, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRORS:
                    self._stop()
                    self.resting = self.loop.call_later(RETRY_ACCEPT, self._rested)
                    self.exhausted(exc)
                return  # (anything else concerns that one connection attempt)
            sock = socket.SocketType(family, socket.SOCK_STREAM, 0, fd)
            try:
                self.accepted(sock, address)
            except Exception as exc:  # (report it; the other connections go on)
                sock.close()
                self.loop.call_exception_handler(
                    {"message": "error in accepting a connection", "exception": exc}
                )

    def _rested(self) -> None:
        self.resting = None
        self.start()

    def close(self) -> None:
        if self.closed:
            return
        self._stop()
        self.closed = True
        if self.resting is not None:
            self.resting.cancel()
            self.resting = None
        for sock in self.sockets:
            sock.close()


async def listen(
    host: str, port: int, *, backlog: int, reuse_port: bool = False
) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address `host` names (as asyncio's
    create_server binds them); an OSError says why one could not be bound."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(infos):  # (in order, without repeats)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            nodelay(sock)  # (passed on to every accepted socket: see prepare)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
