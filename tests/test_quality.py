"""Detection metrics: hand-checked counts, AUCs against brute force, events, label sources."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer import quality
from streamer.errors import ConfigError

NAB_ROOT = Path(
    os.environ.get("NAB_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab")
)

# Rows 1-2 and 5 are anomalous; at 0.5 rows 1, 2 and 4 are flagged.
SCORES = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.3])
LABELS = np.array([0, 1, 1, 0, 0, 1])


def test_counts_and_rates_of_a_hand_checked_series() -> None:
    r = quality.evaluate(SCORES, LABELS, threshold=0.5)
    assert (r.tp, r.fp, r.fn, r.tn) == (2, 1, 1, 2)
    assert r.precision == pytest.approx(2 / 3)
    assert r.recall == pytest.approx(2 / 3)
    assert r.f1 == pytest.approx(2 / 3)
    assert r.false_alarm_rate == pytest.approx(1 / 3)
    assert r.missed_alarm_rate == pytest.approx(1 / 3)
    assert (r.events, r.events_detected, r.event_recall, r.mean_delay) == (2, 1, 0.5, 0.0)


def test_aucs_of_a_hand_checked_series() -> None:
    # Positives 0.9, 0.8, 0.3 against negatives 0.7, 0.2, 0.1: 8 of 9 pairs ordered.
    assert quality.roc_auc(SCORES, LABELS) == pytest.approx(8 / 9)
    # Ranked: P P N P N N, so precision 1, 1 and 3/4 at the three recall steps.
    assert quality.pr_auc(SCORES, LABELS) == pytest.approx((1 + 1 + 0.75) / 3)


def test_rates_without_a_denominator_are_nan_and_none_in_the_dict() -> None:
    r = quality.evaluate(np.array([0.1, 0.2]), np.array([0, 0]), threshold=0.5)
    assert math.isnan(r.precision) and math.isnan(r.recall) and math.isnan(r.mean_delay)
    assert math.isnan(r.roc_auc) and math.isnan(r.pr_auc)
    d = r.to_dict()
    assert d["precision"] is None and d["roc_auc"] is None
    assert d["false_alarm_rate"] == 0.0 and d["tn"] == 2
    json.dumps(d)  # JSON-ready


def test_single_class_aucs_are_nan() -> None:
    for labels in (np.ones(4), np.zeros(4)):
        assert math.isnan(quality.roc_auc(np.arange(4.0), labels))
        assert math.isnan(quality.pr_auc(np.arange(4.0), labels))


def test_all_tied_scores_give_chance_roc_and_base_rate_pr() -> None:
    labels = np.array([1, 0, 0, 1, 0])
    assert quality.roc_auc(np.full(5, 0.3), labels) == pytest.approx(0.5)
    assert quality.pr_auc(np.full(5, 0.3), labels) == pytest.approx(2 / 5)


def brute_roc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    return sum(pairs) / len(pairs)


def brute_average_precision(s: np.ndarray, y: np.ndarray) -> float:
    total, seen_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        flagged = s >= t
        recall = (flagged & y).sum() / y.sum()
        total += (recall - seen_recall) * (flagged & y).sum() / flagged.sum()
        seen_recall = recall
    return total


labelled = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 6), min_size=n, max_size=n),  # few levels: many ties
        st.lists(st.booleans(), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(labelled)
def test_aucs_equal_brute_force(case) -> None:
    s, y = np.array(case[0], float) / 6, np.array(case[1])
    if y.all() or not y.any():
        assert math.isnan(quality.roc_auc(s, y)) and math.isnan(quality.pr_auc(s, y))
        return
    assert quality.roc_auc(s, y) == pytest.approx(brute_roc(s, y))
    assert quality.pr_auc(s, y) == pytest.approx(brute_average_precision(s, y))


@settings(max_examples=150, deadline=None)
@given(labelled)
def test_best_f1_threshold_is_the_best_distinct_score(case) -> None:
    s, y = np.array(case[0], float) / 6, np.array(case[1])
    threshold, f1 = quality.best_f1_threshold(s, y)
    if not y.any():
        assert math.isnan(threshold) and math.isnan(f1)
        return
    candidates = sorted(set(s.tolist()), reverse=True)
    f1s = [quality.evaluate(s, y, t).f1 for t in candidates]
    assert f1 == pytest.approx(max(f1s))
    assert threshold == candidates[int(np.argmax(f1s))]


def test_events_are_contiguous_labelled_runs() -> None:
    spans = quality.events(np.array([1, 1, 0, 0, 1, 0, 1, 1, 1]))
    assert spans.tolist() == [[0, 1], [4, 4], [6, 8]]
    assert quality.events(np.zeros(3)).shape == (0, 2)


@given(st.lists(st.booleans(), max_size=60))
def test_spans_and_labels_are_inverses(labels) -> None:
    y = np.array(labels, bool)
    np.testing.assert_array_equal(quality.labels_from_spans(len(y), quality.events(y)), y)


def test_event_delay_counts_rows_from_the_start_to_the_first_detection() -> None:
    labels = np.zeros(12, int)
    labels[3:8] = 1
    scores = np.zeros(12)
    scores[[5, 6, 10]] = 1.0
    r = quality.evaluate(scores, labels, threshold=0.5)
    assert (r.events_detected, r.mean_delay) == (1, 2.0)


def test_tolerance_extends_a_short_event_after_its_start() -> None:
    labels = np.zeros(10, int)
    labels[3] = 1
    scores = np.zeros(10)
    scores[5] = 1.0
    for tolerance, detected in ((0, 0), (1, 0), (2, 1), (5, 1)):
        r = quality.evaluate(scores, labels, 0.5, tolerance=tolerance)
        assert r.events_detected == detected
    assert quality.evaluate(scores, labels, 0.5, tolerance=2).mean_delay == 2.0


def test_a_detection_before_an_event_does_not_detect_it() -> None:
    labels = np.array([0, 0, 1, 1, 0])
    scores = np.array([0, 1.0, 0, 0, 0])
    assert quality.evaluate(scores, labels, 0.5).events_detected == 0


def test_aggregate_sums_counts_and_keeps_events_apart() -> None:
    a = (np.array([0.1, 0.9, 0.8]), np.array([0, 0, 1]))
    b = (np.array([0.7, 0.2, 0.4]), np.array([1, 1, 0]))
    r = quality.aggregate([a, b], threshold=0.5)
    ra, rb = quality.evaluate(*a, 0.5), quality.evaluate(*b, 0.5)
    assert (r.tp, r.fp, r.fn, r.tn) == (ra.tp + rb.tp, ra.fp + rb.fp, ra.fn + rb.fn, ra.tn + rb.tn)
    assert r.precision == pytest.approx((ra.tp + rb.tp) / (ra.tp + rb.tp + ra.fp + rb.fp))
    assert r.events == 2  # a ends and b starts labelled: two events, not one
    pooled = (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    assert r.roc_auc == pytest.approx(quality.roc_auc(*pooled))


def test_label_column_accepts_numbers_bools_and_words() -> None:
    assert quality.as_labels([0, 1, 2]).tolist() == [False, True, True]
    assert quality.as_labels([" True", "0", "yes", "", "1"]).tolist() == [
        True,
        False,
        True,
        False,
        True,
    ]
    with pytest.raises(ValueError):
        quality.as_labels(["maybe"])
    with pytest.raises(ValueError):
        quality.evaluate(np.zeros(3), np.zeros(2), 0.5)


def test_timestamps_from_numbers_datetime64_and_iso_strings() -> None:
    want = 1_400_000_000.0
    assert quality.to_seconds([want])[0] == want
    assert quality.to_seconds(np.array(["2014-05-13T16:53:20"], "datetime64[s]"))[0] == want
    for text in ("2014-05-13 16:53:20", "2014-05-13T16:53:20Z", "2014-05-13T18:53:20+02:00"):
        assert quality.to_seconds([text])[0] == want, text
    with pytest.raises(ValueError):
        quality.to_seconds(["not a time"])
    with pytest.raises(ValueError):
        quality.to_seconds([""])


TIMES = 1_000_000.0 + 60.0 * np.arange(10)


def test_windows_label_the_rows_within_them(tmp_path) -> None:
    windows = [["1970-01-12 13:48:20", "1970-01-12 13:50:40"], [1_000_420.0, 1_000_450.0]]
    path = tmp_path / "w.json"
    path.write_text(json.dumps(windows))
    labels = quality.labels_from_windows(TIMES, quality.load_windows(path))
    assert np.flatnonzero(labels).tolist() == [2, 3, 4, 7]


def test_nab_windows_table_is_read_by_key_or_file_name() -> None:
    relpath = "realKnownCause/nyc_taxi.csv"
    path = NAB_ROOT / "labels" / "combined_windows.json"
    lines = (NAB_ROOT / "data" / relpath).read_text().splitlines()[1:]
    ts = [line.split(",")[0] for line in lines]
    by_key = quality.load_windows(path, relpath)
    np.testing.assert_array_equal(by_key, quality.load_windows(path, "nyc_taxi.csv"))
    labels = quality.labels_from_windows(ts, by_key)
    spans = quality.events(labels)
    assert len(spans) == len(json.loads(path.read_text())[relpath]) == 5
    starts = [w[0].split(".")[0] for w in json.loads(path.read_text())[relpath]]
    assert [ts[i] for i in spans[:, 0]] == starts
    with pytest.raises(ConfigError):
        quality.load_windows(path)  # many series, none named
    with pytest.raises(ConfigError):
        quality.load_windows(path, "no_such_file.csv")


def test_points_label_the_nearest_row_from_json_or_text(tmp_path) -> None:
    # 30 s past row 2 is a tie (earlier row wins); 10 s before row 6; one far outside.
    points = ["1970-01-12T13:49:10Z", "1970-01-12 13:52:30", "2001-01-01T00:00:00"]
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps(points))
    as_text = tmp_path / "p.txt"
    as_text.write_text("# anomalies\n\n" + "\n".join(points) + "\n")
    for path in (as_json, as_text):
        labels = quality.labels_from_points(TIMES, quality.load_points(path))
        assert np.flatnonzero(labels).tolist() == [2, 6]


def test_points_find_their_row_in_unordered_timestamps() -> None:
    ts = np.array([0.0, 100.0, 50.0, 200.0])
    assert np.flatnonzero(quality.labels_from_points(ts, [55.0, 190.0])).tolist() == [2, 3]


def test_unreadable_label_files_are_config_errors(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    for load in (quality.load_points, quality.load_windows):
        with pytest.raises(ConfigError):
            load(bad)
        with pytest.raises(ConfigError):
            load(tmp_path / "missing.json")
