"""Blame in-process: which failures count against a backend, and which clients are named."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from balancer.config.model import PassiveConfig
from balancer.service.blame import (
    BEFORE_REQUEST,
    CONNECT,
    ONE_CLIENT,
    REFUSED,
    SEVERAL_CLIENTS,
    SUSPECT_LEAST,
    Blame,
)

BACKEND = "127.0.0.1:9001"


def test_connect_failures_and_early_closes_are_the_backends() -> None:
    blame = Blame(PassiveConfig())
    assert blame.connect_failed(refused=True) == (REFUSED, True)
    assert blame.connect_failed(refused=False) == (CONNECT, True)
    # Before any of the client's bytes reached it: no client could have caused it.
    verdict = blame.closed_early(BACKEND, "10.0.0.1", forwarded=False, now=0.0)
    assert verdict == (BEFORE_REQUEST, True)


@given(st.integers(1, 2000))
def test_one_client_alone_never_counts_however_often(failures: int) -> None:
    blame = Blame(PassiveConfig(failure_clients=3))
    verdicts = {
        blame.closed_early(BACKEND, "10.0.0.1", forwarded=True, now=i / 100)
        for i in range(failures)
    }
    assert verdicts == {(ONE_CLIENT, False)}


def test_several_clients_alike_within_the_window_count() -> None:
    blame = Blame(PassiveConfig(failure_clients=3, failure_window=10.0))
    assert blame.closed_early(BACKEND, "10.0.0.1", forwarded=True, now=0.0).counted is False
    assert blame.closed_early(BACKEND, "10.0.0.2", forwarded=True, now=1.0).counted is False
    assert blame.closed_early(BACKEND, "10.0.0.1", forwarded=True, now=2.0).counted is False
    third = blame.closed_early(BACKEND, "10.0.0.3", forwarded=True, now=3.0)
    assert third == (SEVERAL_CLIENTS, True)
    # Each backend is judged on its own clients.
    assert (
        blame.closed_early("127.0.0.1:9002", "10.0.0.4", forwarded=True, now=3.0).counted is False
    )


def test_clients_seen_before_the_window_no_longer_count() -> None:
    blame = Blame(PassiveConfig(failure_clients=3, failure_window=10.0))
    blame.closed_early(BACKEND, "10.0.0.1", forwarded=True, now=0.0)
    blame.closed_early(BACKEND, "10.0.0.2", forwarded=True, now=5.0)
    late = blame.closed_early(BACKEND, "10.0.0.3", forwarded=True, now=10.5)
    assert late == (ONE_CLIENT, False)  # 10.0.0.1 is past the window: two clients in it
    # A client that fails again is seen at its latest time.
    blame.closed_early(BACKEND, "10.0.0.2", forwarded=True, now=11.0)
    assert blame.closed_early(BACKEND, "10.0.0.4", forwarded=True, now=12.0).counted


def test_failure_clients_of_one_counts_every_failure() -> None:
    blame = Blame(PassiveConfig(failure_clients=1))
    assert blame.closed_early(BACKEND, "10.0.0.1", forwarded=True, now=0.0).counted


def test_a_client_causing_most_failures_is_named_when_the_window_closes() -> None:
    blame = Blame(PassiveConfig(failure_window=10.0))
    for i in range(90):
        blame.closed_early(BACKEND, "10.6.6.6", forwarded=True, now=i / 10)
    for i in range(10):
        blame.closed_early(BACKEND, f"10.0.0.{i}", forwarded=True, now=9.0)
    assert blame.window_open
    [suspect] = blame.close_window(10.0)
    assert (suspect.backend, suspect.client, suspect.failures, suspect.total) == (
        BACKEND,
        "10.6.6.6",
        90,
        100,
    )
    assert not blame.window_open and blame.close_window(20.0) == []


def test_no_one_is_named_for_few_failures_or_an_even_spread() -> None:
    blame = Blame(PassiveConfig(failure_window=1.0))
    for _ in range(SUSPECT_LEAST - 1):
        blame.closed_early(BACKEND, "10.6.6.6", forwarded=True, now=0.0)
    assert blame.close_window(1.0) == []
    for i in range(100):
        blame.closed_early(BACKEND, f"10.0.{i % 4}.1", forwarded=True, now=2.0)
    assert blame.close_window(3.0) == []  # (a quarter each: no one has most)


def test_memory_stays_bounded_with_many_clients() -> None:
    from balancer.service.blame import MAX_CLIENTS

    blame = Blame(PassiveConfig(failure_window=1e9))
    for i in range(MAX_CLIENTS * 2):
        blame.closed_early(
            BACKEND, f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", forwarded=True, now=0
        )
    assert len(blame.recent[BACKEND]) <= MAX_CLIENTS
    assert len(blame.by_client[BACKEND]) <= MAX_CLIENTS
    blame.forget(BACKEND)
    assert BACKEND not in blame.recent and BACKEND not in blame.by_client
