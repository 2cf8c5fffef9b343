"""Several worker processes: a killed worker loses only its own connections and is replaced."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    Cluster,
    Process,
    balancer_cmd,
    exchange,
    free_port,
    read_log,
    served_by,
    wait_for_log,
    wait_until,
)
from support.clients import call
from support.config import service

from balancer.tools.procfs import cpu_seconds


def alive(s: socket.socket) -> bool:
    try:
        s.sendall(b"ping")
        return s.recv(10) == b"ping"
    except OSError:
        return False


def open_to(admin: int, key: str) -> int:
    """Open connections to `key`, the one backend of service s, as the admin API counts them."""
    [backend] = call(admin, "GET", "/api/backends?service=s")[1]
    assert backend["address"] == key
    return int(backend["active"])


def connect_echoed(
    port: int, count: int, into: list[socket.socket], refused_ok: bool = False
) -> None:
    """Connect until `into` holds `count` connections that an echo backend answers (one that
    a worker sent elsewhere, before it applied a reload, is closed), for at most 15 s. With
    `refused_ok`, a refused connect is tried again: the workers listen again once they have
    applied a reload."""
    deadline = time.monotonic() + 15
    while len(into) < count and time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if not refused_ok:
                raise
            continue
        if alive(s):
            into.append(s)
        else:
            s.close()


def old_ones_leave_the_count(admin: int, key: str, old: list[socket.socket]) -> None:
    """8 old and 8 new connections are counted on `key`; once the old ones close, 8."""
    wait_until(lambda: open_to(admin, key) == 16, what="16 open connections to the backend")
    for s in old:
        s.close()
    wait_until(lambda: open_to(admin, key) == 8, what="8 open connections once the old ones closed")


def worker_pids(log: Path) -> dict[int, int]:
    """The pid each worker last started with, by index."""
    return {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"worker (\d) started, pid (\d+)", read_log(log))
    }


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (from /proc, so without connecting)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def bindable(port: int) -> bool:
    """Whether a plain socket (no SO_REUSEADDR or SO_REUSEPORT) can bind the port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE, exc
            return False
        return True


def test_killed_worker_is_replaced_and_others_keep_their_connections(cluster: Cluster) -> None:
    echo = cluster.backend("echo")
    hello = cluster.backend()
    admin = free_port()
    _, port = cluster.balancer(
        "--workers", "2", f"--backend=127.0.0.1:{echo}", f"--backend=127.0.0.1:{hello},weight=1",
        "--admin", f"127.0.0.1:{admin}",
    )  # fmt: skip
    log = cluster.tmp / "lb.log"
    pids = {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"worker (\d) started, pid (\d+)", read_log(log))
    }
    assert sorted(pids) == [0, 1]
    held: list[socket.socket] = []
    try:
        opened = 0
        while len(held) < 20:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            opened += 1
            if alive(s):
                held.append(s)  # relayed to the echo backend
            else:
                s.close()

        # The API sums the workers: 20 open, and every connection in the total.
        def summed() -> bool:
            [service] = call(admin, "GET", "/api/services")[1]
            return bool(service["active"] == 20 and service["total"] == opened)

        wait_until(summed, what=f"20 open connections and {opened} in all")
        os.kill(pids[0], signal.SIGKILL)
        wait_for_log(log, r"event worker_died .*worker 0 .*signal 9; restarting")
        wait_for_log(log, rf"event worker .*worker 0 started, pid (?!{pids[0]}\b)\d+")
        survivors = [s for s in held if alive(s)]
        # The kernel spread the connections over both workers; only worker 0's are gone.
        assert 0 < len(survivors) < len(held)
    finally:
        for s in held:
            s.close()
    # New connections are served as before: round robin over both backends.
    answers = [exchange(port, half_close=True) for _ in range(10)]
    assert answers.count(b"hi") == 5
    assert {served_by(a) for a in answers if a != b"hi"} == {hello}


def test_max_connections_counts_every_worker(cluster: Cluster) -> None:
    # A backend's max_connections holds over both workers with round robin (which does not
    # otherwise look at load), and a slot that one worker frees goes to a client queued in the
    # other. The kernel spreads the clients over the workers: with eight waiters, some are in
    # the holder's worker and some (but for one chance in 256) in the other.
    echo = cluster.backend("echo")
    port = free_port()
    capped = f'[{{ address = "127.0.0.1:{echo}", max_connections = 1 }}]'
    path = cluster.config(service("capped", port, capped, 'queue_timeout = "60s"', checks=False))
    cluster.balancer("--config", str(path), "--workers", "2")
    holder = socket.create_connection(("127.0.0.1", port), timeout=10)
    holder.sendall(b"h")
    assert holder.recv(10) == b"h"
    waiters = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    served = [holder]
    try:
        with selectors.DefaultSelector() as answered:
            for i, w in enumerate(waiters):
                w.sendall(b"%d" % i)
                answered.register(w, selectors.EVENT_READ, i)
            assert answered.select(timeout=0.5) == [], "served past max_connections"
            for _ in waiters:
                served[-1].close()  # frees the one slot, in whichever worker held it
                ready = answered.select(timeout=15)
                assert len(ready) == 1, f"{len(ready)} clients served for one free slot"
                key, _ = ready[0]
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                assert sock.recv(10) == b"%d" % key.data
                answered.unregister(sock)
                served.append(sock)
                if len(served) <= len(waiters):
                    assert answered.select(timeout=0.3) == [], "served past max_connections"
    finally:
        for s in [*waiters, holder]:
            s.close()


def test_sighup_to_the_process_group_reloads_and_kills_no_worker(cluster: Cluster) -> None:
    # A terminal hanging up, or `kill -HUP -PGID`, signals the workers too: they ignore it.
    echo = cluster.backend("echo")
    proc, port = cluster.balancer("--workers", "2", f"--backend=127.0.0.1:{echo}")
    log = cluster.tmp / "lb.log"
    pids = worker_pids(log)
    assert sorted(pids) == [0, 1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    try:
        assert all(alive(s) for s in held)
        os.killpg(proc.proc.pid, signal.SIGHUP)  # (the balancer leads its own session)
        # The supervisor took it as a reload (from flags there is nothing to reload).
        wait_for_log(log, r"event reload_failed .*SIGHUP: nothing to reload")
        assert all(alive(s) for s in held), "a worker died of SIGHUP"
        assert all(running(pid) for pid in pids.values())
    finally:
        for s in held:
            s.close()
    assert exchange(port, b"still", half_close=True) == b"still"
    proc.stop()
    assert proc.proc.returncode == 0
    assert "worker_died" not in read_log(log)
    # (Nor did it kill the supervisor's resource tracker, which would be missed at exit.)
    assert "resource_tracker" not in proc.text and "Traceback" not in proc.text


def test_worker_drains_with_the_grace_of_the_reloaded_config(cluster: Cluster) -> None:
    hello = cluster.backend()
    first, second = free_port(), free_port()
    path = cluster.config(service("a", first, [hello], checks=False), top='grace = "1s"')
    proc, _ = cluster.balancer("--config", str(path), "--workers", "2")
    log = cluster.tmp / "lb.log"
    pid = worker_pids(log)[0]
    # The reload raises the grace and adds a service; once worker 0 listens on the new one, it
    # has applied the new config (the grace with it: no await comes between).
    path.write_text(
        path.read_text().replace('grace = "1s"', 'grace = "45s"')
        + service("b", second, [hello], checks=False)
    )
    proc.signal(signal.SIGHUP)
    wait_until(lambda: second in listening_ports(pid), what="worker 0 listening on the new port")
    os.kill(pid, signal.SIGTERM)
    match = wait_for_log(
        log, r"event stopping \| SIGTERM: stopping, \d+ connections open, grace (\S+)"
    )
    assert match.group(1) == "45s"


def test_second_balancer_on_the_same_port_exits_with_status_1(cluster: Cluster) -> None:
    hello = cluster.backend()
    port = free_port()
    cluster.balancer(
        "--workers", "2", "--listen", f"127.0.0.1:{port}", f"--backend=127.0.0.1:{hello}"
    )
    # Both workers joined the supervisor's reservation (each reports ready once it listens).
    assert sorted(worker_pids(cluster.tmp / "lb.log")) == [0, 1]
    second = Process(
        balancer_cmd(
            "run", "--workers", "2", "--listen", f"127.0.0.1:{port}",
            f"--backend=127.0.0.1:{hello}", "--log-file", str(cluster.tmp / "second.log"),
        )
    )  # fmt: skip
    cluster.processes.append(second)
    assert second.wait() == 1, second.text
    assert "address already in use" in second.text
    assert "Traceback" not in second.text and "leaked" not in second.text
    assert "worker" not in read_log(cluster.tmp / "second.log")
    # The first one serves every connection still.
    assert [served_by(exchange(port)) for _ in range(6)] == [hello] * 6


def test_reload_gives_back_a_removed_services_port(cluster: Cluster) -> None:
    hello = cluster.backend()
    kept, dropped = free_port(), free_port()
    path = cluster.config(
        service("a", kept, [hello], checks=False) + service("b", dropped, [hello], checks=False)
    )
    proc, _ = cluster.balancer("--config", str(path), "--workers", "2")
    assert not bindable(dropped)
    # Renamed on the same port (our own workers listen there) and the other service removed.
    path.write_text(
        path.read_text().split("[[services]]")[0] + service("c", kept, [hello], checks=False)
    )
    proc.signal(signal.SIGHUP)
    wait_for_log(cluster.tmp / "lb.log", r"event reload .*SIGHUP")
    wait_until(lambda: bindable(dropped), what=f"port {dropped} free after the reload")
    assert served_by(exchange(kept)) == hello
    # Each removal is one event, the supervisor's, however many workers applied it.
    text = read_log(cluster.tmp / "lb.log")
    for name in ("a", "b"):
        assert text.count(f"service {name} removed by reload") == 1, text


def test_replacement_that_fails_to_start_is_retried_and_logged(cluster: Cluster) -> None:
    hello = cluster.backend()
    proc, port = cluster.balancer("--workers", "2", f"--backend=127.0.0.1:{hello}")
    log = cluster.tmp / "lb.log"
    pid = worker_pids(log)[0]
    # The running processes keep writing to the log file they opened; a new worker cannot
    # open a log file where there is now a directory, and dies before it is ready.
    moved = cluster.tmp / "lb.log.1"
    log.rename(moved)
    log.mkdir()
    os.kill(pid, signal.SIGKILL)
    wait_for_log(
        moved, r"event worker_failed .*worker 0 \(pid \d+\) failed to start: exited with status 1; "
        r"retrying in \d+s"
    )  # fmt: skip
    log.rmdir()
    wait_for_log(moved, rf"event worker .*worker 0 started, pid (?!{pid}\b)\d+")
    assert [served_by(exchange(port)) for _ in range(4)] == [hello] * 4
    proc.signal(signal.SIGINT)
    assert proc.wait() == 0, proc.text
    assert "IncompleteReadError" not in proc.text


def test_idle_supervisor_with_many_backends_stays_idle(cluster: Cluster) -> None:
    # Workers report their figures twice a second, changed or not; summing them again for
    # each of 1,024 backends every time took most of a CPU.
    port = free_port()
    path = cluster.config(service("many", port, range(40000, 41024), checks=False))
    proc, _ = cluster.balancer("--config", str(path), "--workers", "2")
    pid = proc.proc.pid
    wait_until(lambda: len(read_log(cluster.tmp / "lb.log").split("event start")) > 1)
    before = sum(cpu_seconds(pid))
    began = time.monotonic()
    time.sleep(3.0)  # a window to measure CPU use in, not a wait for an event
    used = sum(cpu_seconds(pid)) - before
    # (Before: about 0.8 s of CPU a second; after: 0.11-0.18 on an idle machine, and up to
    # 0.28 while another test run shared its two cores.)
    assert used < 0.4 * (time.monotonic() - began), f"{used:.2f}s of CPU while idle"


def listen_of(admin: int) -> dict[str, int]:
    """Each service's port, as the admin API shows it."""
    return {
        s["name"]: int(s["listen"].rsplit(":", 1)[1])
        for s in call(admin, "GET", "/api/services")[1]
    }


def replace_worker(log: Path, index: int) -> int:
    """Kill worker `index`, wait for its replacement to start; return the new pid."""
    pid = worker_pids(log)[index]
    os.kill(pid, signal.SIGKILL)
    match = wait_for_log(log, rf"event worker .*worker {index} started, pid (?!{pid}\b)(\d+)")
    return int(match.group(1))


def test_rejected_reload_in_worker_mode_changes_nothing(cluster: Cluster) -> None:
    # a moves to a free port, b to a port some other socket holds, and c is new: b's bind
    # fails, so the reload is rejected, and none of it may stay half applied.
    hello = cluster.backend()
    admin = free_port()
    old_a, old_b, new_a, new_c = free_port(), free_port(), free_port(), free_port()
    path = cluster.config(service("a", old_a, [hello], checks=False), admin=admin)
    path.write_text(path.read_text() + service("b", old_b, [hello], checks=False))
    cluster.balancer("--config", str(path), "--workers", "2")
    log = cluster.tmp / "lb.log"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        text = path.read_text()
        path.write_text(
            text.replace(f"127.0.0.1:{old_a}", f"127.0.0.1:{new_a}").replace(
                f"127.0.0.1:{old_b}", f"127.0.0.1:{busy_port}"
            )
            + service("c", new_c, [hello], checks=False)
        )
        status, body = call(admin, "POST", "/api/reload")
        assert status == 400, body
        assert "address already in use" in " ".join(body["errors"])
        assert listen_of(admin) == {"a": old_a, "b": old_b}
        # The reservations the reload made are given back; the old ones are kept.
        assert bindable(new_a), f"port {new_a} still reserved after a rejected reload"
        assert bindable(new_c), f"port {new_c} (new service c) leaked"
        assert not bindable(old_a) and not bindable(old_b)
        # A replacement worker listens where the running config says.
        pid = replace_worker(log, 0)
        wait_until(lambda: {old_a, old_b} <= listening_ports(pid), what="replacement listening")
        assert new_a not in listening_ports(pid)
        path.write_text(text)  # (as it was)
    # (No connection to old_a: the balancer's end in TIME_WAIT would keep the port taken.)
    # A reload that succeeds moves a, and only then gives its old port back.
    path.write_text(text.replace(f"127.0.0.1:{old_a}", f"127.0.0.1:{new_a}"))
    status, body = call(admin, "POST", "/api/reload")
    assert status == 200, body
    assert listen_of(admin) == {"a": new_a, "b": old_b}
    wait_until(lambda: bindable(old_a), what=f"port {old_a} given back")
    assert served_by(exchange(new_a)) == hello


def test_backend_removed_while_busy_and_added_back_counts_every_connection(
    cluster: Cluster,
) -> None:
    # The backend comes back while its old connections are still open: a worker must not
    # count the old and the new ones in the same shared cell from two objects.
    echo = cluster.backend("echo")
    other = cluster.backend()
    admin = free_port()
    port = free_port()
    path = cluster.config(service("s", port, [echo], checks=False), admin=admin)
    cluster.balancer("--config", str(path), "--workers", "2")
    text = path.read_text()
    key = f"127.0.0.1:{echo}"
    old = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    new: list[socket.socket] = []
    try:
        assert all(alive(s) for s in old)
        wait_until(lambda: open_to(admin, key) == 8, what="8 open connections")
        path.write_text(text.replace(key, f"127.0.0.1:{other}"))
        assert call(admin, "POST", "/api/reload")[0] == 200
        path.write_text(text)
        assert call(admin, "POST", "/api/reload")[0] == 200
        connect_echoed(port, 8, new)
        assert len(new) == 8, "the backend was not back in every worker"
        old_ones_leave_the_count(admin, key, old)
        assert all(alive(s) for s in new)
        status, body = call(admin, "DELETE", f"/api/backends/s/{key}")
        assert status == 202 and body["active"] == 8, body
    finally:
        for s in [*old, *new]:
            s.close()


def test_service_removed_while_busy_and_added_back_counts_every_connection(
    cluster: Cluster,
) -> None:
    # A reload removes the service (it drains, its 8 connections stay open) and the next one
    # adds it back: the new service's backend is another object in each worker, which must
    # not write its own count over the old one's in the shared cell.
    echo, other = cluster.backend("echo"), cluster.backend()
    admin, port, spare = free_port(), free_port(), free_port()
    text = service("s", port, [echo], checks=False)
    path = cluster.config(text + service("t", spare, [other], checks=False), admin=admin)
    cluster.balancer("--config", str(path), "--workers", "2")
    key = f"127.0.0.1:{echo}"
    old = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    new: list[socket.socket] = []
    try:
        assert all(alive(s) for s in old)
        wait_until(lambda: open_to(admin, key) == 8, what="8 open connections")
        cluster.config(service("t", spare, [other], checks=False), admin=admin)
        assert call(admin, "POST", "/api/reload")[0] == 200
        cluster.config(text + service("t", spare, [other], checks=False), admin=admin)
        # (refused, changing nothing, while a worker has not yet closed the old listener)
        wait_until(
            lambda: call(admin, "POST", "/api/reload")[0] == 200, what="the service added back"
        )
        connect_echoed(port, 8, new, refused_ok=True)
        assert len(new) == 8, "the service was not back in every worker"
        old_ones_leave_the_count(admin, key, old)
    finally:
        for s in [*old, *new]:
            s.close()


def test_service_cursors_are_reused_and_too_many_services_are_rejected(
    cluster: Cluster,
) -> None:
    # Each reload renames the second service: more new names over time than there are
    # cursors in the shared memory (64), never more than two services at once.
    hello = cluster.backend()
    admin = free_port()
    first = free_port()
    path = cluster.config(service("a", first, [hello], checks=False), admin=admin)
    base = path.read_text()
    cluster.balancer("--config", str(path), "--workers", "2")
    log = cluster.tmp / "lb.log"
    for i in range(70):
        path.write_text(base + service(f"s{i}", 0, [hello], checks=False))
        status, body = call(admin, "POST", "/api/reload")
        assert status == 200, (i, body)
    ports = listen_of(admin)
    assert sorted(ports) == ["a", "s69"]
    pid = worker_pids(log)[1]
    wait_until(lambda: ports["s69"] in listening_ports(pid), what="workers listening on s69")
    assert served_by(exchange(ports["s69"])) == hello
    # More services than cursors at once: rejected, with the limit, and nothing changes.
    path.write_text(base + "".join(service(f"m{i}", 0, [hello], checks=False) for i in range(64)))
    status, body = call(admin, "POST", "/api/reload")
    assert status == 400, body
    assert any("64" in line for line in body["errors"]), body
    assert listen_of(admin) == ports
    assert served_by(exchange(ports["s69"])) == hello
    assert "error" not in read_log(log).replace("reload_failed", "")


def test_replacement_worker_routes_with_the_supervisors_pool_from_its_first_connection(
    cluster: Cluster,
) -> None:
    # A backend in maintenance (set through the API, so the config file still lists it as
    # enabled) gets no connection from a worker that replaces one that died. The services
    # after the first make a replacement take its time between listening and being ready.
    kept, shunned = cluster.backend(), cluster.backend()
    admin = free_port()
    port = free_port()
    first = service("m", port, [kept], checks=False).replace(
        f'{{ address = "127.0.0.1:{kept}" }}',
        f'{{ address = "127.0.0.1:{kept}" }}, {{ address = "127.0.0.1:{shunned}" }}',
    )
    others = "".join(service(f"other{i}", 0, [kept], checks=False) for i in range(40))
    path = cluster.config(first + others, admin=admin)
    cluster.balancer("--config", str(path), "--workers", "2")
    log = cluster.tmp / "lb.log"
    status, body = call(
        admin, "PATCH", f"/api/backends/m/127.0.0.1:{shunned}", {"state": "maintenance"}
    )
    assert status == 200, body
    served: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            # (a connection in the killed worker's accept queue is reset)
            with contextlib.suppress(OSError, AssertionError):
                served.append(served_by(exchange(port, timeout=5)))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(served) > 20, what="connections")
        settled = len(served)  # (those before it raced the workers taking the PATCH)
        for index in (0, 1, 0, 1):
            replace_worker(log, index)
            wanted = len(served) + 50
            wait_until(lambda: len(served) > wanted, what="connections after a restart")  # noqa: B023
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    after = served[settled:]
    assert shunned not in after, f"{after.count(shunned)} to the backend in maintenance"


def test_backend_past_the_last_shared_memory_slot_is_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend added once every shared-memory slot has been given is not counted across
    workers: the log says so, once, and the backends with slots keep theirs."""
    from balancer.config import parse_config
    from balancer.control import supervisor as supervision
    from balancer.control.app import Balancer
    from balancer.core.address import Address
    from balancer.observability.logs import EventLog

    monkeypatch.setattr(supervision, "MAX_SLOTS", 2)
    log_path = tmp_path / "lb.log"
    service = {
        "name": "web",
        "listen": "127.0.0.1:0",
        "backends": ["127.0.0.1:9001", "127.0.0.1:9002"],
        "health_check": {"enabled": False},
    }
    config = parse_config({"workers": 2, "services": [service]})
    balancer = Balancer(config, EventLog(str(log_path)))
    supervisor = balancer.supervisor
    assert supervisor is not None
    pool = balancer.services["web"].pool
    try:
        supervisor._assign()
        pool.add(Address("127.0.0.1", 9003))
        supervisor._assign()
        supervisor._assign()  # (every change assigns again)
        slots = {a.port: b.slot for a, b in pool.backends.items()}
        assert slots == {9001: 0, 9002: 1, 9003: -1}
    finally:
        balancer.log.close()
    text = log_path.read_text()
    assert text.count("slots_exhausted") == 1 and "127.0.0.1:9003" in text


# Loaded by every Python process of the balancer below (PYTHONPATH): a worker process waits
# at interpreter start, before any of the balancer's code runs, until the test says go.
HOLD_AT_START = """
import os, time
from pathlib import Path

if b"balancer.control.worker" in Path("/proc/self/cmdline").read_bytes():
    hold = Path(os.environ["BALANCER_TEST_HOLD"])
    (hold / f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + 30
    while not (hold / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
"""


def test_sighup_to_a_worker_still_starting_kills_no_worker(tmp_path: Path) -> None:
    # A SIGHUP to the group (a reload, a terminal hanging up) can come while a worker process
    # is starting, before the worker's code has set SIGHUP aside: it starts with it blocked.
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "sitecustomize.py").write_text(HOLD_AT_START)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hold), os.environ.get("PYTHONPATH")])),
        "BALANCER_TEST_HOLD": str(hold),
    }
    cluster = Cluster(tmp_path)
    try:
        echo = cluster.backend("echo")
        log = tmp_path / "lb.log"
        args = ["run", "--workers", "2", "--listen", "127.0.0.1:0", f"--backend=127.0.0.1:{echo}"]
        proc = Process(balancer_cmd(*args, "--log-file", str(log)), env=env)
        cluster.processes.append(proc)
        started: list[int] = []

        def both_started() -> bool:
            started[:] = [int(p.name.split("-")[1]) for p in hold.glob("started-*")]
            return len(started) == 2

        wait_until(both_started, what="two worker processes at interpreter start")
        for pid in started:
            os.kill(pid, signal.SIGHUP)
        (hold / "go").touch()
        port = int(proc.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        assert sorted(worker_pids(log).values()) == sorted(started), "a worker was replaced"
        assert all(running(pid) for pid in started)
        assert exchange(port, b"hung up", half_close=True) == b"hung up"
        proc.stop()
        assert proc.proc.returncode == 0
        assert "worker_died" not in read_log(log)
    finally:
        cluster.stop()


def test_backend_a_reload_adds_has_its_settings_in_every_worker_from_its_first_connection(
    cluster: Cluster,
) -> None:
    # A reload that adds a backend with send_proxy, under a steady stream of new clients. A
    # worker must not route to it before it has the config that says so: the pool alone has
    # the backend but not its settings, and a client sent there without the header is cut off.
    plain = cluster.backend()
    strict = cluster.backend("hello", "--accept-proxy")
    log = cluster.tmp / "lb.log"
    port = free_port()
    without = service("web", port, [plain], checks=False)
    added = without.replace("}]", f'}}, {{ address = "127.0.0.1:{strict}", send_proxy = "v1" }}]')
    path = cluster.config(without)
    proc, _ = cluster.balancer("--config", str(path), "--workers", "2")
    stop = threading.Event()
    answers: list[bytes] = []

    def clients() -> None:
        while not stop.is_set():
            try:
                answers.append(exchange(port, b"hi"))
            except OSError as exc:
                answers.append(repr(exc).encode())

    threads = [threading.Thread(target=clients) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for count in range(1, 41):  # (adds it 20 times, and takes it out again)
            old, new = (without, added) if count % 2 else (added, without)
            path.write_text(path.read_text().replace(old, new))
            proc.signal(signal.SIGHUP)
            wait_until(lambda n=count: len(re.findall(r"event reload ", read_log(log))) == n, 10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    cut_off = [line for line in cluster.backend_process(strict).output if "bad PROXY" in line]
    assert not cut_off, cut_off
    served = [served_by(a) for a in answers if a.startswith(b"Hello")]
    assert strict in served and plain in served, "both backends took clients"
    assert len(served) == len(answers), [a for a in answers if not a.startswith(b"Hello")][:5]


def test_delete_counts_a_connection_opened_just_before(cluster: Cluster) -> None:
    # The workers' reported figures lag by up to half a second; a DELETE decides on the
    # counts they keep in shared memory, so it never removes at once a backend that a
    # connection opened a moment ago is still using. (Three services, one try each.)
    echoes = [cluster.backend("echo") for _ in range(3)]
    admin = free_port()
    ports = [free_port() for _ in echoes]
    pairs = list(enumerate(zip(ports, echoes, strict=True)))
    services = "".join(
        service(f"s{index}", port, [echo], checks=False) for index, (port, echo) in pairs
    )
    path = cluster.config(services, admin=admin)
    cluster.balancer("--config", str(path), "--workers", "2")
    for index, (port, echo) in pairs:
        key = f"127.0.0.1:{echo}"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert alive(s)
            status, body = call(admin, "DELETE", f"/api/backends/s{index}/{key}")
            assert (status, body) == (202, {"draining": key, "active": 1})
        # Once it has ended, the removal goes ahead.
        wait_until(
            lambda n=index: not call(admin, "GET", f"/api/backends?service=s{n}")[1],
            what="the drained backend removed",
        )
