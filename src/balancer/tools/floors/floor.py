"""The least work a TCP relay written in Python can do: `balancer bench`'s `floor` target.

This is not a load balancer and nothing else uses it. It has no configuration, health checks,
retries, timeouts, limits, logs or metrics: one epoll loop, round robin over backend ports on
127.0.0.1, 1 MiB reads into one buffer, each chunk sent straight to the other socket. What a
socket does not take is kept, and its source is not read until that is sent. An EOF or error on
either side closes both sides, each once its pending bytes are sent (enough for the harness's HTTP
workloads; no half-close). Its figures in the harness show how much of the gap to HAProxy is
Python's own cost rather than the balancer's features.

    python -m balancer.tools.floors.floor PORT BACKEND_PORT [BACKEND_PORT ...]

(PORT 0: any free port)
"""

from __future__ import annotations

import itertools
import select
import socket
import sys

HOST = "127.0.0.1"
_BUFFER = bytearray(1024 * 1024)
_VIEW = memoryview(_BUFFER)
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_GONE = select.EPOLLHUP | select.EPOLLERR


class Side:
    __slots__ = ("closing", "fd", "other", "pending", "reading", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.other: Side = self
        self.pending = b""  # bytes the socket did not take yet (the other side is not read)
        self.reading = True
        self.closing = False  # close (both sides) once `pending` is sent


class Relay:
    def __init__(self, port: int, backends: list[int]) -> None:
        self.listener = socket.create_server((HOST, port), backlog=4096)
        self.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (inherited)
        self.listener.setblocking(False)
        self.backends = itertools.cycle([(HOST, p) for p in backends])
        self.epoll = select.epoll()
        self.epoll.register(self.listener.fileno(), _IN)
        self.sides: dict[int, Side] = {}

    def run(self) -> None:
        listening, sides = self.listener.fileno(), self.sides
        while True:
            for fd, events in self.epoll.poll():
                if fd == listening:
                    self.accept()
                    continue
                side = sides.get(fd)
                if side is not None and events & (_OUT | select.EPOLLERR) and side.pending:
                    self.flush(side)
                side = sides.get(fd)
                if side is None:
                    continue
                if side.reading and events & ~_OUT:
                    self.read(side)
                elif not side.pending and events & _GONE:
                    self.close(side)  # (a paused side reset: epoll reports it whatever the mask)

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, ConnectionAbortedError):
                return
            client.setblocking(False)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                upstream.connect(next(self.backends))
            except BlockingIOError:
                pass  # (bytes sent before it is connected wait in `pending`)
            except OSError:
                client.close()
                upstream.close()
                continue
            a, b = Side(client), Side(upstream)
            a.other, b.other = b, a
            for side in (a, b):
                self.sides[side.fd] = side
                self.epoll.register(side.fd, _IN)

    def watch(self, side: Side) -> None:
        self.epoll.modify(side.fd, (_IN if side.reading else 0) | (_OUT if side.pending else 0))

    def read(self, side: Side) -> None:
        try:
            size = side.sock.recv_into(_BUFFER)
        except BlockingIOError:
            return
        except OSError:
            size = 0
        other = side.other
        if not size:
            self.close(side)
            return
        try:
            sent = other.sock.send(_VIEW[:size])
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(side)
            return
        if sent < size:
            other.pending = bytes(_VIEW[sent:size])
            side.reading = False
            self.watch(other)
            self.watch(side)

    def flush(self, side: Side) -> None:
        try:
            sent = side.sock.send(side.pending)
        except BlockingIOError:
            return
        except OSError:
            side.pending = b""
            self.close(side)
            return
        side.pending = side.pending[sent:]
        if side.pending:
            return
        if side.closing:
            self.close(side)
            return
        side.other.reading = True
        self.watch(side)
        self.watch(side.other)

    def close(self, side: Side) -> None:
        """End the pair: each side is closed as soon as it has sent what it still has."""
        for s in (side, side.other):
            s.reading = False
            s.closing = True
            if s.pending:
                self.watch(s)
            elif self.sides.pop(s.fd, None) is not None:
                s.sock.close()  # (also out of the epoll set, which reports hang-ups regardless)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not all(a.isdigit() for a in argv):
        sys.exit(
            "usage: python -m balancer.tools.floors.floor PORT BACKEND_PORT [BACKEND_PORT ...]"
        )
    relay = Relay(int(argv[0]), [int(a) for a in argv[1:]])
    print(f"floor listening on {HOST}:{relay.listener.getsockname()[1]}", flush=True)
    relay.run()


if __name__ == "__main__":
    main(sys.argv[1:])
