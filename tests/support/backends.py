"""Backends that misbehave on purpose, in a thread of the test, on real sockets."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, zero seconds: close() sends a reset


class ThreadedServer:
    """A listener on 127.0.0.1 whose every connection is handled by `_handle` in a thread."""

    def __init__(self, backlog: int = 512) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class ScriptedBackend(ThreadedServer):
    """A backend that misbehaves on purpose, one behaviour per connection's first byte."""

    def __init__(self, idle_close: float = 0.0) -> None:
        self.idle_close = idle_close  # close a connection that sends nothing for this long
        self.done = threading.Event()
        self.eof_seen = threading.Event()  # an "S" connection met the client's EOF
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            if self.idle_close:
                conn.settimeout(self.idle_close)
            try:
                command = conn.recv(1)
            except TimeoutError:
                return  # (closes: the client said nothing in time)
            conn.settimeout(None)
            if command == b"R":  # send a little, then reset mid-stream
                conn.sendall(b"x" * 10000)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            elif command == b"H":  # answer, half-close early, keep reading what the client sends
                conn.sendall(b"early")
                conn.shutdown(socket.SHUT_WR)
                total = 0
                while chunk := conn.recv(65536):
                    total += len(chunk)
            elif command == b"G":  # send 1 GB, then close (or stop when the balancer gives up)
                block = b"g" * (1 << 20)
                with contextlib.suppress(ConnectionError):
                    for _ in range(1024):
                        conn.sendall(block)
            elif command == b"W":  # wait for the client to vanish
                conn.recv(1)
            elif command == b"C":  # take the request (this byte), then close without a word
                pass
            elif command == b"X":  # take the request, then reset without a word
                conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            elif command == b"S":  # read to the client's EOF, then say nothing until the end
                while conn.recv(65536):
                    pass
                self.eof_seen.set()
                self.done.wait(60)

    def close(self) -> None:
        self.done.set()
        super().close()


class WordBackend(ThreadedServer):
    """Answers `Hello from Server PORT!` and closes, but resets, without a word, every
    connection whose first line starts with `word`, as a backend does with a request it
    rejects. With `unread`, it answers after the first line and closes with the rest of the
    request unread, which also sends a reset (that may destroy its answer in flight)."""

    def __init__(self, word: bytes = b"EVIL", unread: bool = False) -> None:
        self.word = word
        self.unread = unread
        self.served = 0
        self.reset = 0
        self._count = threading.Lock()
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                line = b""
                while b"\n" not in line and len(line) < 4096:
                    chunk = conn.recv(4096 if not self.unread else 1)
                    if not chunk:
                        break
                    line += chunk
                if line.startswith(self.word):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                    with self._count:
                        self.reset += 1
                    return
                conn.sendall(f"Hello from Server {self.port}!\n".encode())
                with self._count:
                    self.served += 1
            except OSError:
                return


def ask(port: int, message: bytes, source: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """Connect from `source` (any 127.x.y.z is this machine), send, half-close, read to the
    end; b"" for a reset or a close without an answer."""
    with socket.socket() as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        try:
            s.sendall(message)
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            return answer
        except OSError as exc:
            # (a reset that came before the half-close makes it fail with ENOTCONN)
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                return b""
            raise
