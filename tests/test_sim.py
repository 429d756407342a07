"""The synthetic fleet: deterministic, well-formed, and its labelled anomalies are really there."""

from __future__ import annotations

import csv
import json
import re
import tracemalloc
from collections import defaultdict
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer import sim

N = 3000
FEW = settings(max_examples=15, deadline=None)
seeds = st.integers(0, 2**32 - 1)
kinds = st.sampled_from(sim.KINDS)
# Kinds whose reading-to-reading change is mostly noise and far from any bound, so the noise
# can be measured from the data and an offset is not clipped.
NOISY = ("temperature", "request_count", "heart_rate", "random_walk", "quantized")
ONE_ANOMALY = [(k, a) for k in sim.KINDS for a in sim.anomaly_kinds_for(k)]


def noise(s: sim.Series, around: int, rows: int = 100) -> float:
    """Spread of reading-to-reading changes per reading, near row `around`.

    Local, because noise varies in time (a count's noise grows with its rate).
    """
    d = np.diff(s.values[max(0, around - rows) : around + rows], axis=0)
    return float(np.max(np.std(d, axis=0))) / np.sqrt(2)


def pair(
    kind: str, anomaly: str, seed: int, n: int = N
) -> tuple[sim.Series, sim.Series, sim.Anomaly]:
    """The same sensor without and with one anomaly of a given kind."""
    clean = sim.generate(kind, n, seed)
    dirty = sim.generate(kind, n, seed, anomalies=1, anomaly_kinds=[anomaly])
    (a,) = dirty.anomalies
    assert a.kind == anomaly
    return clean, dirty, a


def r_peaks(v: np.ndarray) -> np.ndarray:
    """Rows where an ECG, baseline wander removed, crosses half its peak height going up."""
    v = v - np.convolve(v, np.ones(51) / 51, mode="same")  # a 0.2 s moving-average high-pass
    v = v[25:-25]
    threshold = 0.5 * np.max(v)
    return np.flatnonzero((v[1:] > threshold) & (v[:-1] <= threshold)) + 26


# ----------------------------------------------------------------------------- series


@FEW
@given(kind=kinds, seed=seeds, count=st.integers(0, 3))
def test_generate_is_deterministic_and_well_formed(kind: str, seed: int, count: int) -> None:
    s = sim.generate(kind, N, seed, anomalies=count)
    again = sim.generate(kind, N, seed, anomalies=count)
    other = sim.generate(kind, N, seed + 1, anomalies=count)
    channels = len(s.channels)
    assert s.ts.dtype == np.float64 and s.ts.shape == (N,)
    assert s.values.dtype == np.float64 and s.values.shape == (N, channels)
    assert s.labels.dtype == bool and s.labels.shape == (N,)
    assert np.all(np.diff(s.ts) > 0)
    assert np.median(np.diff(s.ts)) == pytest.approx(sim.native_period(kind), rel=0.05)
    assert np.all(np.isfinite(s.values))
    assert np.array_equal(s.values, again.values) and np.array_equal(s.ts, again.ts)
    assert s.anomalies == again.anomalies
    assert not np.array_equal(s.values, other.values)


@FEW
@given(kind=kinds, seed=seeds, count=st.integers(1, 3))
def test_labels_are_exactly_the_anomalies(kind: str, seed: int, count: int) -> None:
    s = sim.generate(kind, N, seed, anomalies=count)
    assert len(s.anomalies) == count
    expected = np.zeros(N, bool)
    for a in s.anomalies:
        assert a.kind in sim.anomaly_kinds_for(kind)
        expected[a.start : a.end] = True
    assert np.array_equal(s.labels, expected)
    spans = [(a.start, a.end) for a in s.anomalies]
    assert spans == sorted(spans)
    assert spans[0][0] >= sim.ONSET_FRACTION * N and spans[-1][1] < N
    assert all(end < start for (_, end), (start, _) in pairwise(spans))  # a normal row between


@FEW
@given(case=st.sampled_from(ONE_ANOMALY), seed=seeds)
def test_an_anomaly_changes_the_data_only_from_its_start(case: tuple[str, str], seed: int) -> None:
    kind, anomaly = case
    clean, dirty, a = pair(kind, anomaly, seed)
    # A dropout's label is the reading after the gap: the gap started earlier.
    first = a.start if anomaly != "dropout" else int(np.flatnonzero(dirty.ts != clean.ts)[0])
    assert np.array_equal(dirty.values[:first], clean.values[:first])
    assert np.array_equal(dirty.ts[:first], clean.ts[:first])
    held = clean.values[a.start - 1]
    if anomaly == "stuck" and np.all(clean.values[a.start : a.end] == held):
        return  # a stuck sensor can repeat what it would have read anyway (SpO2 at 98 %)
    changed = dirty.values[a.start : a.end + 1] != clean.values[a.start : a.end + 1]
    assert changed.any() or anomaly == "dropout"
    assert anomaly != "dropout" or dirty.ts[a.start] > clean.ts[a.start]


@FEW
@given(kind=st.sampled_from(NOISY), seed=seeds)
def test_spike_is_5_to_10_noise_sigmas(kind: str, seed: int) -> None:
    clean, dirty, a = pair(kind, "spike", seed)
    assert a.end - a.start <= 3
    jump = np.max(np.abs(dirty.values[a.start : a.end] - clean.values[a.start : a.end]))
    assert jump >= 4 * noise(clean, a.start)


@FEW
@given(kind=st.sampled_from(NOISY), seed=seeds)
def test_level_shift_and_drift_move_far(kind: str, seed: int) -> None:
    clean, shifted, a = pair(kind, "level_shift", seed)
    delta = shifted.values[a.start : a.end] - clean.values[a.start : a.end]
    assert abs(np.mean(delta)) >= 3 * noise(clean, (a.start + a.end) // 2, a.end - a.start)
    clean, drifted, a = pair(kind, "drift", seed)
    delta = np.abs(drifted.values[a.start : a.end] - clean.values[a.start : a.end])
    assert delta[-1].max() >= 5 * noise(clean, a.end, 50)
    assert delta[-1].max() > delta[0].max()  # it grows


@FEW
@given(kind=st.sampled_from(NOISY), seed=seeds)
def test_variance_change_multiplies_the_noise(kind: str, seed: int) -> None:
    clean, dirty, a = pair(kind, "variance_change", seed)
    inside = slice(a.start, a.end)
    assert np.std(np.diff(dirty.values[inside], axis=0)) >= 2 * np.std(
        np.diff(clean.values[inside], axis=0)
    )


@FEW
@given(kind=kinds, seed=seeds)
def test_stuck_repeats_the_last_reading_exactly(kind: str, seed: int) -> None:
    _, dirty, a = pair(kind, "stuck", seed)
    assert np.all(dirty.values[a.start : a.end] == dirty.values[a.start - 1])


@FEW
@given(kind=kinds, seed=seeds)
def test_dropout_removes_readings_and_labels_the_one_after(kind: str, seed: int) -> None:
    _, dirty, a = pair(kind, "dropout", seed)
    assert a.end == a.start + 1 and len(dirty.ts) == N
    gaps = np.diff(dirty.ts)
    assert gaps[a.start - 1] > 3 * np.median(gaps)
    assert np.sum(gaps > 3 * np.median(gaps)) == 1


@FEW
@given(seed=seeds)
def test_frequency_change_moves_the_vibration_spectrum(seed: int) -> None:
    clean, dirty, a = pair("vibration", "frequency_change", seed)

    def centroid(values: np.ndarray) -> float:
        """Mean frequency weighted by squared power: the harmonics' peaks, not the noise floor."""
        part = values[a.start : a.end] - np.mean(values[a.start : a.end], axis=0)
        window = np.hanning(len(part))[:, None]
        power = np.sum(np.abs(np.fft.rfft(part * window, axis=0)) ** 2, axis=1)
        return float(np.sum(np.arange(len(power)) * power**2) / np.sum(power**2))

    ratio = centroid(dirty.values) / centroid(clean.values)
    assert ratio >= 1.3 or ratio <= 1 / 1.3


def beat_intervals(s: sim.Series, a: sim.Anomaly | None = None) -> np.ndarray:
    """Seconds between R peaks; with `a`, only the intervals that overlap it."""
    peaks = r_peaks(s.values[:, 0])
    if a is not None:
        keep = (peaks[1:] > a.start) & (peaks[:-1] < a.end)
        return np.diff(s.ts[peaks])[keep]
    return np.diff(s.ts[peaks])


@FEW
@given(seed=seeds)
def test_ecg_beats_at_a_plausible_rate_and_premature_and_missing_beats_show(seed: int) -> None:
    n = 6000
    normal = np.median(beat_intervals(sim.generate("ecg", n, seed)))
    assert 45 <= 60 / normal <= 100
    _, early, a = pair("ecg", "premature_beat", seed, n)
    assert beat_intervals(early, a).min() < 0.8 * normal
    _, missing, a = pair("ecg", "missing_beat", seed, n)
    assert beat_intervals(missing, a).max() > 1.6 * normal


@FEW
@given(seed=seeds, count=st.integers(0, 3))
def test_bounded_kinds_stay_in_range(seed: int, count: int) -> None:
    for kind, lo, hi in (("cpu_load", 0, 100), ("spo2", 85, 100), ("heart_rate", 30, 220)):
        v = sim.generate(kind, N, seed, anomalies=count).values
        assert lo <= v.min() and v.max() <= hi, kind
    for kind in ("spo2", "heart_rate", "request_count", "quantized"):
        v = sim.generate(kind, N, seed, anomalies=count).values
        assert np.array_equal(v, np.round(v)) and v.min() >= 0, kind
    heart = sim.generate("heart_rate", N, seed).values
    assert np.mean((heart >= 50) & (heart <= 110)) >= 0.95
    assert np.all(sim.generate("request_count", N, seed).values >= 0)


def test_corpus_is_deterministic_mixed_and_spans_scales() -> None:
    series = sim.corpus(2 * len(sim.KINDS), 500, seed=7)
    again = sim.corpus(2 * len(sim.KINDS), 500, seed=7)
    assert [s.name for s in series] == [s.name for s in again]
    assert all(np.array_equal(s.values, t.values) for s, t in zip(series, again, strict=True))
    counts = defaultdict(int)
    for s in series:
        counts[s.kind] += 1
    assert counts == dict.fromkeys(sim.KINDS, 2)
    assert len({s.name for s in series}) == len(series)
    # Generic kinds are drawn on any scale: 40 sensors of one kind span many decades.
    scales = [np.median(np.abs(s.values)) for s in sim.corpus(40, 200, 3, kinds=["seasonal"])]
    assert max(scales) / min(scales) > 1e4


def test_corpus_with_anomalies_fits_every_kind_even_when_short() -> None:
    series = sim.corpus(len(sim.KINDS), 400, seed=1, anomalies=2)
    assert all(len(s.anomalies) == 2 and len(s.ts) == 400 for s in series)


def test_bad_arguments_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="unknown sensor kind"):
        sim.generate("toaster", 10, 0)
    with pytest.raises(ValueError, match="do not apply"):
        sim.generate("temperature", 1000, 0, anomalies=1, anomaly_kinds=["missing_beat"])
    with pytest.raises(ValueError, match="no room"):
        sim.generate("temperature", 20, 0, anomalies=10)
    with pytest.raises(ValueError):
        sim.Fleet(0, 0)


# ----------------------------------------------------------------------------- CSV


@pytest.mark.parametrize(
    ("kind", "period", "pattern"),
    [
        ("vibration", 1.0, r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"),
        ("ecg", None, r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"),
        ("temperature", None, r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"),
    ],
)
def test_csv_round_trip_with_the_stdlib(
    tmp_path: Path, kind: str, period: float | None, pattern: str
) -> None:
    s = sim.generate(kind, 2000, 4, period=period, anomalies=2)
    path = tmp_path / "s.csv"
    sim.write_csv(s, path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", *s.channels, "label"]
    body = rows[1:]
    assert len(body) == len(s.ts)
    assert all(re.fullmatch(pattern, r[0]) for r in body)
    ts = np.array([datetime.fromisoformat(r[0]).timestamp() for r in body])
    assert np.max(np.abs(ts - s.ts)) < 2e-6
    values = np.array([[float(x) for x in r[1:-1]] for r in body])
    assert np.array_equal(values, s.values)
    assert np.array_equal(np.array([r[-1] == "1" for r in body]), s.labels)


def test_write_corpus_writes_one_csv_per_series_and_the_anomaly_index(tmp_path: Path) -> None:
    series = sim.corpus(4, 600, seed=2, anomalies=1)
    paths = sim.write_corpus(series, tmp_path / "corpus")
    assert [p.stem for p in paths] == [s.name for s in series]
    assert all(p.is_file() for p in paths)
    index = json.loads((tmp_path / "corpus" / "anomalies.json").read_text())
    for p, s in zip(paths, series, strict=True):
        assert index[p.name] == [
            {"kind": a.kind, "start": a.start, "end": a.end} for a in s.anomalies
        ]


# ----------------------------------------------------------------------------- fleet


def run(fleet: sim.Fleet, start: float, seconds: float, step: float) -> list:
    out = []
    for now in np.arange(start, start + seconds + step / 2, step):
        out.extend(fleet.tick(float(now)))
    return out


def test_fleet_reports_at_the_asked_rate_with_stable_names() -> None:
    fleet = sim.Fleet(30, 5, anomaly_rate=0.0, rate_hz=4.0)
    assert len(set(fleet.streams)) == 30
    assert all(re.fullmatch(r"plant\d+/[a-z_0-9]+-\d{3}", s) for s in fleet.streams)
    assert fleet.streams == sim.Fleet(30, 99, anomaly_rate=0.0, rate_hz=4.0).streams
    readings = run(fleet, 1e9, 60.0, 0.25)
    by_stream = defaultdict(list)
    for stream, ts, values in readings:
        assert ts <= 1e9 + 60.0 and all(np.isfinite(values))
        by_stream[stream].append(ts)
    assert set(by_stream) == set(fleet.streams)
    for ts in by_stream.values():
        assert 239 <= len(ts) <= 241
        assert np.all(np.diff(ts) > 0)
        assert abs(np.median(np.diff(ts)) - 0.25) < 0.01
    assert [r[1] for r in readings] == sorted(r[1] for r in readings)


def test_fleet_native_rates_and_tick_rhythm_do_not_change_the_readings() -> None:
    kinds = ["heart_rate", "temperature", "vibration"]
    often = run(sim.Fleet(3, 1, kinds=kinds, anomaly_rate=0.01), 1e9, 600.0, 0.5)
    rarely = run(sim.Fleet(3, 1, kinds=kinds, anomaly_rate=0.01), 1e9, 600.0, 37.5)
    assert often == rarely
    counts = defaultdict(int)
    for stream, _, values in often:
        counts[stream.split("/")[1].rsplit("-", 1)[0]] += 1
        assert len(values) == (3 if "vibration" in stream else 1)
    # Dropouts may remove a few readings.
    assert 540 <= counts["heart_rate"] <= 601
    assert 9 <= counts["temperature"] <= 11
    assert 27_000 <= counts["vibration"] <= 30_001


def test_fleet_records_its_anomalies_and_they_are_in_the_data() -> None:
    fleet = sim.Fleet(
        12, 3, kinds=["temperature", "cpu_load", "random_walk"], anomaly_rate=0.02, rate_hz=10.0
    )
    readings = run(fleet, 1e9, 500.0, 1.0)
    assert len(fleet.history) > 20
    series = defaultdict(list)
    for stream, ts, values in readings:
        series[stream].append((ts, values))
    for stream, record in fleet.history:
        assert record.kind in sim.anomaly_kinds_for(stream.split("/")[1].rsplit("-", 1)[0])
        assert 1e9 <= record.start < record.end
        inside = [v for ts, v in series[stream] if record.start <= ts < record.end - 0.05]
        if record.kind == "stuck":
            assert len(set(inside)) == 1
        if record.kind == "dropout":
            assert inside == []
    for stream, record in fleet.active_anomalies.items():
        assert record.start <= 1e9 + 500.0 and stream in fleet.streams


def test_fleet_memory_is_constant_over_long_runs() -> None:
    tracemalloc.start()
    try:
        fleet = sim.Fleet(8, 8, kinds=["spo2", "ecg"], anomaly_rate=0.05, rate_hz=10.0, history=5)
        fleet.tick(1e9)
        fleet.tick(now := 1e9 + 300.0)  # every stream has had anomalies, the history is full
        assert len(fleet.history) == 5
        before = tracemalloc.get_traced_memory()[0]
        readings = sum(len(fleet.tick(now := now + 10.0)) for _ in range(60))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert readings >= 8 * 10 * 600 * 0.8
    assert after - before < 32 * 1024  # a leak of even 1 byte per reading would show
