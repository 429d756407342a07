"""A short soak: broker, daemon and load generator as separate processes, sampled from outside.

`python -m benchmarks.soak --duration 3600` is the long version of the same code.
"""

import math

from benchmarks.soak import soak


def test_a_short_soak_loses_nothing_and_reports_sane_figures():
    duration, rate = 15.0, 300.0
    r = soak(duration, rate, streams=50, sample_s=1.0, warmup_s=3.0, window_s=4.0)
    assert r.lost == 0
    assert r.daemon_exit == 0
    assert abs(r.published - rate * duration) <= 0.1 * rate * duration
    assert len(r.samples) >= duration - 2
    assert all(s.rss_mb > 10 for s in r.samples)
    assert [s.accounted for s in r.samples] == sorted(s.accounted for s in r.samples)
    for window in (r.latency_first, r.latency_last):
        assert window["readings"] > 0
        assert 0 < window["p50_ms"] <= window["p99_ms"] < 5000
    assert math.isfinite(r.rss_growth_pct) and math.isfinite(r.p99_drift_pct)
