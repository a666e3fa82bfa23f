"""The service load benchmark reads wrk's report right (the benchmark runs with `make bench-service`)."""

from __future__ import annotations

import pytest

from bench.service_load import parse_wrk

# wrk 4.1 --latency against a server answering 404 (real output), and a run with socket errors
NOT_FOUND = """Running 1s test @ http://127.0.0.1:8099/nope
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.26ms    1.26ms  18.41ms   95.39%
    Req/Sec     1.82k   128.69     1.96k    60.00%
  Latency Distribution
     50%    2.07ms
     75%    2.45ms
     90%    2.88ms
     99%    7.49ms
  1809 requests in 1.00s, 0.90MB read
  Non-2xx or 3xx responses: 1809
Requests/sec:   1808.39
Transfer/sec:      0.90MB
"""
LOADED = """Running 10s test @ http://127.0.0.1:8041/embed
  1 threads and 64 connections
  Latency Distribution
     50%  133.40ms
     75%  150.02ms
     90%  170.11ms
     99%    1.21s
  4684 requests in 10.00s, 34.90MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
Requests/sec:    468.40
"""


def test_only_successful_responses_count() -> None:
    result = parse_wrk(NOT_FOUND)
    assert result.throughput == 0.0
    assert result.errors == 1809
    assert result.p50_ms == pytest.approx(2.07) and result.p99_ms == pytest.approx(7.49)


def test_rate_latency_units_and_socket_errors() -> None:
    result = parse_wrk(LOADED)
    assert result.throughput == pytest.approx(468.4)
    assert result.p50_ms == pytest.approx(133.4) and result.p99_ms == pytest.approx(1210.0)
    assert result.errors == 5
    assert (result.requests, result.timeouts) == (4684, 3)  # time-outs: requests wrk gave up on


def test_unreadable_output_is_an_error_not_a_zero() -> None:
    with pytest.raises(RuntimeError, match="cannot read wrk"):
        parse_wrk("wrk: connection refused\n")
