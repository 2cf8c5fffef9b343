"""A demo backend: `hello` answers a request and closes, `echo` echoes until EOF, `http`
serves HTTP/1.1 with keep-alive and a `/health` path.
"""

from __future__ import annotations

import asyncio
import signal
from http import HTTPStatus
from typing import cast

import h11

from balancer.protocols import proxy_protocol

MODES = ("hello", "echo", "http")


class _Base(asyncio.Protocol):
    accept_proxy = False  # expect a PROXY protocol header first, and report the client in it

    def __init__(self, port: int, delay: float) -> None:
        self.port = port
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.greeting = f"Hello from Server {port}!".encode()
        self.header = b""
        self.client = "-"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        if self.accept_proxy:
            self.data_received = self._proxy_header  # type: ignore[method-assign]

    def _proxy_header(self, data: bytes) -> None:
        assert self.transport is not None
        self.header += data
        try:
            parsed = proxy_protocol.parse(self.header)
        except proxy_protocol.ProxyProtocolError as exc:
            print(f"Server {self.port}: bad PROXY header from {self.client}: {exc}", flush=True)
            self.transport.abort()
            return
        if parsed is None:
            return
        header, length = parsed
        if header.source is not None:
            via = self.client
            self.client = f"{header.source[0]}:{header.source[1]}"
            print(
                f"Server {self.port}: connection from {self.client} (PROXY v{header.version}, "
                f"via {via})",
                flush=True,
            )
        del self.data_received  # back to the class's own method
        if len(self.header) > length:
            self.data_received(self.header[length:])

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def later(self, callback: object, *args: object) -> None:
        loop = asyncio.get_running_loop()
        if self.delay > 0:
            loop.call_later(self.delay, callback, *args)  # type: ignore[arg-type]
        else:
            callback(*args)  # type: ignore[operator]


class Hello(_Base):
    """Reads one request, answers `Hello from Server PORT!`, closes."""

    answered = False

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.later(self._answer)

    def _answer(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(self.greeting)
            self.transport.close()

    def eof_received(self) -> bool:
        return self.answered  # keep open until the answer has gone out


class Echo(_Base):
    """Sends back every byte it receives, then half-closes after the client's EOF."""

    def data_received(self, data: bytes) -> None:
        self.later(self._echo, data)

    def _echo(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(data)

    def eof_received(self) -> bool:
        self.later(self._finish)
        return True

    def _finish(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.close()


class Http(_Base):
    """HTTP/1.1 with keep-alive: `/health` answers `ok`, every other path the greeting."""

    def __init__(self, port: int, delay: float) -> None:
        super().__init__(port, delay)
        self.conn = h11.Connection(h11.SERVER)
        self.busy = False

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._next()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._next()
        return True

    def _next(self) -> None:
        assert self.transport is not None
        while not self.busy:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                body = f"bad request: {exc}\n".encode()
                self._send(400, body, close=True)
                return
            if event is h11.PAUSED and self.conn.our_state is h11.DONE:
                self.conn.start_next_cycle()  # keep-alive: ready for the next request
                continue
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.CLOSED:
                    self.transport.close()
                return
            if isinstance(event, h11.Request):
                self.busy = True
                path = event.target.split(b"?", 1)[0]
                body = b"ok\n" if path == b"/health" else self.greeting + b"\n"
                self.later(self._respond, body)
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _respond(self, body: bytes) -> None:
        self._send(200, body, close=False)
        self.busy = False
        if self.conn.our_state is h11.MUST_CLOSE:
            assert self.transport is not None
            self.transport.close()
            return
        self._next()

    def _send(self, status: int, body: bytes, *, close: bool) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        headers = [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Server", f"balancer-demo/{self.port}"),
            ("X-Client", self.client),
        ]
        if close:
            headers.append(("Connection", "close"))
        try:
            reason = HTTPStatus(status).phrase.encode()
            data = self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
            data = (data or b"") + (self.conn.send(h11.Data(data=body)) or b"")
            data += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.transport.write(data)
        if close:
            self.transport.close()


PROTOCOLS: dict[str, type[_Base]] = {"hello": Hello, "echo": Echo, "http": Http}


async def serve(
    port: int,
    mode: str = "hello",
    delay_ms: float = 0.0,
    host: str = "127.0.0.1",
    accept_proxy: bool = False,
) -> None:
    loop = asyncio.get_running_loop()
    factory = type(mode.title(), (PROTOCOLS[mode],), {"accept_proxy": accept_proxy})
    bound_port = [port]  # with port 0 the greeting names the port the OS gave
    server = await loop.create_server(
        lambda: factory(bound_port[0], delay_ms / 1000.0),
        host,
        port,
        reuse_address=True,
        backlog=1024,
    )
    bound_port[0] = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"Server {bound_port[0]} ({mode}) listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await stop.wait()
