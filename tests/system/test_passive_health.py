"""Passive health that clients cannot turn into an outage: a client's resets eject nothing, the
ejection cap holds when failures do count, panic spreads over what the checks hold up, and a
backend's own faults still take it out at once."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import Cluster, free_port, read_log, wait_for_log, wait_until
from support.backends import WordBackend, ask
from support.config import service

ORDINARY = b"hello\n"
ATTACK = b"EVIL please\n"


@pytest.fixture
def words() -> Iterator[list[WordBackend]]:
    backends = [WordBackend() for _ in range(3)]
    yield backends
    for backend in backends:
        backend.close()


def ordinary_clients(port: int, count: int, source: str = "127.0.0.2") -> list[bytes]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda _: ask(port, ORDINARY, source), range(count)))


def attack(port: int, count: int, sources: list[str], stop: threading.Event) -> None:
    """`count` connections that each send the word, 16 at a time, from `sources` in turn."""

    def one(i: int) -> None:
        if not stop.is_set():
            ask(port, ATTACK, sources[i % len(sources)])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


def metric(admin: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_one_clients_resets_eject_no_backend_and_every_ordinary_client_is_served(
    cluster: Cluster, words: list[WordBackend]
) -> None:
    # The default config: TCP checks, max_fails 3, panic on, max_ejection_percent 10.
    port, admin = free_port(), free_port()
    path = cluster.config(service("web", port, [w.port for w in words]), admin=admin)
    cluster.balancer("--config", str(path))
    stop = threading.Event()
    # (At most 20,000 connections; it stops when the ordinary clients are done.)
    attacker = threading.Thread(target=attack, args=(port, 20_000, ["127.0.0.1"], stop))
    attacker.start()
    try:
        wait_until(lambda: sum(w.reset for w in words) >= 1200, 60, "1,200 attacks")
        answers = ordinary_clients(port, 400)
        assert attacker.is_alive(), "the attack was over before the ordinary clients were"
    finally:
        stop.set()
        attacker.join(timeout=120)
    refused = [a for a in answers if not a.startswith(b"Hello from Server")]
    assert not refused, f"{len(refused)} of 400 ordinary clients refused"
    attacks = sum(w.reset for w in words)  # (every attack reached a backend: none ejected)
    assert all(w.reset > attacks / 6 for w in words), [w.reset for w in words]
    log = cluster.tmp / "lb.log"
    text = read_log(log)
    assert " event down " not in text, text
    # The access lines say which rule judged each failure, and the metric counts them.
    assert re.search(r"client=127\.0\.0\.1:\d+ .* failures=one_client termination=", text)
    wait_until(lambda: metric(admin, "balancer_backend_failures_total") >= attacks, 10)
    assert metric(admin, "balancer_backend_ejections_total") == 0
    # The client that caused them is named, once a window, with its count.
    wait_for_log(log, r"event suspect_client service=web backend=\S+ client=127\.0\.0\.1 ", 20)


def test_failures_from_several_clients_count_but_eject_no_more_than_the_cap(
    cluster: Cluster, words: list[WordBackend]
) -> None:
    port, admin = free_port(), free_port()
    keys = 'ejection_time = "60s"'
    path = cluster.config(service("web", port, [w.port for w in words], keys), admin=admin)
    cluster.balancer("--config", str(path))
    log = cluster.tmp / "lb.log"
    sources = [f"127.0.1.{i}" for i in range(1, 7)]
    attack(port, 300, sources, threading.Event())
    # Several clients failed alike: that counts, and one backend of the three is ejected...
    wait_for_log(log, r"event down service=web .*ejected for 60s after 3 consecutive failures")
    assert re.search(r"failures=several_clients", read_log(log))
    # ...and only one: the cap (10%, at least one, never all) refuses the others, and says so.
    wait_for_log(log, r"event ejection_refused service=web .*1 of 3 enabled backends may be")
    assert len(re.findall(r" event down ", read_log(log))) == 1
    assert metric(admin, "balancer_backend_ejections_refused_total") >= 1
    answers = ordinary_clients(port, 200)
    assert all(a.startswith(b"Hello from Server") for a in answers)


def test_panic_spreads_over_the_backends_the_checks_hold_up(
    cluster: Cluster, words: list[WordBackend]
) -> None:
    # Every backend may be ejected and every failure counts: the attack takes all three out,
    # and the panic (on by default) spreads over them, since the TCP checks hold them up.
    port, admin = free_port(), free_port()
    keys = 'max_ejection_percent = 100\nfailure_clients = 1\nejection_time = "60s"'
    path = cluster.config(service("web", port, [w.port for w in words], keys), admin=admin)
    cluster.balancer("--config", str(path))
    log = cluster.tmp / "lb.log"
    attack(port, 60, ["127.0.0.1"], threading.Event())
    wait_until(lambda: len(re.findall(r" event down ", read_log(log))) == 3, 10, "all ejected")
    panic = (
        r"event panic service=web .*[01] of 3 enabled backends up, below panic_threshold 50%: "
        r"spreading over the 3 that the active checks hold up"
    )
    wait_for_log(log, panic)
    assert metric(admin, "balancer_service_panic") == 1
    answers = ordinary_clients(port, 100)
    assert all(a.startswith(b"Hello from Server") for a in answers)


def test_without_panic_the_ejected_backends_refuse_everyone(
    cluster: Cluster, words: list[WordBackend]
) -> None:
    # What the panic saves: the same attack with panic = false leaves no backend to take the
    # ordinary clients.
    port = free_port()
    keys = 'max_ejection_percent = 100\nfailure_clients = 1\nejection_time = "60s"\npanic = false'
    cluster.balancer(
        "--config", str(cluster.config(service("web", port, [w.port for w in words], keys)))
    )
    log = cluster.tmp / "lb.log"
    attack(port, 60, ["127.0.0.1"], threading.Event())
    wait_until(lambda: len(re.findall(r" event down ", read_log(log))) == 3, 10, "all ejected")
    assert ordinary_clients(port, 20) == [b""] * 20
    assert "termination=no_backend" in read_log(log)


def test_a_backend_that_answers_and_closes_with_unread_input_stays_in_rotation(
    cluster: Cluster,
) -> None:
    # It answers after the first line and closes with the rest of the request unread: the
    # kernel sends a reset, which may destroy the answer before the balancer reads it. Under
    # load, from one client address, that must not eject it.
    sloppy = [WordBackend(unread=True) for _ in range(3)]
    try:
        port = free_port()
        cluster.balancer(
            "--config", str(cluster.config(service("web", port, [s.port for s in sloppy])))
        )
        request = b"GET /\n" + b"x" * 300_000
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: ask(port, request), range(1000)))
        served = sum(a.startswith(b"Hello from Server") for a in answers)
        assert served > 0
        log = read_log(cluster.tmp / "lb.log")
        assert " event down " not in log, log
        assert all(s.served + s.reset > 100 for s in sloppy), [s.served for s in sloppy]
    finally:
        for s in sloppy:
            s.close()


def test_a_lone_backend_behind_accept_proxy_keeps_serving_through_bad_headers(
    cluster: Cluster,
) -> None:
    lone = WordBackend()
    try:
        port = free_port()
        path = cluster.config(service("edge", port, [lone.port], "accept_proxy = true"))
        cluster.balancer("--config", str(path))
        log = cluster.tmp / "lb.log"
        headers = [
            b"PROXY TCP4 10.0.0.1 10.0.0.2 5000\r\n",  # malformed: no destination port
            b"GARBAGE\r\n",
            b"PROXY TCP4 10.9.9.9 10.0.0.2 5000 80\r\n" + ATTACK,  # valid, then the word
        ]
        stop = threading.Event()

        def stream() -> None:
            i = 0
            while not stop.is_set() and i < 3000:
                ask(port, headers[i % len(headers)])
                i += 1

        streams = [threading.Thread(target=stream) for _ in range(8)]
        for thread in streams:
            thread.start()
        try:
            wait_until(lambda: lone.reset >= 50, what="the stream under way")
            good = b"PROXY TCP4 10.1.1.1 10.0.0.2 6000 80\r\n" + ORDINARY
            answers = [ask(port, good) for _ in range(300)]
        finally:
            stop.set()
            for thread in streams:
                thread.join(timeout=60)
        refused = [a for a in answers if not a.startswith(b"Hello from Server")]
        assert not refused, f"{len(refused)} of 300 well-formed clients refused"
        text = read_log(log)
        assert " event down " not in text
        assert "termination=bad_proxy_header" in text
    finally:
        lone.close()


def test_suspect_rate_holds_back_the_client_that_provokes_failures(
    cluster: Cluster, words: list[WordBackend]
) -> None:
    port = free_port()
    keys = 'failure_window = "1s"\nsuspect_rate = 2'
    path = cluster.config(service("web", port, [w.port for w in words], keys))
    cluster.balancer("--config", str(path))
    log = cluster.tmp / "lb.log"
    stop = threading.Event()
    attacker = threading.Thread(target=attack, args=(port, 20_000, ["127.0.0.1"], stop))
    attacker.start()
    try:
        wait_for_log(log, r"event suspect_client .*limited to 2 new connections/s for 1s")
        wait_for_log(log, r"refused service=web \| rate_limited 127\.0\.0\.1:\d+: named as")
        answers = ordinary_clients(port, 100)
    finally:
        stop.set()
        attacker.join(timeout=120)
    assert all(a.startswith(b"Hello from Server") for a in answers)
