"""Connecting to a backend with callbacks: no task and no coroutine per connection.

`loop.create_connection` runs a coroutine and creates several futures for every backend
connection; on a connection-per-request load that machinery was a quarter of the balancer's
time. A `Dial` does the same work with a non-blocking `connect` and one writer callback; the
connected socket is then served by a `stream.Stream`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

from balancer.core.address import Address

_IN_PROGRESS = (errno.EINPROGRESS, errno.EINTR)

Done = Callable[[socket.SocketType | None, BaseException | None], None]


@functools.lru_cache(maxsize=1024)
def _family(host: str) -> socket.AddressFamily | None:
    """The address family of an IP literal; None for a host name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class Dial:
    """One connect attempt to `address`, ended by `done(sock, None)` or `done(None, error)`.

    `done` is called exactly once unless `cancel` comes first, and never after it. A host name
    is resolved on each attempt and its addresses are tried in turn, all within the timeout.
    """

    __slots__ = ("address", "deadline", "done", "fd", "loop", "more", "resolving", "sock", "timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, address: Address, timeout: float, done: Done
    ) -> None:
        self.loop = loop
        self.address = address
        self.done: Done | None = done
        self.sock: socket.SocketType | None = None
        self.fd = -1  # registered for writability while the connect is in progress
        self.resolving: asyncio.Future[Any] | None = None
        self.more: list[tuple[Any, ...]] = []  # a host name's addresses not yet tried
        self.deadline = loop.time() + timeout
        self.timer: asyncio.TimerHandle | None = None  # set once there is something to wait for

    def _wait(self) -> None:
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._timed_out)

    def start(self) -> None:
        family = _family(self.address.host)
        if family is not None:
            self._connect(family, (self.address.host, self.address.port))
            return
        self._wait()
        self.resolving = asyncio.ensure_future(
            self.loop.getaddrinfo(self.address.host, self.address.port, type=socket.SOCK_STREAM),
            loop=self.loop,
        )
        self.resolving.add_done_callback(self._resolved)

    def _resolved(self, future: asyncio.Future[Any]) -> None:
        self.resolving = None
        if future.cancelled() or self.done is None:
            return
        exc = future.exception()
        if exc is not None:
            self._finish(None, exc)
            return
        infos = future.result()
        if not infos:
            self._finish(None, OSError(f"{self.address.host}: no address"))
            return
        self.more = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
        self._connect(*self.more.pop(0))

    def _connect(self, family: int, sockaddr: tuple[Any, ...]) -> None:
        try:
            # (the C type, as for accepted sockets: see stream.Listener._accept)
            sock = socket.SocketType(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self._finish(None, exc)
            return
        self.sock = sock
        try:
            error = sock.connect_ex(sockaddr)  # (no exception to make for EINPROGRESS)
        except OSError as exc:  # (an address it cannot take)
            self._failed(exc)
            return
        if error in _IN_PROGRESS:
            try:
                sock.getpeername()  # (on loopback the handshake is often over already)
            except OSError:
                self.fd = sock.fileno()
                self.loop.add_writer(self.fd, self._writable)
                self._wait()
                return
            error = 0
        self._ended(error)

    def _failed(self, exc: OSError) -> None:
        if not self.more:
            self._finish(None, exc)
            return
        self._drop_socket(keep=False)
        self._connect(*self.more.pop(0))

    def _writable(self) -> None:
        assert self.sock is not None
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error in _IN_PROGRESS:
            return  # not finished after all: wait for the next wake-up
        self._ended(error)

    def _ended(self, error: int) -> None:
        """The connect attempt is over: connected if `error` is 0."""
        if error:
            self._failed(OSError(error, os.strerror(error)))  # (the errno's subclass)
        else:
            self._finish(self.sock, None)

    def _timed_out(self) -> None:
        self._finish(None, TimeoutError())

    def _finish(self, sock: socket.SocketType | None, exc: BaseException | None) -> None:
        done = self.done
        self._release(keep=sock is not None)
        if done is not None:
            done(sock, exc)

    def cancel(self) -> None:
        """Give up: close the socket, and do not call `done`."""
        self._release(keep=False)

    def _release(self, keep: bool) -> None:
        self.done = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.resolving is not None:
            self.resolving.cancel()
            self.resolving = None
        self._drop_socket(keep)

    def _drop_socket(self, keep: bool) -> None:
        """Stop watching the socket; close it unless it is handed on."""
        if self.fd >= 0:
            self.loop.remove_writer(self.fd)
            self.fd = -1
        if self.sock is not None and not keep:
            self.sock.close()
        self.sock = None
