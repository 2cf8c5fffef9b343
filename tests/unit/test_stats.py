"""The connection-time histograms: what they report is what an HDR histogram reports."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer import _dataplane
from balancer.observability.stats import BUCKETS, Timing

durations = st.lists(st.floats(min_value=0.0, max_value=7200.0), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(durations, durations)
def test_timing_matches_a_plain_hdr_histogram(first: list[float], second: list[float]) -> None:
    # Values are kept aside, cut to the HDR histogram's own precision, and added when read:
    # percentiles, maximum, count and the Prometheus buckets must be exactly as if each value
    # had gone straight into the histogram, also after merging two of them.
    timing, other = Timing(), Timing()
    plain = HdrHistogram(1, 3_600_000_000, 2)
    for seconds in first:
        timing.record_us(int(seconds * 1e6))
    for seconds in second:
        other.record_us(int(seconds * 1e6))
    for seconds in first + second:
        plain.record_value(max(1, min(int(seconds * 1e6), 3_600_000_000)))
    timing.merge(other)
    assert timing.hdr.get_total_count() == plain.get_total_count() == len(first + second)
    assert timing.hdr.get_max_value() == plain.get_max_value()
    for percentile in (50, 90, 99, 99.9):
        assert timing.hdr.get_value_at_percentile(percentile) == plain.get_value_at_percentile(
            percentile
        )
    assert timing.percentiles_ms()["max"] == plain.get_max_value() / 1000.0
    assert timing.cumulative()[-1] == ("+Inf", len(first + second))
    below = sum(1 for s in first + second if int(s * 1e6) <= BUCKETS[0] * 1e6)  # (in whole us)
    assert timing.cumulative()[0] == (repr(BUCKETS[0]), below)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**40), max_size=200))
def test_the_data_planes_timing_is_pythons(values: list[int]) -> None:
    # The compiled data plane keeps figures that Timing.add takes in: the same buckets, sum and
    # cut values as recording each value here, so percentiles and metrics do not depend on
    # which side recorded a connection.
    here, there = Timing(), Timing()
    for us in values:
        here.record_us(us)
    there.add(*_dataplane.timing(values))
    assert there.buckets == here.buckets
    assert there.sum_us == here.sum_us
    assert there.pending == here.pending
