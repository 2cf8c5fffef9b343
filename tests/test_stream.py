"""stream.py on its own: real sockets on 127.0.0.1, one event loop in the test process."""

from __future__ import annotations

import asyncio
import socket

from balancer import stream


async def _accept_one() -> tuple[socket.SocketType, socket.socket]:
    """A connection accepted by a `stream.Listener` and made ready by `stream.prepare`, with
    the client's end."""
    loop = asyncio.get_running_loop()
    sockets = await stream.listen("127.0.0.1", 0, backlog=8)
    accepted: asyncio.Future[socket.SocketType] = loop.create_future()

    def on_accept(sock: socket.SocketType, address: object) -> None:
        stream.prepare(sock)
        accepted.set_result(sock)

    listener = stream.Listener(loop, sockets, on_accept, lambda error: None)
    listener.start()
    client = socket.socket()
    client.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(client, sockets[0].getsockname()), 10)
        server = await asyncio.wait_for(accepted, 10)
    finally:
        listener.close()
    return server, client


def test_accepted_socket_is_non_blocking_without_nagle_delay() -> None:
    async def main() -> tuple[int, bool]:
        server, client = await _accept_one()
        try:
            return server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), server.getblocking()
        finally:
            server.close()  # (the C socket type has no context manager)
            client.close()

    nodelay, blocking = asyncio.run(main())
    assert nodelay != 0
    assert blocking is False
