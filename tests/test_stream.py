"""stream.py on its own: real sockets on 127.0.0.1, one event loop in the test process."""

from __future__ import annotations

import asyncio
import gc
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



def _streams_alive() -> int:
    """Stream objects in the heap, garbage not yet collected included."""
    return sum(isinstance(o, stream.Stream) for o in gc.get_objects())


def test_streams_relaying_to_each_other_are_freed_without_the_garbage_collector() -> None:
    # A finished connection must not wait for a collection to be freed: under churn, that
    # garbage raised the heap's high-water mark, which the allocator then kept.
    async def main() -> list[Exception | None]:
        loop = asyncio.get_running_loop()
        (a_sock, a_peer), (b_sock, b_peer) = await _accept_one(), await _accept_one()
        lost = asyncio.Event()
        ended: list[Exception | None] = []

        class Ends(asyncio.Protocol):
            def data_received(self, data: bytes | memoryview) -> None:
                raise AssertionError("a relayed chunk reached the handler")

            def connection_lost(self, exc: Exception | None) -> None:
                ended.append(exc)
                if len(ended) == 2:
                    lost.set()

        a, b = stream.Stream(loop, a_sock, Ends()), stream.Stream(loop, b_sock, Ends())
        a.start()
        b.start()
        a.target, b.target = b, a
        del a, b
        try:
            await asyncio.wait_for(loop.sock_sendall(a_peer, b"ping"), 10)
            assert await asyncio.wait_for(loop.sock_recv(b_peer, 4), 10) == b"ping"
            await asyncio.wait_for(loop.sock_sendall(b_peer, b"pong"), 10)
            assert await asyncio.wait_for(loop.sock_recv(a_peer, 4), 10) == b"pong"
            assert _streams_alive() == 2
            a_peer.close()  # each stream sees its peer's EOF and closes
            b_peer.close()
            await asyncio.wait_for(lost.wait(), 10)
        finally:
            a_peer.close()
            b_peer.close()
        return ended

    gc.collect()
    gc.disable()
    try:
        assert asyncio.run(main()) == [None, None]
        assert _streams_alive() == 0
    finally:
        gc.enable()
