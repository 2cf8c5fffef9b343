"""Admission in-process: ACLs, open connections per client, the rate bucket, and reloads."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from balancer.config.model import Limits
from balancer.core.termination import Termination
from balancer.service.admission import MAX_BUCKETS, Admission


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def test_no_limits_admit_everyone_and_count_them() -> None:
    admission = Admission(Limits())
    for _ in range(3):
        assert admission.check("10.0.0.1", 0.0) is None
    assert admission.per_client == {"10.0.0.1": 3}
    for _ in range(3):
        admission.left("10.0.0.1")
    assert admission.per_client == {}  # (no entry kept for a client with nothing open)


def test_allow_and_deny() -> None:
    admission = Admission(Limits(allow=nets("10.0.0.0/8", "::1/128"), deny=nets("10.9.0.0/16")))
    assert admission.check("10.1.2.3", 0.0) is None
    assert admission.check("::1", 0.0) is None
    denied = admission.check("10.9.0.1", 0.0)  # allowed, but denied wins
    assert denied is not None and denied.reason is Termination.DENIED
    outside = admission.check("192.168.1.1", 0.0)
    assert outside is not None and outside.detail == "address not allowed"
    # A client known only by name (a unix socket, say) cannot be matched: refused.
    assert admission.check("", 0.0) is not None
    assert admission.per_client == {"10.1.2.3": 1, "::1": 1}  # (refused ones are not counted)


def test_deny_alone_lets_the_rest_in() -> None:
    admission = Admission(Limits(deny=nets("10.0.0.0/8")))
    assert admission.check("192.168.0.1", 0.0) is None
    assert admission.check("10.0.0.1", 0.0) is not None


def test_open_connections_per_client() -> None:
    admission = Admission(Limits(client_max_connections=2))
    assert admission.check("10.0.0.1", 0.0) is None
    assert admission.check("10.0.0.1", 0.0) is None
    third = admission.check("10.0.0.1", 0.0)
    assert third is not None and third.reason is Termination.CLIENT_LIMIT
    assert third.detail == "2 connections already open"
    assert admission.check("10.0.0.2", 0.0) is None  # (another address has its own count)
    admission.left("10.0.0.1")
    assert admission.check("10.0.0.1", 0.0) is None


@given(st.integers(1, 20), st.integers(1, 50), st.integers(1, 20))
def test_rate_bucket_admits_burst_then_rate(rate: int, burst: int, seconds: int) -> None:
    """Over `seconds`, a client that tries at every millisecond gets the burst plus the rate
    for each second, and not one more. (A little less: a try comes up to a millisecond after
    the bucket filled, and what it would have gained meanwhile is past the bucket's size.)"""
    admission = Admission(Limits(client_rate=float(rate), client_burst=burst))
    admitted = 0
    for step in range(seconds * 1000 + 1):
        if admission.check("10.0.0.1", step / 1000) is None:
            admitted += 1
            admission.left("10.0.0.1")
    most = burst + rate * seconds
    assert most * (1 - rate / 1000) - 1 <= admitted <= most


def test_rate_refusal_says_why() -> None:
    admission = Admission(Limits(client_rate=1.0, client_burst=1))
    assert admission.check("10.0.0.1", 0.0) is None
    refused = admission.check("10.0.0.1", 0.5)
    assert refused is not None and refused.reason is Termination.RATE_LIMITED
    assert refused.detail == "over 1 connections/s"
    assert admission.check("10.0.0.1", 1.01) is None


def test_many_clients_keep_the_buckets_bounded() -> None:
    admission = Admission(Limits(client_rate=1000.0, client_burst=1))
    for i in range(MAX_BUCKETS + 10):
        admission.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i / 1e6)
        admission.left(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    # Refilled buckets are dropped once there are too many: only the last millisecond's stay.
    assert len(admission.buckets) < MAX_BUCKETS


def test_a_reload_changes_the_limits_and_keeps_the_counts() -> None:
    admission = Admission(Limits(client_max_connections=1))
    assert admission.check("10.0.0.1", 0.0) is None
    assert admission.check("10.0.0.1", 0.0) is not None
    admission.limits = Limits(client_max_connections=2)
    assert admission.check("10.0.0.1", 0.0) is None
    assert admission.per_client == {"10.0.0.1": 2}


def test_a_suspect_client_is_held_to_its_rate_until_its_time_is_up() -> None:
    admission = Admission(Limits(suspect_rate=2.0))
    admission.suspect("10.6.6.6", until=10.0)
    admitted = 0
    for step in range(100):  # one try every 20 ms for 2 s
        if admission.check("10.6.6.6", step / 50) is None:
            admitted += 1
            admission.left("10.6.6.6")
    assert 5 <= admitted <= 6  # a burst of 2, then 2 a second
    refused = admission.check("10.6.6.6", 2.001)
    assert refused is not None and refused.reason is Termination.RATE_LIMITED
    assert "causing most of a backend's failures" in refused.detail
    assert admission.check("10.0.0.1", 2.001) is None  # (others are not held)
    assert admission.check("10.6.6.6", 10.0) is None  # (its time is up)
    assert admission.suspects == {}


def test_without_suspect_rate_no_client_is_held() -> None:
    admission = Admission(Limits())
    admission.suspect("10.6.6.6", until=10.0)
    assert all(admission.check("10.6.6.6", i / 1000) is None for i in range(100))
