"""How good a detector is on a labelled series: point-wise, threshold-free and event-wise.

Three views, because each hides something the others show. Point-wise counts at one
threshold are what an operator lives with (false alarms per row). ROC and PR AUC judge
the ranking of scores without choosing a threshold, so two models can be compared
before anyone tunes one. Event-wise recall and delay say whether an incident was
noticed at all, and how late: a detector that flags the first row of a long incident
has a poor point-wise recall but is exactly what an operator wants.

Labels come from one of three places: a label column in the data, windows of
timestamps (NAB's format), or a list of anomaly timestamps. All become one boolean
per row, so every metric is computed the same way whatever the source.

Timestamps are float epoch seconds (UTC) throughout, as in the engine; `to_seconds`
turns numbers, datetime64 values or ISO 8601 strings into that.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError

COUNT_FIELDS = ("tp", "fp", "fn", "tn", "events", "events_detected", "delay_total")
TRUE_WORDS = frozenset({"1", "true", "yes"})
FALSE_WORDS = frozenset({"0", "false", "no", ""})


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class QualityReport:
    """Counts at one threshold plus the threshold-free AUCs.

    Only counts are stored and every rate is derived from them, so summing the counts
    of many series (`aggregate`) gives micro-averaged rates for free. Rates whose
    denominator is zero are NaN, never a made-up 0 or 1.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int
    events: int
    events_detected: int
    delay_total: int
    roc_auc: float
    pr_auc: float

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def false_alarm_rate(self) -> float:
        """Share of normal rows flagged (FP / negatives)."""
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def missed_alarm_rate(self) -> float:
        """Share of anomalous rows not flagged (FN / positives)."""
        return _ratio(self.fn, self.tp + self.fn)

    @property
    def event_recall(self) -> float:
        return _ratio(self.events_detected, self.events)

    @property
    def mean_delay(self) -> float:
        """Rows from an event's start to its first detection, over the detected events."""
        return _ratio(self.delay_total, self.events_detected)

    def to_dict(self) -> dict[str, float | int | None]:
        """Fields and derived rates, JSON-ready: NaN becomes None."""
        derived = ("precision", "recall", "f1", "false_alarm_rate", "missed_alarm_rate")
        d = asdict(self) | {k: getattr(self, k) for k in (*derived, "event_recall", "mean_delay")}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def as_labels(column: Sequence | np.ndarray) -> np.ndarray:
    """A label column (bools, 0/1 numbers or words like "true"/"0") as a boolean array."""
    arr = np.asarray(column)
    if arr.dtype.kind == "b":
        return arr.copy()
    if arr.dtype.kind in "iuf":
        if not np.all(np.isfinite(arr)):
            raise ValueError("labels must be finite")
        return arr != 0
    words = np.char.lower(np.char.strip(arr.astype(str)))
    unknown = sorted(set(words.tolist()) - TRUE_WORDS - FALSE_WORDS)
    if unknown:
        raise ValueError(f"labels must be 0/1 or true/false, got {unknown[:5]}")
    return np.isin(words, list(TRUE_WORDS))


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64)
    y = as_labels(labels)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be 1-D and of one length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, y


def _sweep(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct thresholds, highest first; TP and FP counts at each), for `score >= t`.

    Tied scores enter together, which is what makes every metric built on this
    handle ties correctly: no threshold can separate them.
    """
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    hits = y[order]
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    tp = np.cumsum(hits)[last]
    fp = last + 1 - tp
    return ranked[last], tp, fp


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN unless both classes are present."""
    s, y = _check(scores, labels)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return math.nan
    _, tp, fp = _sweep(s, y)
    tpr = np.r_[0.0, tp / pos]
    fpr = np.r_[0.0, fp / neg]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def pr_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision: the precision at each threshold weighted by the recall it adds.

    The step-wise sum, not a trapezoid: interpolating between PR points overstates the
    area. NaN unless both classes are present.
    """
    s, y = _check(scores, labels)
    pos = int(y.sum())
    if pos == 0 or pos == len(y):
        return math.nan
    _, tp, fp = _sweep(s, y)
    recall_gain = np.diff(np.r_[0, tp]) / pos
    return float(np.sum(recall_gain * tp / (tp + fp)))


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising point-wise F1 over every distinct score; ties keep the highest.

    Pass the concatenation of many series for a micro-averaged choice. With no positive
    row F1 is undefined and both are NaN.
    """
    s, y = _check(scores, labels)
    pos = int(y.sum())
    if pos == 0:
        return math.nan, math.nan
    thresholds, tp, fp = _sweep(s, y)
    f1 = 2.0 * tp / (tp + fp + pos)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def events(labels: np.ndarray) -> np.ndarray:
    """Contiguous runs of labelled rows as inclusive [start, end] row pairs, shape [K, 2]."""
    y = as_labels(labels).astype(np.int8)
    edges = np.diff(np.r_[0, y, 0])
    return np.column_stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1])


def event_delays(
    detections: np.ndarray, spans: np.ndarray, tolerance: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(detected [K], delay in rows [K]) of each event in `spans`.

    An event counts as detected by a detection inside it or up to `tolerance` rows
    after its start, whichever reaches further: a one-row label says when something
    happened, and a detector may fairly need a few readings to see it.
    """
    if tolerance < 0:
        raise ValueError("tolerance must be >= 0")
    hits = np.flatnonzero(detections)
    starts, ends = spans[:, 0], spans[:, 1]
    k = np.searchsorted(hits, starts)
    first = hits[np.minimum(k, len(hits) - 1)] if len(hits) else np.zeros_like(starts)
    reach = np.maximum(ends, starts + tolerance)
    detected = (k < len(hits)) & (first <= reach)
    return detected, np.where(detected, first - starts, 0)


def evaluate(
    scores: np.ndarray, labels: np.ndarray, threshold: float, tolerance: int = 0
) -> QualityReport:
    """Every metric of one series: `scores` [T], `labels` [T]; a row is flagged when score >= threshold."""
    s, y = _check(scores, labels)
    flagged = s >= threshold
    spans = events(y)
    detected, delays = event_delays(flagged, spans, tolerance)
    return QualityReport(
        threshold=float(threshold),
        tp=int(np.count_nonzero(flagged & y)),
        fp=int(np.count_nonzero(flagged & ~y)),
        fn=int(np.count_nonzero(~flagged & y)),
        tn=int(np.count_nonzero(~flagged & ~y)),
        events=len(spans),
        events_detected=int(detected.sum()),
        delay_total=int(delays.sum()),
        roc_auc=roc_auc(s, y),
        pr_auc=pr_auc(s, y),
    )


def aggregate(
    series: Iterable[tuple[np.ndarray, np.ndarray]], threshold: float, tolerance: int = 0
) -> QualityReport:
    """One report over many (scores, labels) series: counts summed, AUCs over the pooled rows.

    Events never span two series, which is why this is not `evaluate` on the
    concatenation.
    """
    pairs = [_check(s, y) for s, y in series]
    if not pairs:
        raise ValueError("aggregate needs at least one series")
    parts = [evaluate(s, y, threshold, tolerance) for s, y in pairs]
    pooled_s = np.concatenate([s for s, _ in pairs])
    pooled_y = np.concatenate([y for _, y in pairs])
    return QualityReport(
        threshold=float(threshold),
        **{f: sum(getattr(p, f) for p in parts) for f in COUNT_FIELDS},
        roc_auc=roc_auc(pooled_s, pooled_y),
        pr_auc=pr_auc(pooled_s, pooled_y),
    )


def _one_seconds(text: str) -> float:
    """One timestamp written as epoch seconds or ISO 8601 (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    stamp = dt.datetime.fromisoformat(text.strip())
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _strings_to_seconds(arr: np.ndarray) -> np.ndarray:
    """Numbers written as text are epoch seconds; anything else must be ISO 8601.

    Two fast paths first (all numbers; plain ISO, which numpy parses a few hundred
    times faster than `datetime`). numpy knows no time zones and reads "" as NaT, so
    anything it will not take cleanly, mixtures included, goes item by item.
    """
    try:
        return arr.astype(np.float64)
    except ValueError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stamps = arr.astype("datetime64[us]")
        if not np.isnat(stamps).any():
            return stamps.astype(np.int64) / 1e6
    except (ValueError, UserWarning):
        pass
    return np.array([_one_seconds(str(v)) for v in arr.ravel()], np.float64).reshape(arr.shape)


def to_seconds(values: Sequence | np.ndarray) -> np.ndarray:
    """Timestamps as float epoch seconds from numbers, datetime64 or strings (ISO without a zone: UTC)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        seconds = np.where(
            np.isnat(arr), np.nan, arr.astype("datetime64[us]").astype(np.int64) / 1e6
        )
    elif arr.dtype.kind in "iuf":
        seconds = arr.astype(np.float64)
    else:
        seconds = _strings_to_seconds(arr)
    if not np.all(np.isfinite(seconds)):
        raise ValueError("timestamps must be finite")
    return seconds


def window_bounds(timestamps: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Inclusive [first row, last row] of each (start, end) window in seconds, shape [K, 2].

    A window covers the rows whose timestamp lies within it; a window that covers no
    row is dropped. Rows are found by position, so series with repeated or
    out-of-order timestamps still map each window to one run of rows.
    """
    ts = to_seconds(timestamps)
    bounds = []
    for start, end in np.asarray(windows, np.float64).reshape(-1, 2):
        rows = np.flatnonzero((ts >= start) & (ts <= end))
        if len(rows):
            bounds.append((rows[0], rows[-1]))
    return np.array(bounds, np.int64).reshape(-1, 2)


def labels_from_spans(rows: int, spans: np.ndarray) -> np.ndarray:
    """Boolean labels [rows] from inclusive [first, last] row pairs (the inverse of `events`)."""
    mark = np.zeros(rows + 1, np.int64)
    spans = np.asarray(spans, np.int64).reshape(-1, 2)
    np.add.at(mark, spans[:, 0], 1)
    np.add.at(mark, spans[:, 1] + 1, -1)
    return np.cumsum(mark[:-1]) > 0


def labels_from_windows(timestamps: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Boolean labels [T]: the rows inside any of the (start, end) windows (seconds)."""
    ts = to_seconds(timestamps)
    return labels_from_spans(len(ts), window_bounds(ts, windows))


def labels_from_points(timestamps: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Boolean labels [T]: for each anomaly time, the row nearest to it (the earlier on a tie).

    Times outside the series' span are ignored, so one labels file can serve many
    series.
    """
    ts = to_seconds(timestamps)
    labels = np.zeros(len(ts), bool)
    pts = to_seconds(points).ravel()
    if len(ts) == 0:
        return labels
    pts = pts[(pts >= ts.min()) & (pts <= ts.max())]
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    right = np.clip(np.searchsorted(sorted_ts, pts), 0, len(ts) - 1)
    left = np.maximum(right - 1, 0)
    nearer_left = np.abs(pts - sorted_ts[left]) <= np.abs(sorted_ts[right] - pts)
    labels[order[np.where(nearer_left, left, right)]] = True
    return labels


def _read_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read labels file {path}: {e}") from None


def _pick_entry(table: dict, key: str | None, path: Path) -> list:
    """The entry of a windows table for one series: exact key, else the key ending in its name."""
    if key is None:
        if len(table) == 1:
            return next(iter(table.values()))
        raise ConfigError(f"{path} holds windows for {len(table)} series: name one")
    if key in table:
        return table[key]
    name = Path(key).name
    matches = [k for k in table if Path(k).name == name]
    if len(matches) != 1:
        found = "several" if matches else "no"
        raise ConfigError(f"{path} has {found} windows entries for {key!r}")
    return table[matches[0]]


def load_windows(path: str | Path, key: str | None = None) -> np.ndarray:
    """(start, end) windows in seconds [K, 2] from a JSON file.

    The file is either a list of [start, end] pairs or NAB's table of such lists keyed
    by series (`"<category>/<file>.csv"`); `key` picks the series, by full key or file name.
    """
    path = Path(path)
    data = _read_json(path)
    entry = _pick_entry(data, key, path) if isinstance(data, dict) else data
    try:
        return to_seconds(np.asarray(entry)).reshape(-1, 2)
    except ValueError as e:
        raise ConfigError(f"{path}: windows must be [start, end] timestamp pairs: {e}") from None


def load_points(path: str | Path) -> np.ndarray:
    """Anomaly times in seconds from a JSON list or a text file with one timestamp a line.

    Blank lines and lines starting with `#` in a text file are skipped.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read labels file {path}: {e}") from None
    if text.lstrip().startswith("["):
        items = _read_json(path)
    else:
        items = [line.strip() for line in text.splitlines()]
        items = [line for line in items if line and not line.startswith("#")]
    try:
        return to_seconds(np.asarray(items)).ravel()
    except ValueError as e:
        raise ConfigError(f"{path}: not a list of timestamps: {e}") from None
