"""Hostile clients, exhausted resources, limits, ACLs and the PROXY protocol, end to end."""

from __future__ import annotations

import errno
import re
import resource
import selectors
import signal
import socket
import struct
import threading
import time
from pathlib import Path

from conftest import (
    SLOW_READER,
    Cluster,
    Process,
    balancer_cmd,
    descriptors,
    exchange,
    free_port,
    read_log,
    served_by,
    unsent,
    wait_for_log,
    wait_until,
)
from support.backends import ScriptedBackend
from support.clients import MIB, call, echo_transfer
from support.config import service

from balancer.tools.procfs import cpu_seconds


def attempt(port: int, message: bytes) -> bytes:
    """An echo exchange; a refusal (EOF or reset before any answer) gives b""."""
    try:
        return exchange(port, message, half_close=True)
    except OSError as exc:
        # (a reset that came before the half-close makes it fail with ENOTCONN)
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
            return b""
        raise


def test_descriptor_exhaustion_pauses_without_spinning(cluster: Cluster) -> None:
    backend = cluster.backend("echo")
    port = free_port()
    log = cluster.tmp / "lb.log"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = Process(
        balancer_cmd(
            "run", "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{backend}",
            "--log-file", str(log),
        ),
        preexec_fn=low_limit,
    )  # fmt: skip
    cluster.processes.append(proc)
    proc.expect("listening on")
    idle = []
    try:
        for _ in range(400):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            idle.append(s)
        # (256 - 64 in reserve - 2 x 16 pipes) / 2 descriptors
        wait_for_log(log, r"open-file limit 256 .*at most 80 relayed connections.* 16 pipes")
        wait_for_log(log, r"accept_paused .*(too many open files|connections \(from its open-file)")
        before = sum(cpu_seconds(proc.proc.pid))
        began = time.monotonic()
        time.sleep(2.0)  # a window to measure CPU use in, not a wait for an event
        used = sum(cpu_seconds(proc.proc.pid)) - before
        assert proc.proc.poll() is None, "the balancer died"
        assert used < 0.5 * (time.monotonic() - began), f"{used:.2f}s of CPU: spinning"
    finally:
        for s in idle:
            s.close()
    # Descriptors free again: served at once.
    assert exchange(port, b"back", half_close=True) == b"back"
    assert "Traceback" not in read_log(log) + proc.text


def test_slow_client_flood_is_closed_by_first_byte_timeout(cluster: Cluster) -> None:
    backend = cluster.backend()
    port = free_port()
    admin = free_port()
    timeouts = '[services.timeouts]\nclient_first_byte = "5s"'
    path = cluster.config(service("web", port, [backend], timeouts), admin=admin)
    cluster.balancer("--config", str(path))
    idle = []
    try:
        for _ in range(5000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            idle.append(s)
        wait_until(
            lambda: call(admin, "GET", "/api/services")[1][0]["active"] >= 4900,
            what="the idle clients accepted",
        )
        # Other clients are served meanwhile, without waiting behind the idle ones (the
        # bound is a sanity check, far above the few milliseconds they take).
        for _ in range(20):
            began = time.monotonic()
            assert served_by(exchange(port)) == backend
            assert time.monotonic() - began < 1.0
        # Every idle client is closed by the balancer (EOF), none left hanging.
        closed = 0
        deadline = time.monotonic() + 30
        with selectors.DefaultSelector() as waiting:
            for s in idle:
                waiting.register(s, selectors.EVENT_READ)
            while closed < len(idle) and time.monotonic() < deadline:
                for key, _ in waiting.select(timeout=1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(100)
                    except OSError:
                        data = b""
                    if not data:
                        waiting.unregister(sock)
                        closed += 1
        assert closed == 5000, f"{5000 - closed} idle clients still open"
    finally:
        for s in idle:
            s.close()
    wait_until(
        lambda: read_log(cluster.tmp / "lb.log").count("termination=first_byte_timeout") == 5000,
        what="5000 first_byte_timeout access lines",
    )


def test_misbehaving_peers_end_with_the_right_reason(cluster: Cluster) -> None:
    scripted = ScriptedBackend()
    echo = cluster.backend("echo")
    bad_port, echo_port = free_port(), free_port()
    path = cluster.config(
        service("bad", bad_port, [scripted.port], "[services.health_check]\nenabled = false")
        + service("echo", echo_port, [echo])
    )
    cluster.balancer("--config", str(path))
    log = cluster.tmp / "lb.log"
    results: dict[str, tuple[str, str]] = {}

    def transfer() -> None:
        results["echo"] = echo_transfer(echo_port, 16 * MIB, 7)

    parallel = threading.Thread(target=transfer)
    parallel.start()
    try:
        with socket.create_connection(("127.0.0.1", bad_port), timeout=30) as s:
            s.sendall(b"R")
            got = 0
            try:
                while chunk := s.recv(65536):
                    got += len(chunk)
            except ConnectionResetError:
                pass
            assert got <= 10000
        wait_for_log(log, r"service=bad .*bytes_in=1 .*termination=backend_reset")

        with socket.create_connection(("127.0.0.1", bad_port), timeout=30) as s:
            s.sendall(b"H")
            assert s.recv(100) == b"early"
            assert s.recv(100) == b""  # the backend's half-close, forwarded
            s.sendall(b"more after the backend's EOF")  # our direction still flows
            s.shutdown(socket.SHUT_WR)
        wait_for_log(log, r"service=bad .*bytes_in=29 bytes_out=5 .*termination=backend_closed")

        with socket.create_connection(("127.0.0.1", bad_port), timeout=60) as s:
            s.sendall(b"G")
            got = 0
            while chunk := s.recv(1 << 20):
                got += len(chunk)
            assert got == 1 << 30
        wait_for_log(log, rf"service=bad .*bytes_out={1 << 30} .*termination=backend_closed")

        s = socket.create_connection(("127.0.0.1", bad_port), timeout=30)
        s.sendall(b"W")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # the client vanishes with a reset
        wait_for_log(log, r"service=bad .*termination=client_reset")
    finally:
        parallel.join(timeout=120)
        scripted.close()
    sent_sha, echoed_sha = results["echo"]
    assert sent_sha == echoed_sha


def test_timeout_ends_a_connection_whose_client_stopped_reading(cluster: Cluster) -> None:
    # The backend sends 1 GB to a client that never reads: once the buffers fill, nothing
    # moves either way, and the idle timeout must end the connection, unsent bytes and all.
    # The server timeout is shorter, but the backend is not at fault: the balancer stopped
    # reading it because the client takes nothing, so that timeout does not run meanwhile.
    scripted = ScriptedBackend()
    port = free_port()
    extra = (
        "[services.health_check]\nenabled = false\n"
        '[services.timeouts]\nidle = "2s"\nserver = "500ms"'
    )
    cluster.balancer(
        "--config", str(cluster.config(service("stuck", port, [scripted.port], extra)))
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"G")
            wait_for_log(cluster.tmp / "lb.log", r"service=stuck .*termination=idle_timeout")
            ended = False
            deadline = time.monotonic() + 30
            with selectors.DefaultSelector() as readable:  # read what was in flight, to the end
                readable.register(s, selectors.EVENT_READ)
                while not ended and time.monotonic() < deadline:
                    if readable.select(timeout=1.0):
                        try:
                            ended = s.recv(1 << 20) == b""
                        except ConnectionResetError:
                            ended = True
            assert ended, "the client's connection is still open"
    finally:
        scripted.close()


def test_reset_after_a_half_close_ends_the_connection_at_once(cluster: Cluster) -> None:
    # The client sends its request and its EOF, then resets while the backend still works on
    # it: past the EOF there is nothing left to read from the client, so the balancer learns
    # of the reset at once and closes the backend connection, rather than when it answers.
    scripted = ScriptedBackend()
    port = free_port()
    extra = '[services.health_check]\nenabled = false\n[services.timeouts]\nidle = "60s"'
    cluster.balancer("--config", str(cluster.config(service("half", port, [scripted.port], extra))))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"S")
            s.shutdown(socket.SHUT_WR)
            assert scripted.eof_seen.wait(10), "the client's EOF did not reach the backend"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_for_log(cluster.tmp / "lb.log", r"service=half .*termination=client_reset", timeout=20)
    finally:
        scripted.close()


def test_backend_that_closes_then_resets_counts_one_failure(cluster: Cluster) -> None:
    # It takes the request and closes without an answer; the client's next bytes meet a
    # reset. One connection, one failure: with max_fails = 2, the backend stays in.
    scripted = ScriptedBackend()
    port, admin = free_port(), free_port()
    extra = "max_fails = 2\n[services.health_check]\nenabled = false"
    cluster.balancer(
        "--config", str(cluster.config(service("once", port, [scripted.port], extra), admin=admin))
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"C")
            assert s.recv(100) == b""  # (its close, passed on)
            s.sendall(b"more")  # (to a socket the backend has closed: it resets)
            wait_for_log(cluster.tmp / "lb.log", r"service=once .*termination=backend_reset")
        (backend,) = call(admin, "GET", "/api/backends?service=once")[1]
        assert backend["failures"] == 1 and backend["health"] == "up", backend
    finally:
        scripted.close()


def slow_reader_socket() -> socket.socket:
    s = socket.socket()
    for option in SLOW_READER:
        s.setsockopt(*option)
    return s


def slow_reader_listener() -> socket.socket:
    """A listener whose connections are slow readers (they inherit its options)."""
    listener = slow_reader_socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


def room_toward_a_slow_reader() -> int:
    """What a socket takes toward a slow reader that does not read, measured here."""
    with socket.create_server(("127.0.0.1", 0)) as listener, slow_reader_socket() as reader:
        reader.connect(listener.getsockname())
        sender, _ = listener.accept()
        with sender:
            sender.setblocking(False)
            taken, idle = 0, 0
            with selectors.DefaultSelector() as selector:
                selector.register(sender, selectors.EVENT_WRITE)
                while idle < 5:  # (the kernel took nothing in 5 tries, 20 ms apart at most)
                    try:
                        taken += sender.send(b"x" * 65536)
                        idle = 0
                    except BlockingIOError:
                        idle += 1
                        selector.select(0.02)  # (it may take a little without saying so)
            return taken


def unchecked_balancer(cluster: Cluster, name: str, backend: int) -> tuple[Process, int]:
    """A balancer with one service `name` and one backend, without health checks."""
    port = free_port()
    no_checks = "[services.health_check]\nenabled = false"
    path = cluster.config(service(name, port, [backend], no_checks))
    proc, _ = cluster.balancer("--config", str(path))
    return proc, port


def assert_all_arrived(received: bytes | bytearray, sent: bytes) -> None:
    assert len(received) == len(sent), f"{len(sent) - len(received)} of {len(sent)} bytes lost"
    assert received == sent


def test_backend_reset_after_its_answer_loses_none_of_it(cluster: Cluster) -> None:
    # The backend sends its whole answer (acknowledged by the balancer's kernel), then resets.
    # The client is slow, so part of the answer still waits in the balancer: it goes to the
    # client, and then a close (as from HAProxy and nginx), not a cut-off answer.
    size = room_toward_a_slow_reader() + 32 * 1024
    answer = bytes(range(256)) * (size // 256)
    listener = socket.create_server(("127.0.0.1", 0))
    asked, answer_now, reset = threading.Event(), threading.Event(), threading.Event()

    def backend() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(100)
            asked.set()
            answer_now.wait(10)
            conn.sendall(answer)
            wait_until(lambda: unsent(conn) == 0, what="the answer acknowledged")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.set()

    threading.Thread(target=backend, daemon=True).start()
    proc, port = unchecked_balancer(cluster, "slow", listener.getsockname()[1])
    try:
        with slow_reader_socket() as client:
            client.settimeout(10)
            client.connect(("127.0.0.1", port))
            client.sendall(b"GET")
            assert asked.wait(10), "the request never reached the backend"
            both = descriptors(proc.proc.pid, "socket")  # (the client's and the backend's)
            answer_now.set()
            assert reset.wait(10), "the backend never sent its answer"
            # The balancer may have paused reading the backend (more than 64 KiB waiting for
            # the client) and then takes the reset only once the client has read some: read a
            # little at a time until it has closed its backend socket, which it does when it
            # takes the reset. Then some of the answer must still be on its way.
            received = bytearray()
            deadline = time.monotonic() + 15
            while descriptors(proc.proc.pid, "socket") >= both:
                assert time.monotonic() < deadline, "the balancer never took the reset"
                received += client.recv(1024)
                time.sleep(0.005)
            assert len(received) < len(answer), "all of it had arrived before the reset was taken"
            while chunk := client.recv(65536):
                received += chunk
        assert_all_arrived(received, answer)
        wait_for_log(cluster.tmp / "lb.log", r"service=slow .*termination=backend_reset")
    finally:
        listener.close()


def test_client_reset_after_its_upload_loses_none_of_it(cluster: Cluster) -> None:
    # The same the other way: the client's upload is all acknowledged, then it resets; the
    # backend is slow, and gets the whole upload, then a close.
    size = room_toward_a_slow_reader() + 32 * 1024
    upload = bytes(range(256)) * (size // 256)
    listener = slow_reader_listener()
    connected, read_now = threading.Event(), threading.Event()
    received = bytearray()

    def backend() -> None:
        conn, _ = listener.accept()
        with conn:
            connected.set()
            read_now.wait(10)
            conn.settimeout(10)
            while chunk := conn.recv(65536):
                received.extend(chunk)

    thread = threading.Thread(target=backend, daemon=True)
    thread.start()
    proc, port = unchecked_balancer(cluster, "upload", listener.getsockname()[1])
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client:
            assert connected.wait(10), "the balancer never connected to the backend"
            both = descriptors(proc.proc.pid, "socket")
            client.sendall(upload)
            wait_until(lambda: unsent(client) == 0, what="the upload acknowledged")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(
            lambda: descriptors(proc.proc.pid, "socket") < both, what="the balancer to take it"
        )
        read_now.set()
        thread.join(15)
        assert not thread.is_alive(), "the backend never saw the end of the upload"
        assert_all_arrived(received, upload)
        wait_for_log(cluster.tmp / "lb.log", r"service=upload .*termination=client_reset")
    finally:
        listener.close()


def test_half_closed_request_is_retried_and_reasons_say_what_happened(cluster: Cluster) -> None:
    scripted = ScriptedBackend()
    echo = cluster.backend("echo")
    retried, silent, refused, quiet = free_port(), free_port(), free_port(), free_port()
    no_checks = "[services.health_check]\nenabled = false"
    dead = free_port()  # nothing listens there
    path = cluster.config(
        service("retried", retried, [scripted.port, echo], f"retry_replay = true\n{no_checks}")
        + service(
            "silent", silent, [scripted.port], f'{no_checks}\n[services.timeouts]\nserver = "1s"'
        )
        + service(
            "refused",
            refused,
            [dead],
            f'retries = 0\nno_backend_message = "{"x" * 4_000_000}"\n{no_checks}',
        )
        + service(
            "quiet", quiet, [echo], f'{no_checks}\n[services.timeouts]\nclient = "1s"\nidle = "60s"'
        )
    )
    cluster.balancer("--config", str(path))
    log = cluster.tmp / "lb.log"
    try:
        # A request followed by the client's half-close, to a backend that resets without
        # answering: it is sent again to the next backend (round robin makes one of the two
        # clients meet the failing backend first).
        for _ in range(2):
            assert exchange(retried, b"X marks the spot", half_close=True) == b"X marks the spot"
        # (It reset after the client's bytes: from one client address, that does not count.)
        wait_for_log(
            log,
            r"service=retried .*bytes_out=16 retries=1 failures=one_client "
            r"termination=client_closed",
        )

        # The client half-closed first, then the backend said nothing for `server`: the reason
        # is the timeout, not the client's close.
        assert exchange(silent, b"S", half_close=True) == b""
        wait_for_log(log, r"service=silent .*termination=server_timeout")

        # A refused client that does not read its (large) message is closed after the
        # lingering close's 2 s, not kept while it stays connected.
        with socket.socket() as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.connect(("127.0.0.1", refused))
            wait_for_log(log, r"service=refused .*termination=connect_failed", timeout=20)

        # A client that says nothing is ended by the client timeout, not the idle one.
        with socket.create_connection(("127.0.0.1", quiet), timeout=10):
            wait_for_log(log, r"service=quiet .*termination=client_timeout", timeout=20)
    finally:
        scripted.close()


def test_traffic_both_ways_keeps_a_connection_past_its_timeouts(cluster: Cluster) -> None:
    # Client, server and idle timeouts of 300 ms; the client and the echo backend talk for
    # four times that long, then fall silent. Every chunk either way counts as activity.
    echo = cluster.backend("echo")
    port = free_port()
    extra = '[services.timeouts]\nidle = "300ms"\nclient = "300ms"\nserver = "300ms"'
    cluster.balancer("--config", str(cluster.config(service("talk", port, [echo], extra))))
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        talking_until = time.monotonic() + 1.2
        while time.monotonic() < talking_until:
            message = b"%d" % sent
            s.sendall(message)
            echoed = b""
            while len(echoed) < len(message):
                chunk = s.recv(100)
                assert chunk, f"closed while talking, {sent} bytes in"
                echoed += chunk
            assert echoed == message
            sent += len(message)
        assert s.recv(100) == b""  # silent now: ended by a timeout
    line = wait_for_log(
        cluster.tmp / "lb.log", rf"service=talk .*bytes_in={sent} bytes_out={sent} .*"
    ).group(0)
    assert re.search(r"termination=(idle|client|server)_timeout", line), line
    duration = re.search(r"duration_ms=([\d.]+)", line)
    assert duration is not None and float(duration.group(1)) >= 1200


def test_backend_closing_idle_clients_is_not_failing(cluster: Cluster) -> None:
    # The backend closes connections on which nothing came for 0.5 s (an idle timeout, as
    # servers have): past the connect timeout, that is the client's silence, not a failure.
    scripted = ScriptedBackend(idle_close=0.5)
    port, admin = free_port(), free_port()
    path = cluster.config(
        service(
            "idle",
            port,
            [scripted.port],
            '[services.timeouts]\nconnect = "200ms"\n[services.health_check]\nenabled = false',
        ),
        admin=admin,
    )
    cluster.balancer("--config", str(path))
    log = cluster.tmp / "lb.log"
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        for sock in idle:
            assert sock.recv(10) == b""  # the backend's close, passed on
            sock.close()
        closed = r"service=idle .*bytes_in=0 bytes_out=0 .*termination=backend_closed"
        wait_until(lambda: len(re.findall(closed, read_log(log))) == 4, what="4 access lines")
        [backend] = call(admin, "GET", "/api/backends")[1]
        assert (backend["health"], backend["failures"]) == ("up", 0), backend

        # A request that the backend closes unanswered is a failure, counted as such.
        for _ in range(2):
            assert exchange(port, b"C") == b""
        wait_until(
            lambda: call(admin, "GET", "/api/backends")[1][0]["failures"] == 2,
            what="two failures counted",
        )
        assert " event down " not in read_log(log)
    finally:
        scripted.close()


def test_acl_and_per_client_limits(cluster: Cluster) -> None:
    backend = cluster.backend("echo")
    denied, limited, rated = free_port(), free_port(), free_port()
    admin = free_port()
    path = cluster.config(
        service("denied", denied, [backend], 'allow = ["10.0.0.0/8"]')
        + service("limited", limited, [backend], "client_max_connections = 2")
        + service("rated", rated, [backend], "client_rate = 5\nclient_burst = 5"),
        admin=admin,
    )
    cluster.balancer("--config", str(path))
    log = cluster.tmp / "lb.log"
    for name in ("denied", "limited", "rated"):  # (admission is the compiled data plane's)
        wait_for_log(log, rf"service {name} listening .*served by the compiled data plane")

    assert attempt(denied, b"x") == b""
    wait_for_log(
        log, r"event refused service=denied .*denied 127\.0\.0\.1:\d+: address not allowed"
    )

    held = [socket.create_connection(("127.0.0.1", limited), timeout=10) for _ in range(2)]
    try:
        for s in held:
            s.sendall(b"a")
            assert s.recv(10) == b"a"
        assert attempt(limited, b"x") == b""  # the third is refused
        wait_for_log(log, r"refused service=limited .*client_limit .*2 connections already open")
    finally:
        for s in held:
            s.close()
    wait_until(lambda: attempt(limited, b"y") == b"y", what="room again")

    answers = [attempt(rated, b"r") for _ in range(10)]
    assert answers.count(b"r") in (5, 6)  # the bucket may refill one token meanwhile
    wait_for_log(log, r"refused service=rated .*rate_limited .*over 5 connections/s")

    _, text = call(admin, "GET", "/metrics")
    refused = dict(
        re.findall(r'balancer_refused_connections_total\{reason="(\w+)",service="(\w+)"\}', text)
    )
    assert refused == {"denied": "denied", "client_limit": "limited", "rate_limited": "rated"}
    stats = call(admin, "GET", "/api/services")[1]
    assert {s["name"]: s["refused"] for s in stats}["rated"]["rate_limited"] >= 4


def test_max_connections_and_backend_queue(cluster: Cluster) -> None:
    echo = cluster.backend("echo")
    capped, queued = free_port(), free_port()
    path = cluster.config(
        service("capped", capped, [echo], "max_connections = 2")
        + service(
            "queued",
            queued,
            f'[{{ address = "127.0.0.1:{echo}", max_connections = 1 }}]',
            'queue_timeout = "1s"',
        )
    )
    cluster.balancer("--config", str(path))
    log = cluster.tmp / "lb.log"
    for name in ("capped", "queued"):  # (max_connections and the queue are the engine's)
        wait_for_log(log, rf"service {name} listening .*served by the compiled data plane")

    first = [socket.create_connection(("127.0.0.1", capped), timeout=10) for _ in range(2)]
    for s in first:
        s.sendall(b"1")
        assert s.recv(10) == b"1"
    third = socket.create_connection(("127.0.0.1", capped), timeout=10)  # in the backlog
    third.sendall(b"3")
    wait_for_log(log, r"accept_paused service=capped .*max_connections 2 reached")
    third.settimeout(0.3)
    try:
        third.recv(10)
        raise AssertionError("the third client was served past max_connections")
    except TimeoutError:
        pass
    first[0].close()
    third.settimeout(10)
    assert third.recv(10) == b"3"  # served once a slot freed
    for s in (first[1], third):
        s.close()

    holder = socket.create_connection(("127.0.0.1", queued), timeout=10)
    holder.sendall(b"h")
    assert holder.recv(10) == b"h"
    began = time.monotonic()
    assert attempt(queued, b"q") == b""  # waited in the queue, timed out
    assert time.monotonic() - began >= 0.9
    wait_for_log(log, r"service=queued .*termination=queue_timeout")
    wait_for_log(log, r"event refused service=queued .*queue_timeout .*within queue_timeout 1s")
    # A queued client that resets leaves the queue at once (a reset is seen while waiting).
    leaving = socket.create_connection(("127.0.0.1", queued), timeout=10)
    leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    leaving.close()
    wait_for_log(log, r"service=queued .*termination=client_aborted")
    waiting = socket.create_connection(("127.0.0.1", queued), timeout=10)
    waiting.sendall(b"w")
    holder.close()  # frees the backend's one slot: the queued client goes through
    assert waiting.recv(10) == b"w"
    waiting.close()


def test_full_queue_refuses_at_once_and_host_names_resolve(cluster: Cluster) -> None:
    echo = cluster.backend("echo")
    queued = free_port()
    path = cluster.config(
        service(
            "queued",
            queued,
            f'[{{ address = "localhost:{echo}", max_connections = 1 }}]',
            'queue_size = 1\nqueue_timeout = "20s"',
        )
    )
    cluster.balancer("--config", str(path))
    log = cluster.tmp / "lb.log"
    holder = socket.create_connection(("127.0.0.1", queued), timeout=10)
    holder.sendall(b"h")
    assert holder.recv(10) == b"h"  # through the host name
    waiter = socket.create_connection(("127.0.0.1", queued), timeout=10)
    waiter.sendall(b"w")
    # The queue holds one (the waiter, accepted first): the next client is refused at once,
    # and the refusal says why.
    began = time.monotonic()
    assert attempt(queued, b"x") == b""
    assert time.monotonic() - began < 10
    wait_for_log(log, r"event refused service=queued .*queue_full .*queue full")
    holder.close()
    assert waiter.recv(10) == b"w"  # the queued client has the freed slot
    waiter.close()
    wait_for_log(log, r"service=queued client=\S+ backend=localhost:\d+ .*termination=client")


def test_queue_is_first_come_first_served_and_woken_by_new_room(cluster: Cluster) -> None:
    echo = cluster.backend("echo")
    spare = cluster.backend("echo")
    port, admin = free_port(), free_port()
    path = cluster.config(
        service(
            "fifo",
            port,
            f'[{{ address = "127.0.0.1:{echo}", max_connections = 1 }}, '
            f'{{ address = "127.0.0.1:{spare}" }}]',
            'queue_timeout = "30s"\n[services.health_check]\nenabled = false',
        ),
        admin=admin,
    )
    cluster.balancer("--config", str(path))
    spare_key = f"127.0.0.1:{spare}"
    status, _ = call(admin, "PATCH", f"/api/backends/fifo/{spare_key}", {"state": "maintenance"})
    assert status == 200

    def queued(count: int) -> None:
        def check() -> bool:
            [fifo] = call(admin, "GET", "/api/services")[1]
            return bool(fifo["queued"] == count)

        wait_until(check, what=f"{count} clients queued")
        metric = rf"balancer_service_queued_connections\{{service=\"fifo\"\}} {count}\.0"
        assert re.search(metric, call(admin, "GET", "/metrics")[1])

    def client(index: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"%d." % index)
        return sock

    # One slot, a queue of three, and each client that is served closes and a new one
    # arrives at once: the new one comes as the slot frees, and must queue behind the others.
    # Clients are served strictly in the order they connected.
    total, order = 100, list[int]()
    with selectors.DefaultSelector() as answered:
        for index in range(4):
            answered.register(client(index), selectors.EVENT_READ, index)
            if index == 0:
                queued(0)
            else:
                queued(index)
        arrived = 4
        deadline = time.monotonic() + 60
        while len(order) < total and time.monotonic() < deadline:
            for key, _ in answered.select(timeout=1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                assert sock.recv(10) == b"%d." % key.data
                answered.unregister(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # (a reset: the balancer frees the slot without waiting on anyone)
                order.append(key.data)
                if arrived < total:
                    answered.register(client(arrived), selectors.EVENT_READ, arrived)
                    arrived += 1
        for key in list(answered.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
    assert order == list(range(total)), f"served out of turn: {order}"
    queued(0)

    # Room that a change makes (here a backend without a limit entering rotation) goes to the
    # queue at once, without waiting for the capped backend's slot to free.
    holder, first, second = client(0), client(1), client(2)
    assert holder.recv(10) == b"0."
    queued(2)
    status, _ = call(admin, "PATCH", f"/api/backends/fifo/{spare_key}", {"state": "enabled"})
    assert status == 200
    assert first.recv(10) == b"1."
    assert second.recv(10) == b"2."
    queued(0)
    for sock in (holder, first, second):
        sock.close()


def test_backend_removed_busy_and_added_back_keeps_its_count(cluster: Cluster) -> None:
    echo, hello = cluster.backend("echo"), cluster.backend()
    port, admin = free_port(), free_port()
    capped = f'{{ address = "127.0.0.1:{echo}", max_connections = 1 }}'

    def write(backends: str) -> Path:
        web = service("web", port, f"[{backends}]", 'queue_timeout = "30s"')
        return cluster.config(web, admin=admin)

    proc, _ = cluster.balancer("--config", str(write(capped)))
    log = cluster.tmp / "lb.log"
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        held.sendall(b"h")
        assert held.recv(10) == b"h"
        # A reload removes the busy backend, the next one brings it back: the connection still
        # open counts against its max_connections, so a new client waits for it.
        write(f'{{ address = "127.0.0.1:{hello}" }}')
        proc.signal(signal.SIGHUP)
        wait_for_log(log, rf"127\.0\.0\.1:{echo} removed: reload: 1 connections still open")
        write(capped)
        proc.signal(signal.SIGHUP)
        wait_until(lambda: len(re.findall(r"event reload ", read_log(log))) == 2, what="reloads")
        waiting = socket.create_connection(("127.0.0.1", port), timeout=10)
        waiting.sendall(b"w")

        def queued() -> bool:
            [web] = call(admin, "GET", "/api/services")[1]
            return bool(web["queued"] == 1)

        wait_until(queued, what="the new client queued behind the open connection")
        [backend] = call(admin, "GET", "/api/backends")[1]
        assert backend["active"] == 1, backend
        held.close()
        assert waiting.recv(10) == b"w"
        waiting.close()
    finally:
        held.close()


def test_proxy_protocol_through_two_balancers(cluster: Cluster) -> None:
    backend_port = free_port()
    backend = Process(
        balancer_cmd("backend", str(backend_port), "--mode", "http", "--accept-proxy")
    )
    cluster.processes.append(backend)
    backend.expect("listening")
    inner, outer = free_port(), free_port()
    path = cluster.config(
        service("inner", inner, [backend_port], 'accept_proxy = true\nsend_proxy = "v2"')
        + service("outer", outer, [inner], 'send_proxy = "v1"')
    )
    cluster.balancer("--config", str(path))
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", outer), timeout=10) as s:
        client = f"127.0.0.1:{s.getsockname()[1]}"
        s.sendall(request)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert f"X-Client: {client}".encode() in answer.replace(b"x-client", b"X-Client")
    backend.expect(rf"connection from {re.escape(client)} \(PROXY v2")
    # Both count the client's bytes and the answer's; the header outer sent is not the client's.
    for name in ("outer", "inner"):
        wait_for_log(
            cluster.tmp / "lb.log",
            rf"service={name} client={re.escape(client)} .*"
            rf"bytes_in={len(request)} bytes_out={len(answer)} ",
        )

    # A malformed header closes that connection only, with a logged reason.
    with socket.create_connection(("127.0.0.1", inner), timeout=10) as s:
        s.sendall(b"PROXY TCP4 1.2.3.4 nonsense\r\n")
        assert s.recv(10) == b""
    wait_for_log(
        cluster.tmp / "lb.log",
        r"refused service=inner .*bad_proxy_header .*v1 header needs 6 fields",
    )
    with socket.create_connection(("127.0.0.1", outer), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"200 OK" in s.recv(4096)
