"""stream.py on its own: real sockets on 127.0.0.1, one event loop in the test process."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import struct
from collections.abc import Iterable

import pytest
from conftest import SLOW_READER, unsent

from balancer.dataplane import stream

SocketOption = tuple[int, int, int]


async def _accept_one(
    client_options: Iterable[SocketOption] = (),
) -> tuple[socket.SocketType, socket.socket]:
    """A connection accepted by a `stream.Listener` and made ready by `stream.prepare`, with
    the client's end (given `client_options` before it connects)."""
    loop = asyncio.get_running_loop()
    sockets = await stream.listen("127.0.0.1", 0, backlog=8)
    accepted: asyncio.Future[socket.SocketType] = loop.create_future()

    def on_accept(sock: socket.SocketType, address: object) -> None:
        stream.prepare(sock)
        accepted.set_result(sock)

    listener = stream.Listener(loop, sockets, on_accept, lambda error: None)
    listener.start()
    client = socket.socket()
    for option in client_options:
        client.setsockopt(*option)
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


def _descriptors_but_kept_pipes() -> int:
    """This process's open descriptors, but for those of the empty pipes kept for reuse."""
    return len(os.listdir("/proc/self/fd")) - 2 * len(stream.PIPES.free)


class OneWay:
    """A relay's two streams, one direction (`source` to `sink`), handled as the balancer's
    session handles them: backpressure from the sink pauses the source, the source's EOF is
    passed on as a half-close, and when either is lost the other is closed once it has sent
    what it holds."""

    def __init__(self) -> None:
        self.source: stream.Stream | None = None
        self.sink: stream.Stream | None = None
        self.lost: dict[str, Exception | None] = {}
        self.both_lost = asyncio.Event()


class Side(asyncio.Protocol):
    def __init__(self, relay: OneWay, source: bool) -> None:
        self.relay = relay
        self.source = source

    def pause_writing(self) -> None:  # (the sink's)
        assert self.relay.source is not None
        self.relay.source.pause_reading()

    def resume_writing(self) -> None:
        assert self.relay.source is not None
        self.relay.source.resume_reading()

    def eof_received(self) -> bool:
        if self.source:
            assert self.relay.sink is not None
            self.relay.sink.write_eof()
            return True
        return False  # (the receiving peer closed)

    def connection_lost(self, exc: Exception | None) -> None:
        relay = self.relay
        relay.lost["source" if self.source else "sink"] = exc
        other = relay.sink if self.source else relay.source
        assert other is not None
        other.close()
        if len(relay.lost) == 2:
            relay.both_lost.set()

    def data_received(self, data: bytes | memoryview) -> None:
        raise AssertionError("a relayed chunk reached the handler")


async def _one_way(
    sink_options: Iterable[SocketOption] = (),
) -> tuple[OneWay, socket.socket, socket.socket]:
    """A relay from one accepted connection to another; the handler and the two peers (the
    one that sends, the one that receives)."""
    loop = asyncio.get_running_loop()
    (source_sock, sender), (sink_sock, receiver) = await _accept_one(), await _accept_one(
        sink_options
    )
    relay = OneWay()
    relay.source = stream.Stream(loop, source_sock, Side(relay, source=True))
    relay.sink = stream.Stream(loop, sink_sock, Side(relay, source=False))
    relay.source.target = relay.sink
    relay.source.start()
    relay.sink.start()
    return relay, sender, receiver


async def _receive_all(receiver: socket.socket, chunk: int = 65536) -> bytes:
    loop = asyncio.get_running_loop()
    received = bytearray()
    while data := await asyncio.wait_for(loop.sock_recv(receiver, chunk), 10):
        received += data
    return bytes(received)


def test_bulk_relay_splices_through_a_pipe_loses_nothing_and_gives_it_back() -> None:
    # 8 MiB toward a slow reader: past the first large read the bytes go through a pipe, the
    # pipe fills (backpressure pauses the source), the half-close follows the last byte.
    payload = random.Random(1).randbytes(8 * 1024 * 1024)

    async def main() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        before = stream.PIPES.spliced
        relay, sender, receiver = await _one_way(SLOW_READER)
        try:

            async def send() -> None:
                await loop.sock_sendall(sender, payload)
                sender.shutdown(socket.SHUT_WR)

            sending = asyncio.ensure_future(send())
            received = await _receive_all(receiver, 4096)
            await asyncio.wait_for(sending, 10)
            return received, stream.PIPES.spliced - before
        finally:
            sender.close()
            receiver.close()
            await asyncio.wait_for(relay.both_lost.wait(), 10)

    gc.collect()  # (the descriptors of earlier tests' event loops)
    descriptors = _descriptors_but_kept_pipes()
    received, spliced = asyncio.run(main())
    assert len(received) == len(payload) and received == payload
    assert spliced >= len(payload) // 2, f"only {spliced} of {len(payload)} bytes spliced"
    # Every pipe is given back (closed, or kept empty for the next transfer), and no other
    # descriptor is left over.
    assert stream.PIPES.open == len(stream.PIPES.free)
    gc.collect()
    assert _descriptors_but_kept_pipes() == descriptors


def test_reset_after_the_last_byte_still_delivers_what_the_pipe_holds() -> None:
    # The sender's bytes are all acknowledged, then it resets, while some of them wait in the
    # relay's pipe toward a slow reader: they are delivered, then a close.
    payload = random.Random(2).randbytes(1024 * 1024)

    async def main() -> tuple[bytes, int, dict[str, Exception | None]]:
        loop = asyncio.get_running_loop()
        before = stream.PIPES.spliced
        relay, sender, receiver = await _one_way(SLOW_READER)
        assert relay.sink is not None
        received = bytearray()
        try:
            sending = asyncio.ensure_future(loop.sock_sendall(sender, payload))
            # Read slowly until everything sent is acknowledged and the pipe holds some.
            deadline = loop.time() + 10
            while not (sending.done() and not unsent(sender) and relay.sink._piped()):
                assert loop.time() < deadline, "never all acknowledged with the pipe in use"
                received += await asyncio.wait_for(loop.sock_recv(receiver, 4096), 10)
            await sending
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sender.close()  # a reset
            received += await _receive_all(receiver)
            await asyncio.wait_for(relay.both_lost.wait(), 10)
            return bytes(received), stream.PIPES.spliced - before, relay.lost
        finally:
            sender.close()
            receiver.close()

    received, spliced, lost = asyncio.run(main())
    assert len(received) == len(payload), f"{len(payload) - len(received)} bytes lost"
    assert received == payload
    assert spliced > 0
    assert isinstance(lost["source"], ConnectionResetError)
    assert lost["sink"] is None  # (closed once it had sent everything)
    assert stream.PIPES.open == len(stream.PIPES.free)


def test_small_reads_after_a_bulk_transfer_are_copied_again() -> None:
    # A large read switches a direction to splicing, a small one back: a keep-alive
    # connection that carried one download copies its small requests again.
    async def main() -> tuple[int, bool, int, bytes]:
        loop = asyncio.get_running_loop()
        before = stream.PIPES.spliced
        relay, sender, receiver = await _one_way()
        assert relay.sink is not None
        try:
            bulk = random.Random(3).randbytes(4 * 1024 * 1024)
            await asyncio.wait_for(loop.sock_sendall(sender, bulk), 10)
            got = 0
            while got < len(bulk):
                got += len(await asyncio.wait_for(loop.sock_recv(receiver, 1 << 20), 10))
            spliced = stream.PIPES.spliced - before
            await loop.sock_sendall(sender, b"ping")  # (spliced, and then no more)
            answer = await asyncio.wait_for(loop.sock_recv(receiver, 100), 10)
            still_splicing = relay.sink.splicing
            before = stream.PIPES.spliced
            await loop.sock_sendall(sender, b"pong")
            answer += await asyncio.wait_for(loop.sock_recv(receiver, 100), 10)
            return spliced, still_splicing, stream.PIPES.spliced - before, answer
        finally:
            sender.close()
            receiver.close()
            await asyncio.wait_for(relay.both_lost.wait(), 10)

    spliced, still_splicing, spliced_after, answer = asyncio.run(main())
    assert spliced > 0, "the bulk transfer never went through a pipe"
    assert not still_splicing, "still splicing after a small read"
    assert spliced_after == 0, "a small read after the switch went through a pipe"
    assert answer == b"pingpong"


def test_bytes_kept_before_the_switch_to_splicing_go_first() -> None:
    # The switch can come while the user-space buffer holds bytes the socket refused: what is
    # spliced then waits behind them, even though the socket has room again before the loop
    # has told the stream so.
    kept = random.Random(6).randbytes(20_000)
    spliced = random.Random(7).randbytes(60_000)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        relay, sender, receiver = await _one_way()
        assert relay.source is not None and relay.sink is not None
        try:
            relay.sink._keep(kept)  # (as though its socket had refused them a moment ago)
            relay.sink.splicing = True  # (as after a large read)
            sender.setblocking(True)
            sender.sendall(spliced)  # (on loopback, readable at the source once sent)
            relay.source._read_ready(loop.time())  # (before the loop runs the sink's turn)
            sender.shutdown(socket.SHUT_WR)
            return await _receive_all(receiver)
        finally:
            sender.close()
            receiver.close()
            await asyncio.wait_for(relay.both_lost.wait(), 10)

    before = stream.PIPES.spliced
    received = asyncio.run(main())
    assert stream.PIPES.spliced > before, "nothing went through a pipe"
    assert received == kept + spliced


async def _send_urgent(sock: socket.socket, byte: bytes) -> None:
    """Send one byte as TCP urgent data (MSG_OOB), once the socket takes it."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock.send(byte, socket.MSG_OOB)
            return
        except BlockingIOError:
            writable = loop.create_future()
            loop.add_writer(sock.fileno(), writable.set_result, None)
            try:
                await asyncio.wait_for(writable, 10)
            finally:
                loop.remove_writer(sock.fileno())


@pytest.mark.parametrize("eof", ["at once", "once all arrived"])
def test_urgent_data_in_a_spliced_stream_loses_nothing_after_it(eof: str) -> None:
    # splice stops at TCP's urgent mark: it fails with EAGAIN for ever while the socket stays
    # readable, or, once the peer's EOF is in, returns 0 as at the end. recv steps over the
    # urgent byte (as it always did here), and a spliced stream falls back to it: the bytes
    # after the mark arrive, and are not taken for the end.
    before, after = random.Random(4).randbytes(256 * 1024), random.Random(5).randbytes(256 * 1024)

    async def main() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        spliced = stream.PIPES.spliced
        relay, sender, receiver = await _one_way()
        try:
            await loop.sock_sendall(sender, before)
            await _send_urgent(sender, b"!")
            await loop.sock_sendall(sender, after)
            if eof == "at once":
                sender.shutdown(socket.SHUT_WR)
            received = bytearray()
            while len(received) < len(before) + len(after):
                chunk = await asyncio.wait_for(loop.sock_recv(receiver, 65536), 10)
                assert chunk, f"the end came after {len(received)} bytes"
                received += chunk
            if eof != "at once":
                sender.shutdown(socket.SHUT_WR)
            received += await _receive_all(receiver)
            return bytes(received), stream.PIPES.spliced - spliced
        finally:
            sender.close()
            receiver.close()
            await asyncio.wait_for(relay.both_lost.wait(), 10)

    received, spliced = asyncio.run(main())
    assert spliced > 0, "the stream never spliced"
    assert len(received) == len(before) + len(after)
    assert received == before + after
    assert stream.PIPES.open == len(stream.PIPES.free)
