"""The Numenta Anomaly Benchmark's score, reimplemented from its written rules (SCORING.md).

NAB is the public benchmark whose published numbers a streaming detector is compared
against, and its score is not a standard metric: a hit early in a labelled window
earns more than a late one, false alarms cost more the further they fall from a
window, and one threshold per profile is tuned over the whole corpus. So it has its
own module, and it is checked against NAB's official output in the tests.

The work is split by what it depends on. Which rows are scored, which window each
falls in and how far it is from a window depend on the corpus only (`Layout`, built
once). A profile turns that into one weight per row. A threshold turns weights into
a score, and the exhaustive threshold search is one sort and one cumulative sum over
the pooled corpus, so a detector is scored for all three profiles in about a second.

Usage: python -m streamer.nab score RESULTS_DIR --detector NAME --data NAB_ROOT
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .quality import labels_from_spans, to_seconds, window_bounds

PROBATION_FRACTION = 0.15
PROBATION_CAP = 750  # NAB writes it 0.15 * 5000
NO_DETECTION = 1.1
RESULT_COLUMNS = ("timestamp", "value", "anomaly_score", "label")


@dataclass(frozen=True)
class Profile:
    """The cost weights of one scoring profile (NAB's `CostMatrix`; its `tnWeight` is unused)."""

    name: str
    tp: float
    fp: float
    fn: float


DEFAULT_PROFILES = {
    p.name: p
    for p in (
        Profile("standard", tp=1.0, fp=0.11, fn=1.0),
        Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
        Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
    )
}


@dataclass(frozen=True)
class DataFile:
    """One series of the corpus: `relpath` is `<category>/<file>.csv`; windows are inclusive rows [K, 2]."""

    relpath: str
    timestamps: np.ndarray
    values: np.ndarray
    windows: np.ndarray

    def __post_init__(self) -> None:
        w = self.windows
        ordered = w.ndim == 2 and w.shape[1] == 2 and np.all(w[:, 0] <= w[:, 1])
        if not (ordered and np.all(w[1:, 0] > w[:-1, 1]) and np.all((w >= 0) & (w < self.rows))):
            raise ConfigError(
                f"{self.relpath}: windows must be disjoint, in order and within the rows"
            )

    @property
    def rows(self) -> int:
        return len(self.values)

    @property
    def probation(self) -> int:
        """Leading rows that are never scored: 15% of the file, at most 750 rows."""
        return min(math.floor(PROBATION_FRACTION * self.rows), PROBATION_CAP)

    @property
    def labels(self) -> np.ndarray:
        """One bool per row: inside a window (NAB's `label` column)."""
        return labels_from_spans(self.rows, self.windows)


@dataclass(frozen=True)
class Layout:
    """The profile-free geometry of the corpus, over its scored rows pooled in file order.

    Per scored row: `file` (index into `Corpus.files`), `window` (corpus-wide window
    number, -1 outside) and `y`, the argument of the scaled sigmoid: inside a window
    -(rows to its end + 1)/width, after one (row - its end)/(width - 1), +inf before
    any. Per window: `window_file` and `window_first`, its first scored row. `offsets`
    delimit each file's rows.
    """

    file: np.ndarray
    window: np.ndarray
    y: np.ndarray
    window_file: np.ndarray
    window_first: np.ndarray
    offsets: np.ndarray

    def weights(self, profile: Profile) -> np.ndarray:
        """What a detection on each row is worth under `profile` (NAB's sweep score)."""
        sig = scaled_sigmoid(self.y)
        return np.where(self.window >= 0, profile.tp * sig / scaled_sigmoid(-1.0), profile.fp * sig)


@dataclass(frozen=True)
class Corpus:
    """The data files with their windows, the profiles and NAB's stored thresholds."""

    files: tuple[DataFile, ...]
    profiles: Mapping[str, Profile] = field(default_factory=lambda: dict(DEFAULT_PROFILES))
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.files:
            raise ConfigError("a corpus needs at least one data file")

    def __getitem__(self, relpath: str) -> DataFile:
        return self._by_path[relpath]

    @cached_property
    def _by_path(self) -> dict[str, DataFile]:
        return {f.relpath: f for f in self.files}

    @property
    def n_windows(self) -> int:
        """Windows that reach past the probationary period: the ones that are scored."""
        return len(self.layout.window_file)

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise ConfigError(f"no scoring profile {name!r}; known: {', '.join(self.profiles)}")
        return self.profiles[name]

    def stored_thresholds(self, detector: str) -> dict[str, float]:
        """NAB's published per-profile thresholds for `detector` (config/thresholds.json)."""
        if detector not in self.thresholds:
            raise ConfigError(f"no stored thresholds for detector {detector!r}")
        return {p: float(v["threshold"]) for p, v in self.thresholds[detector].items()}

    @cached_property
    def layout(self) -> Layout:
        parts = [_file_layout(f) for f in self.files]
        file = np.concatenate([np.full(len(y), i, np.int64) for i, (_, y, _) in enumerate(parts)])
        base = np.cumsum([0] + [n for _, _, n in parts])
        window = np.concatenate(
            [np.where(w >= 0, w + b, -1) for (w, _, _), b in zip(parts, base[:-1], strict=True)]
        )
        inside = np.flatnonzero(window >= 0)
        window_first = inside[np.unique(window[inside], return_index=True)[1]]
        return Layout(
            file=file,
            window=window,
            y=np.concatenate([y for _, y, _ in parts]),
            window_file=file[window_first],
            window_first=window_first,
            offsets=np.cumsum([0] + [len(y) for _, y, _ in parts]),
        )


def _file_layout(f: DataFile) -> tuple[np.ndarray, np.ndarray, int]:
    """(window of each scored row or -1, its sigmoid argument, number of scored windows) of `f`.

    Windows are numbered from the first one that ends after the probationary period:
    one that ends inside it has no scored row and is neither a hit nor a miss.
    """
    rows = np.arange(f.probation, f.rows)
    window = np.full(len(rows), -1, np.int64)
    y = np.full(len(rows), np.inf)
    if len(f.windows) == 0:
        return window, y, 0
    left, right = f.windows[:, 0], f.windows[:, 1]
    unscored = int(np.searchsorted(right, f.probation))
    width = right - left + 1
    k = np.searchsorted(left, rows, side="right") - 1
    inside = (k >= 0) & (rows <= right[np.maximum(k, 0)])
    ended = np.searchsorted(right, rows, side="left") - 1
    after = ~inside & (ended >= 0)
    window[inside] = k[inside] - unscored
    y[inside] = -(right[k[inside]] - rows[inside] + 1) / width[k[inside]]
    with np.errstate(divide="ignore"):
        gap = rows[after] - right[ended[after]]
        y[after] = gap / (width[ended[after]] - 1)
    return window, y, len(right) - unscored


def scaled_sigmoid(y: float | np.ndarray) -> np.ndarray:
    """2/(1 + e^(5y)) - 1, and exactly -1 beyond y = 3 (a false alarm far from any window)."""
    y = np.asarray(y, np.float64)
    return np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 4.0))) - 1.0)


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows of fields) of a plain CSV (NAB's files have no quoting)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if not lines:
        raise ConfigError(f"{path} is empty")
    return lines[0].split(","), [line.split(",") for line in lines[1:] if line]


def _column(path: Path, header: list[str], rows: list[list[str]], name: str) -> list[str]:
    if name not in header:
        raise ConfigError(f"{path} has no column {name!r} (columns: {', '.join(header)})")
    i = header.index(name)
    try:
        return [r[i] for r in rows]
    except IndexError:
        raise ConfigError(f"{path} has a row with fewer than {i + 1} fields") from None


def _floats(path: Path, text: list[str]) -> np.ndarray:
    try:
        return np.array(text, np.float64)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None


def load_profiles(path: Path) -> dict[str, Profile]:
    """NAB's profiles.json: name -> {"CostMatrix": {"tpWeight", "fpWeight", "fnWeight", ...}}."""
    raw = _load_json(path)
    try:
        return {
            name: Profile(
                name, *(float(p["CostMatrix"][k]) for k in ("tpWeight", "fpWeight", "fnWeight"))
            )
            for name, p in raw.items()
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: not a NAB profiles file ({e})") from None


def load_corpus(nab_root: str | Path) -> Corpus:
    """The corpus at `nab_root` (data/, labels/combined_windows.json, config/), in sorted file order."""
    root = Path(nab_root)
    windows = _load_json(root / "labels" / "combined_windows.json")
    files = []
    for relpath in sorted(windows):
        path = root / "data" / relpath
        header, rows = _read_table(path)
        timestamps = to_seconds(_column(path, header, rows, "timestamp"))
        values = _floats(path, _column(path, header, rows, "value"))
        spans = to_seconds(np.asarray(windows[relpath])).reshape(-1, 2)
        bounds = window_bounds(timestamps, spans)
        if len(bounds) != len(spans):
            raise ConfigError(f"a window of {relpath} covers no row of its data file")
        files.append(DataFile(relpath, timestamps, values, bounds))
    thresholds_path = root / "config" / "thresholds.json"
    return Corpus(
        files=tuple(files),
        profiles=load_profiles(root / "config" / "profiles.json"),
        thresholds=_load_json(thresholds_path) if thresholds_path.is_file() else {},
    )


def results_path(root: str | Path, detector: str, relpath: str) -> Path:
    """Where NAB keeps a detector's output for one data file: `<root>/<detector>/<category>/<detector>_<file>`."""
    rel = Path(relpath)
    return Path(root) / detector / rel.parent / f"{detector}_{rel.name}"


def read_results(results_dir: str | Path, detector: str, corpus: Corpus) -> dict[str, np.ndarray]:
    """Each data file's `anomaly_score` column from a results folder in NAB's layout.

    Every file of the corpus must be there with one row per data row: NAB itself skips a
    missing file silently, which inflates the score.
    """
    scores = {}
    missing = []
    for f in corpus.files:
        path = results_path(results_dir, detector, f.relpath)
        if not path.is_file():
            missing.append(f.relpath)
            continue
        header, rows = _read_table(path)
        scores[f.relpath] = _floats(path, _column(path, header, rows, "anomaly_score"))
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(corpus.files)} result files missing for {detector!r} "
            f"under {results_dir}, e.g. {results_path(results_dir, detector, missing[0])}"
        )
    return scores


def check_detector_name(detector: str, profiles: Sequence[str] = tuple(DEFAULT_PROFILES)) -> None:
    """NAB splits file names on `_` and finds profiles by substring, so both are refused in a name."""
    if not detector or "_" in detector or "/" in detector:
        raise ConfigError(f"detector name {detector!r} must be non-empty, without '_' or '/'")
    clash = [p for p in profiles if p in detector]
    if clash:
        raise ConfigError(f"detector name {detector!r} contains the profile name {clash[0]!r}")


def write_results(
    root: str | Path,
    detector: str,
    relpath: str,
    timestamps: np.ndarray,
    values: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
) -> Path:
    """Write one results file in NAB's layout (columns timestamp,value,anomaly_score,label)."""
    check_detector_name(detector)
    stamps = np.round(to_seconds(timestamps) * 1e6).astype(np.int64).astype("datetime64[us]")
    text = np.char.replace(np.datetime_as_string(stamps, unit="s"), "T", " ").tolist()
    columns = (np.asarray(values, np.float64), np.asarray(scores, np.float64), np.asarray(labels))
    if any(len(c) != len(text) for c in columns):
        raise ValueError("timestamps, values, scores and labels must be of one length")
    lines = [",".join(RESULT_COLUMNS)]
    lines += [
        f"{t},{v!r},{s!r},{int(lab)}"
        for t, v, s, lab in zip(text, *(c.tolist() for c in columns), strict=True)
    ]
    path = results_path(root, detector, relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class FileResult:
    """One file at the chosen threshold: its raw score and NAB's row counts (probation excluded)."""

    score: float
    tp: int
    fp: int
    fn: int
    tn: int
    windows: int
    windows_detected: int


@dataclass(frozen=True)
class ProfileResult:
    """A detector's result under one profile: threshold, raw and normalised (0..100) scores."""

    profile: str
    threshold: float
    raw_score: float
    normalized_score: float
    null_score: float
    perfect_score: float
    files: dict[str, FileResult]


def _pool(corpus: Corpus, scores_by_file: Mapping[str, np.ndarray]) -> np.ndarray:
    """The scored rows' anomaly scores of every file, in layout order; checks count and shape."""
    missing = [f.relpath for f in corpus.files if f.relpath not in scores_by_file]
    if missing:
        raise ConfigError(f"no scores for {len(missing)} corpus files, e.g. {missing[0]}")
    parts = []
    for f in corpus.files:
        s = np.asarray(scores_by_file[f.relpath], np.float64)
        if s.shape != (f.rows,):
            raise ConfigError(f"{f.relpath}: {s.shape} scores for {f.rows} data rows")
        if not np.all(np.isfinite(s)):
            raise ConfigError(
                f"{f.relpath}: scores must be finite (row {np.argmin(np.isfinite(s))})"
            )
        parts.append(s[f.probation :])
    return np.concatenate(parts) if parts else np.zeros(0)


def _null_and_perfect(corpus: Corpus, profile: Profile) -> tuple[float, float]:
    """Raw scores of the detector that never fires and of one that hits every window's first row."""
    return -profile.fn * corpus.n_windows, profile.tp * corpus.n_windows


def _sweep(
    layout: Layout, pooled: np.ndarray, weights: np.ndarray, profile: Profile, null: float
) -> tuple[np.ndarray, np.ndarray]:
    """(candidate thresholds from the highest, corpus raw score at each).

    Lowering the threshold past a row changes the score by the row's weight if it is
    outside every window, and inside one by how much it raises that window's best
    detection so far (from -A_FN for a window not yet hit). So the score at every
    candidate is a cumulative sum over rows sorted by descending anomaly score.
    """
    if not len(pooled):
        return np.array([NO_DETECTION]), np.array([null])
    order = np.argsort(-pooled, kind="stable")
    ranked, w, win = pooled[order], weights[order], layout.window[order]
    gain = np.where(win < 0, w, 0.0)
    inside = np.flatnonzero(win >= 0)
    by_window = inside[np.argsort(win[inside], kind="stable")]
    if len(by_window):
        group = win[by_window]
        # A running max restarted at each window: offsets keep one window's values above the last's.
        lift = group * (np.ptp(w[by_window]) + 1.0)
        best = np.maximum.accumulate(w[by_window] + lift) - lift
        first = np.r_[True, group[1:] != group[:-1]]
        gain[by_window] = best - np.where(first, -profile.fn, np.roll(best, 1))
    totals = null + np.cumsum(gain)
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    top = max(NO_DETECTION, np.nextafter(ranked[0], np.inf))
    return np.r_[top, ranked[last]], np.r_[null, totals[last]]


def _best_threshold(corpus: Corpus, pooled: np.ndarray, profile: Profile) -> tuple[float, float]:
    layout = corpus.layout
    null, _ = _null_and_perfect(corpus, profile)
    thresholds, totals = _sweep(layout, pooled, layout.weights(profile), profile, null)
    best = int(np.argmax(totals))
    return float(thresholds[best]), float(totals[best])


def optimize_threshold(
    corpus: Corpus, scores_by_file: Mapping[str, np.ndarray], profile: str
) -> tuple[float, float]:
    """(threshold, corpus raw score) maximising the raw score; on a tie the highest threshold wins.

    Candidates are 1.1 (no detection) and every distinct score, as in NAB's exhaustive sweep.
    """
    return _best_threshold(corpus, _pool(corpus, scores_by_file), corpus.profile(profile))


def _tally(
    corpus: Corpus, pooled: np.ndarray, profile: Profile, threshold: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(each scored row's contribution to the score, per-file counts) at `threshold`.

    A window's value (its best detection, or -A_FN) sits on its first scored row and
    every false alarm on its own row, as in NAB's `S(t)` column, so a file's raw score
    is the sum of its rows.
    """
    layout = corpus.layout
    weights = layout.weights(profile)
    n_files = len(corpus.files)
    flagged = pooled >= threshold
    inside = layout.window >= 0
    hit = flagged & inside
    false_alarm = flagged & ~inside
    best = np.full(corpus.n_windows, -profile.fn)
    np.maximum.at(best, layout.window[hit], weights[hit])
    detected = np.zeros(corpus.n_windows, bool)
    detected[layout.window[hit]] = True
    rows = np.zeros(len(pooled))
    rows[false_alarm] = weights[false_alarm]
    rows[layout.window_first] = best

    def per_file(mask: np.ndarray) -> np.ndarray:
        return np.bincount(layout.file[mask], minlength=n_files)

    counts = {
        "score": np.bincount(layout.file, rows, minlength=n_files),
        "tp": per_file(hit),
        "fp": per_file(false_alarm),
        "fn": per_file(inside & ~flagged),
        "tn": per_file(~inside & ~flagged),
        "windows": np.bincount(layout.window_file, minlength=n_files),
        "windows_detected": np.bincount(layout.window_file, detected, minlength=n_files),
    }
    return rows, counts


def row_scores(
    corpus: Corpus, scores_by_file: Mapping[str, np.ndarray], profile: str, threshold: float
) -> dict[str, np.ndarray]:
    """NAB's per-row `S(t)_<profile>` column of every file (zeros on probationary rows)."""
    rows, _ = _tally(corpus, _pool(corpus, scores_by_file), corpus.profile(profile), threshold)
    offsets = corpus.layout.offsets
    return {
        f.relpath: np.r_[np.zeros(f.probation), rows[offsets[i] : offsets[i + 1]]]
        for i, f in enumerate(corpus.files)
    }


def score(
    corpus: Corpus,
    scores_by_file: Mapping[str, np.ndarray],
    profile: str,
    threshold: float | None = None,
) -> ProfileResult:
    """A detector's NAB result under `profile`, at `threshold` or, if None, at the optimal one."""
    p = corpus.profile(profile)
    pooled = _pool(corpus, scores_by_file)
    if threshold is None:
        threshold, _ = _best_threshold(corpus, pooled, p)
    _, counts = _tally(corpus, pooled, p, threshold)
    raw = float(counts["score"].sum())
    null, perfect = _null_and_perfect(corpus, p)
    normalized = 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan
    files = {
        f.relpath: FileResult(
            score=float(counts["score"][i]),
            **{k: int(v[i]) for k, v in counts.items() if k != "score"},
        )
        for i, f in enumerate(corpus.files)
    }
    return ProfileResult(profile, float(threshold), raw, normalized, null, perfect, files)


def score_all(
    corpus: Corpus,
    scores_by_file: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, ProfileResult]:
    """Every profile of the corpus, at the given per-profile thresholds or optimised ones."""
    return {
        name: score(corpus, scores_by_file, name, None if thresholds is None else thresholds[name])
        for name in corpus.profiles
    }


def format_table(results: Mapping[str, ProfileResult]) -> str:
    """The per-profile results as a fixed-width text table."""
    head = f"{'profile':<20} {'threshold':>10} {'raw':>10} {'score':>8} {'windows hit':>12} {'FP rows':>8}"
    lines = [head, "-" * len(head)]
    for r in results.values():
        hit = sum(f.windows_detected for f in r.files.values())
        total = sum(f.windows for f in r.files.values())
        fp = sum(f.fp for f in r.files.values())
        lines.append(
            f"{r.profile:<20} {r.threshold:>10.6f} {r.raw_score:>10.4f} {r.normalized_score:>8.2f}"
            f" {f'{hit}/{total}':>12} {fp:>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.nab",
        description="Score a detector's results folder with the NAB v1.1 rules.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="score <results_dir>/<detector>/... for the three profiles")
    sc.add_argument("results_dir", type=Path, help="folder holding <detector>/<category>/*.csv")
    sc.add_argument("--detector", required=True, help="detector name (the subfolder)")
    sc.add_argument("--data", required=True, type=Path, help="NAB root: data/, labels/, config/")
    sc.add_argument(
        "--stored-thresholds",
        action="store_true",
        help="use NAB's published thresholds for this detector instead of optimising",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        corpus = load_corpus(args.data)
        scores = read_results(args.results_dir, args.detector, corpus)
        stored = corpus.stored_thresholds(args.detector) if args.stored_thresholds else None
        results = score_all(corpus, scores, stored)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(
        f"{len(corpus.files)} files scored in {time.perf_counter() - started:.2f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
