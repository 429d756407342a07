"""The NAB scorer: NAB's official windowedGaussian output reproduced, and the rules on tiny cases."""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer import nab
from streamer.errors import ConfigError

NAB_ROOT = Path(
    os.environ.get("NAB_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab")
)
REFERENCE = NAB_ROOT / "reference_results"
DETECTOR = "windowedGaussian"
# SCORING.md: NAB's published normalised scores for windowedGaussian.
OFFICIAL = {
    "standard": 39.649523496077585,
    "reward_low_FP_rate": 20.86798582474138,
    "reward_low_FN_rate": 47.4100271583046,
}


@pytest.fixture(scope="module")
def corpus() -> nab.Corpus:
    return nab.load_corpus(NAB_ROOT)


@pytest.fixture(scope="module")
def reference(corpus: nab.Corpus) -> dict[str, np.ndarray]:
    return nab.read_results(REFERENCE, DETECTOR, corpus)


def reference_table(profile: str) -> dict[str, dict[str, str]]:
    """NAB's per-file totals for windowedGaussian (its `<detector>_<profile>_scores.csv`)."""
    path = REFERENCE / DETECTOR / f"{DETECTOR}_{profile}_scores.csv"
    with open(path) as f:
        return {row["File"]: row for row in csv.DictReader(f) if row["Detector"] != "Totals"}


def test_corpus_matches_its_description(corpus: nab.Corpus) -> None:
    assert len(corpus.files) == 58
    assert sum(f.rows for f in corpus.files) == 365_558
    assert corpus.n_windows == 116
    assert sum(f.probation == 750 for f in corpus.files) == 15


def test_reproduces_official_scores_with_stored_thresholds(corpus, reference) -> None:
    results = nab.score_all(corpus, reference, corpus.stored_thresholds(DETECTOR))
    for profile, official in OFFICIAL.items():
        assert results[profile].normalized_score == pytest.approx(official, abs=1e-6)


def test_reproduces_official_scores_with_own_optimisation(corpus, reference) -> None:
    stored = corpus.stored_thresholds(DETECTOR)
    for profile, official in OFFICIAL.items():
        threshold, raw = nab.optimize_threshold(corpus, reference, profile)
        at_stored = nab.score(corpus, reference, profile, stored[profile])
        assert raw >= at_stored.raw_score - 1e-9
        result = nab.score(corpus, reference, profile)
        assert result.threshold == threshold
        assert result.raw_score == pytest.approx(raw, abs=1e-9)
        assert result.normalized_score == pytest.approx(official, abs=1e-6)


def test_per_file_scores_and_counts_match_reference(corpus, reference) -> None:
    for profile in OFFICIAL:
        result = nab.score(corpus, reference, profile, threshold=1.0)
        table = reference_table(profile)
        assert set(table) == set(result.files)
        for relpath, row in table.items():
            got = result.files[relpath]
            assert got.score == pytest.approx(float(row["Score"]), abs=1e-9), relpath
            counts = (got.tp, got.tn, got.fp, got.fn)
            assert counts == tuple(int(row[k]) for k in ("TP", "TN", "FP", "FN")), relpath


def test_per_row_scores_match_reference_column(corpus, reference) -> None:
    for profile in OFFICIAL:
        rows = nab.row_scores(corpus, reference, profile, threshold=1.0)
        for f in corpus.files:
            lines = nab.results_path(REFERENCE, DETECTOR, f.relpath).read_text().splitlines()
            col = lines[0].split(",").index(f"S(t)_{profile}")
            want = np.array([line.split(",")[col] for line in lines[1:]], float)
            np.testing.assert_allclose(rows[f.relpath], want, atol=1e-9, err_msg=f.relpath)


def test_scoring_the_corpus_is_fast(corpus, reference) -> None:
    start = time.perf_counter()
    nab.score_all(corpus, reference)
    elapsed = time.perf_counter() - start
    print(f"\nscore_all, three optimised profiles: {elapsed:.2f} s")
    assert elapsed < 10.0


def test_cli_prints_the_three_profiles(capsys) -> None:
    argv = ["score", str(REFERENCE), "--detector", DETECTOR, "--data", str(NAB_ROOT)]
    assert nab.main(argv) == 0
    out = capsys.readouterr().out
    for profile, official in OFFICIAL.items():
        line = next(line for line in out.splitlines() if line.startswith(profile + " "))
        assert f"{official:.2f}" in line.split()


def test_cli_reports_a_missing_results_folder(tmp_path, capsys) -> None:
    argv = ["score", str(tmp_path), "--detector", DETECTOR, "--data", str(NAB_ROOT)]
    assert nab.main(argv) == 2
    assert "missing" in capsys.readouterr().err


def first_row_detector(corpus: nab.Corpus) -> dict[str, np.ndarray]:
    """Fires once, on the first row of every window: NAB's perfect detector."""
    scores = {}
    for f in corpus.files:
        s = np.zeros(f.rows)
        s[f.windows[:, 0]] = 1.0
        scores[f.relpath] = s
    return scores


def test_perfect_detector_scores_100_and_null_scores_0(corpus) -> None:
    perfect = nab.score_all(corpus, first_row_detector(corpus))
    null = nab.score_all(corpus, {f.relpath: np.full(f.rows, 0.5) for f in corpus.files})
    for profile in OFFICIAL:
        assert perfect[profile].normalized_score == pytest.approx(100.0, abs=1e-9)
        assert null[profile].normalized_score == pytest.approx(0.0, abs=1e-9)
        assert null[profile].threshold > 0.5  # the null detector is best when it never fires


# --- the rules on a tiny hand-built file: 100 rows, probation 15, one window at rows 40..49 ---

ROWS, LEFT, RIGHT = 100, 40, 49
WIDTH = RIGHT - LEFT + 1
A_FP = nab.DEFAULT_PROFILES["standard"].fp


def sigma(y: float) -> float:
    """The scaled sigmoid as SCORING.md states it, for the expected values below."""
    return -1.0 if y > 3 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def tiny_file(relpath: str, rows: int, windows: list[tuple[int, int]]) -> nab.DataFile:
    ts = 1.4e9 + 300.0 * np.arange(rows)
    return nab.DataFile(relpath, ts, np.zeros(rows), np.array(windows, np.int64).reshape(-1, 2))


TINY = nab.Corpus((tiny_file("c/one.csv", ROWS, [(LEFT, RIGHT)]),))


def raw_with_detections(*rows: int, corpus: nab.Corpus = TINY, profile: str = "standard") -> float:
    f = corpus.files[0]
    scores = np.zeros(f.rows)
    scores[list(rows)] = 1.0
    return nab.score(corpus, {f.relpath: scores}, profile, threshold=0.5).raw_score


def test_scaled_sigmoid_matches_the_documented_values() -> None:
    ys = [-1.0, -0.5, 0.0, 0.5, 1.0, 3.0001, 50.0]
    want = [0.98661, 0.84828, 0.0, -0.84828, -0.98661, -1.0, -1.0]
    np.testing.assert_allclose(nab.scaled_sigmoid(np.array(ys)), want, atol=5e-6)


def test_probationary_period_is_15_percent_capped_at_750() -> None:
    assert tiny_file("a.csv", 100, []).probation == 15
    assert tiny_file("b.csv", 4032, []).probation == 604
    assert tiny_file("c.csv", 10_000, []).probation == 750


def test_hit_on_window_start_is_worth_a_tp_and_on_its_end_almost_nothing() -> None:
    assert raw_with_detections(LEFT) == pytest.approx(1.0)
    assert raw_with_detections(RIGHT) == pytest.approx(sigma(-1 / WIDTH) / sigma(-1.0))
    assert 0 < raw_with_detections(RIGHT) < raw_with_detections(LEFT + 5) < 1.0


def test_only_the_first_detection_in_a_window_counts() -> None:
    assert raw_with_detections(LEFT + 2, LEFT + 5, RIGHT) == raw_with_detections(LEFT + 2)
    result = nab.score(TINY, {"c/one.csv": np.isin(np.arange(ROWS), [42, 45]) * 1.0}, "standard")
    assert (result.files["c/one.csv"].tp, result.files["c/one.csv"].windows_detected) == (2, 1)


def test_missed_window_costs_a_fn() -> None:
    for profile in ("standard", "reward_low_FN_rate"):
        assert raw_with_detections(profile=profile) == -TINY.profiles[profile].fn


def test_false_alarm_before_any_window_costs_a_full_fp() -> None:
    assert raw_with_detections(LEFT, 20) == pytest.approx(1.0 - A_FP)


def test_false_alarm_just_after_a_window_costs_little_and_far_after_a_full_fp() -> None:
    near = raw_with_detections(LEFT, RIGHT + 1) - 1.0
    assert near == pytest.approx(A_FP * sigma(1 / (WIDTH - 1)))
    assert -A_FP < near < 0
    far = RIGHT + 3 * (WIDTH - 1) + 1  # y just past 3
    assert raw_with_detections(LEFT, far) - 1.0 == pytest.approx(-A_FP)


def test_probationary_rows_never_count() -> None:
    assert raw_with_detections(0, 14) == raw_with_detections()
    result = nab.score(TINY, {"c/one.csv": (np.arange(ROWS) < 15) * 1.0}, "standard", 0.5)
    f = result.files["c/one.csv"]
    assert (f.tp, f.fp, f.fn, f.tn) == (0, 0, WIDTH, ROWS - 15 - WIDTH)


def test_window_inside_probation_is_neither_hit_nor_miss() -> None:
    corpus = nab.Corpus((tiny_file("c/early.csv", ROWS, [(2, 8), (LEFT, RIGHT)]),))
    assert corpus.n_windows == 1
    assert raw_with_detections(LEFT, corpus=corpus) == pytest.approx(1.0)


def test_malformed_windows_are_refused() -> None:
    for windows in ([(10, 5)], [(10, 20), (15, 30)], [(90, 120)]):
        with pytest.raises(ConfigError):
            tiny_file("bad.csv", ROWS, windows)


@st.composite
def tiny_corpora(draw) -> tuple[nab.Corpus, dict[str, np.ndarray]]:
    """Small files with random disjoint windows and scores from a few levels, so ties abound."""
    files, scores = [], {}
    for i in range(draw(st.integers(1, 3))):
        rows = draw(st.integers(20, 80))
        cuts = sorted(draw(st.sets(st.integers(0, rows - 1), max_size=6)))
        pairs = zip(cuts[::2], cuts[1::2], strict=False)
        windows = [(a, b if draw(st.booleans()) else a) for a, b in pairs]  # some one row wide
        files.append(tiny_file(f"c/f{i}.csv", rows, windows))
        levels = draw(
            st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=rows, max_size=rows)
        )
        scores[f"c/f{i}.csv"] = np.array(levels)
    return nab.Corpus(tuple(files)), scores


@settings(max_examples=60, deadline=None)
@given(tiny_corpora(), st.sampled_from(list(OFFICIAL)))
def test_optimisation_finds_the_best_of_all_candidate_thresholds(case, profile) -> None:
    corpus, scores = case
    threshold, raw = nab.optimize_threshold(corpus, scores, profile)
    candidates = sorted({1.1, *np.concatenate(list(scores.values())).tolist()}, reverse=True)
    brute = [nab.score(corpus, scores, profile, t).raw_score for t in candidates]
    best = int(np.argmax(np.round(brute, 12)))
    assert raw == pytest.approx(brute[best], abs=1e-9)
    assert threshold == candidates[best]


def test_results_round_trip_through_the_nab_layout(tmp_path) -> None:
    f = TINY.files[0]
    scores = np.linspace(0, 1, f.rows)
    path = nab.write_results(tmp_path, "mine", f.relpath, f.timestamps, f.values, scores, f.labels)
    assert path == tmp_path / "mine" / "c" / "mine_one.csv"
    assert path.read_text().splitlines()[0] == "timestamp,value,anomaly_score,label"
    back = nab.read_results(tmp_path, "mine", TINY)
    np.testing.assert_array_equal(back[f.relpath], scores)


def test_real_file_labels_and_timestamps_survive_writing(corpus, tmp_path) -> None:
    f = corpus["realKnownCause/nyc_taxi.csv"]
    path = nab.write_results(
        tmp_path, "mine", f.relpath, f.timestamps, f.values, f.values, f.labels
    )
    data = (NAB_ROOT / "data" / f.relpath).read_text().splitlines()
    written = path.read_text().splitlines()
    assert [line.split(",")[0] for line in written] == [line.split(",")[0] for line in data]
    assert sum(int(line.rsplit(",", 1)[1]) for line in written[1:]) == int(
        (f.windows[:, 1] - f.windows[:, 0] + 1).sum()
    )


@pytest.mark.parametrize("name", ["my_detector", "standardish", "", "a/b"])
def test_detector_names_nab_cannot_parse_are_refused(tmp_path, name) -> None:
    f = TINY.files[0]
    with pytest.raises(ConfigError):
        nab.write_results(tmp_path, name, f.relpath, f.timestamps, f.values, f.values, f.labels)


def test_results_with_wrong_rows_are_refused(tmp_path) -> None:
    f = TINY.files[0]
    short = slice(0, f.rows - 1)
    nab.write_results(
        tmp_path,
        "short",
        f.relpath,
        f.timestamps[short],
        f.values[short],
        f.values[short],
        f.labels[short],
    )
    scores = nab.read_results(tmp_path, "short", TINY)
    with pytest.raises(ConfigError, match="scores for"):
        nab.score(TINY, scores, "standard")
