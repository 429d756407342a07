"""Sensor series from CSV files: forgiving about what real exports look like, loud about what it dropped.

Real sensor exports have gaps, duplicate or out-of-order timestamps, empty cells,
European separators and the odd corrupted line. None of that should stop a training
run, but none of it should pass silently either: every file yields a `LoadReport`
counting what was dropped and why. Only a file with nothing usable in it is an error.

Rows are kept in file order and only kept when their timestamp is later than the
last kept one, because that is what the daemon does with a live stream.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain, islice, takewhile
from pathlib import Path

import numpy as np

from streamer import sim
from streamer.errors import StreamerError

TIME_NAMES = ("timestamp", "time", "ts", "date", "datetime")
LABEL_NAMES = ("label", "anomaly", "is_anomaly")
DELIMITERS = (",", ";", "\t")
MISSING = frozenset({"", "nan", "na", "n/a", "null", "none", "-"})
TRUE_LABELS = frozenset({"1", "true", "yes", "t", "y"})
FALSE_LABELS = frozenset({"0", "false", "no", "f", "n", ""})
SAMPLE_ROWS = 200
# Epoch numbers are told apart by magnitude: 1e11 s is the year 5138, 1e11 ms is 1973.
EPOCH_UNITS = ((1e17, 1e-9), (1e14, 1e-6), (1e11, 1e-3))
LONG_GAP = 3.0


class DataError(StreamerError):
    """A data file (or a set of them) that cannot be used at all; the message names it."""


@dataclass
class Series:
    """One sensor's history: the same fields as `streamer.sim.Series`, so both feed training."""

    name: str
    ts: np.ndarray  # float64 [T] epoch seconds, strictly increasing
    values: np.ndarray  # float64 [T, C], finite
    channels: list[str]
    labels: np.ndarray | None = None  # bool [T]


@dataclass
class LoadReport:
    """What one file held and what was dropped, by reason."""

    path: str
    delimiter: str
    timestamp_column: str
    value_columns: list[str]
    label_column: str | None
    rows: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    median_period_s: float = math.nan
    long_gaps: int = 0

    def __str__(self) -> str:
        drops = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items()))
        return (
            f"{self.path}: kept {self.kept}/{self.rows} rows"
            f" (dropped: {drops or 'none'}); time={self.timestamp_column!r}"
            f" values={self.value_columns} label={self.label_column!r}"
            f" sep={self.delimiter!r}; median period {self.median_period_s:g} s,"
            f" {self.long_gaps} gaps > {LONG_GAP:g}x median"
        )


@dataclass(frozen=True)
class _Layout:
    """Which column is which, decided from the header and a sample of rows."""

    header: list[str]
    time: int
    values: list[int]
    label: int | None


def sniff_delimiter(text: str) -> str:
    """The delimiter that splits the first lines into the most, equally many, fields.

    csv.Sniffer guesses from character frequencies and is easily fooled by decimal
    commas; counting fields per line over the three separators sensors use is not.
    """
    lines = [line for line in text.splitlines()[:20] if line.strip()]
    best, best_fields = ",", 1
    for delim in DELIMITERS:
        widths = {len(row) for row in csv.reader(lines, delimiter=delim)}
        if len(widths) == 1 and (n := widths.pop()) > best_fields:
            best, best_fields = delim, n
    return best


def parse_float(cell: str, decimal_comma: bool = False) -> float | None:
    """The number in a cell, NaN for a missing marker, None if it is not a number."""
    s = cell.strip()
    if s.lower() in MISSING:
        return math.nan
    if decimal_comma:
        s = s.replace(",", ".")
    try:
        return float(s)
    except ValueError:
        return None


def parse_time(cell: str) -> tuple[float, bool] | None:
    """(value, is_epoch_number) for a timestamp cell, or None if unparsable.

    Epoch numbers are returned raw; their unit (s/ms/us/ns) is decided per file.
    ISO 8601 without a zone is taken as UTC.
    """
    s = cell.strip()
    try:
        number = float(s)
    except ValueError:
        pass
    else:
        return (number, True) if math.isfinite(number) else None
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp(), False


def epoch_scale(raw: np.ndarray) -> float:
    """Seconds per unit of a file's epoch numbers, from their median magnitude."""
    if raw.size == 0:
        return 1.0
    magnitude = float(np.median(np.abs(raw)))
    return next((scale for bound, scale in EPOCH_UNITS if magnitude >= bound), 1.0)


def _find(header: list[str], names: Iterable[str]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def _layout(
    header: list[str], sample: list[list[str]], columns: list[str] | None, decimal_comma: bool
) -> _Layout:
    """Pick the time, value and label columns; raises ValueError saying why none fit."""
    label = _find(header, LABEL_NAMES)
    time = _find(header, TIME_NAMES)
    if time is None:
        time = 1 if label == 0 and len(header) > 1 else 0
    taken = {time, label}
    if columns:
        names = [h.strip() for h in header]
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"no column(s) {missing} (the header has {names})")
        values = [names.index(c) for c in columns]
        clash = [header[i] for i in values if i in taken]
        if clash:
            raise ValueError(f"column(s) {clash} are the timestamp or label, not values")
    else:
        values = [
            i
            for i in range(len(header))
            if i not in taken and _is_numeric([r[i] for r in sample if i < len(r)], decimal_comma)
        ]
    if not values:
        raise ValueError(f"no numeric value column besides the timestamp {header[time]!r}")
    return _Layout(header=header, time=time, values=values, label=label)


def _is_numeric(cells: list[str], decimal_comma: bool) -> bool:
    """Mostly numbers among the non-missing cells: a few corrupt cells do not demote a column."""
    parsed = [parse_float(c, decimal_comma) for c in cells]
    present = [p for p in parsed if p is None or not math.isnan(p)]
    numbers = sum(p is not None for p in present)
    return numbers > 0 and numbers >= 0.8 * len(present)


def _parse_label(cell: str) -> bool | None:
    s = cell.strip().lower()
    if s in TRUE_LABELS:
        return True
    if s in FALSE_LABELS:
        return False
    number = parse_float(s)
    return None if number is None or math.isnan(number) else number != 0.0


class _Rows:
    """Parses data rows one at a time, counting every row it rejects by reason."""

    def __init__(self, layout: _Layout, decimal_comma: bool) -> None:
        self.layout = layout
        self.decimal_comma = decimal_comma
        self.dropped: Counter = Counter()
        self.rows = 0
        self.time: list[float] = []
        self.is_epoch: list[bool] = []
        self.values: list[list[float]] = []
        self.labels: list[bool] = []

    def feed(self, row: list[str]) -> None:
        self.rows += 1
        reason = self._parse(row)
        if reason:
            self.dropped[reason] += 1

    def _parse(self, row: list[str]) -> str | None:
        lay = self.layout
        if len(row) != len(lay.header):
            return "wrong_field_count"
        when = parse_time(row[lay.time])
        if when is None:
            return "bad_timestamp"
        vals = [parse_float(row[i], self.decimal_comma) for i in lay.values]
        if any(v is not None and math.isnan(v) for v in vals):
            return "missing_value"
        if any(v is None or not math.isfinite(v) for v in vals):
            return "bad_value"
        label = False
        if lay.label is not None:
            label = _parse_label(row[lay.label])
            if label is None:
                return "bad_label"
        self.time.append(when[0])
        self.is_epoch.append(when[1])
        self.values.append(vals)
        self.labels.append(label)
        return None

    def timestamps(self) -> np.ndarray:
        raw = np.asarray(self.time, np.float64)
        epoch = np.asarray(self.is_epoch, bool)
        raw[epoch] *= epoch_scale(raw[epoch])
        return raw


def _increasing(ts: np.ndarray) -> np.ndarray:
    """Mask of rows whose timestamp is later than every kept row before them (the running max)."""
    keep = np.ones(len(ts), bool)
    if len(ts) > 1:
        keep[1:] = ts[1:] > np.maximum.accumulate(ts)[:-1]
    return keep


def _nonblank(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    return (row for row in reader if any(cell.strip() for cell in row))


def load_csv(
    path: str | Path,
    *,
    columns: list[str] | None = None,
    delimiter: str | None = None,
    name: str | None = None,
) -> tuple[Series, LoadReport]:
    """One CSV file as a Series plus the report of what was dropped; DataError if nothing is usable."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            delim = delimiter or sniff_delimiter(f.read(1 << 16))
            f.seek(0)
            rows = _nonblank(csv.reader(f, delimiter=delim))
            header = next(rows, None)
            if header is None:
                raise ValueError("the file is empty")
            sample = list(islice(rows, SAMPLE_ROWS))
            if not sample:
                raise ValueError("no data rows after the header")
            decimal_comma = delim != ","
            layout = _layout(header, sample, columns, decimal_comma)
            parsed = _Rows(layout, decimal_comma)
            for row in chain(sample, rows):
                parsed.feed(row)
    except (OSError, csv.Error, ValueError) as e:
        raise DataError(f"{path}: {e}") from None
    return _assemble(path, name or path.stem, delim, parsed)


def _assemble(path: Path, name: str, delim: str, parsed: _Rows) -> tuple[Series, LoadReport]:
    layout = parsed.layout
    ts = parsed.timestamps()
    keep = _increasing(ts)
    report = LoadReport(
        path=str(path),
        delimiter=delim,
        timestamp_column=layout.header[layout.time],
        value_columns=[layout.header[i] for i in layout.values],
        label_column=None if layout.label is None else layout.header[layout.label],
        rows=parsed.rows,
        kept=int(keep.sum()),
        dropped=parsed.dropped,
    )
    if (late := int((~keep).sum())) > 0:
        report.dropped["non_increasing_timestamp"] = late
    if report.kept == 0:
        raise DataError(f"{path}: no usable rows ({report})")
    ts = ts[keep]
    if report.kept > 1:
        gaps = np.diff(ts)
        report.median_period_s = float(np.median(gaps))
        report.long_gaps = int((gaps > LONG_GAP * report.median_period_s).sum())
    series = Series(
        name=name,
        ts=ts,
        values=np.asarray(parsed.values, np.float64).reshape(len(keep), -1)[keep],
        channels=[c.strip() for c in report.value_columns],
        labels=np.asarray(parsed.labels, bool)[keep] if layout.label is not None else None,
    )
    return series, report


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_sources(sources: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(file, series name) for every CSV named by files, folders (searched recursively) or globs.

    A series is named by its path relative to the folder or glob it came from, so
    files of the same name in different subfolders stay distinct.
    """
    found: list[tuple[Path, str]] = []
    for source in sources:
        text = str(source)
        if _has_magic(text):
            files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            root = Path(*takewhile(lambda part: not _has_magic(part), Path(text).parts))
        elif Path(text).is_dir():
            root = Path(text)
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".csv" and p.is_file())
        else:
            root = Path(text).parent
            files = [Path(text)]
        if not files:
            raise DataError(f"{text}: no CSV files found")
        found += [(f, str(f.relative_to(root).with_suffix(""))) for f in files]
    return found


def load_many(
    sources: Iterable[str | Path],
    *,
    columns: list[str] | None = None,
    delimiter: str | None = None,
    echo: Callable[[str], object] | None = print,
) -> tuple[list[Series], list[LoadReport]]:
    """Every CSV under `sources`, each report passed to `echo` (print by default) as it loads."""
    series, reports = [], []
    for path, name in expand_sources(sources):
        s, report = load_csv(path, columns=columns, delimiter=delimiter, name=name)
        if echo is not None:
            echo(str(report))
        series.append(s)
        reports.append(report)
    return series, reports


def univariate(series: Iterable[Series]) -> list[Series]:
    """Each channel as its own series named "<name>/<channel>" with channel "value".

    The daemon sees a multichannel device as one stream per channel (one MQTT topic
    each), so a univariate model is trained on exactly that view of the data.
    """
    return [
        replace(
            s,
            name=f"{s.name}/{channel}" if len(s.channels) > 1 else s.name,
            values=np.asarray(s.values)[:, [i]],
            channels=["value"],
        )
        for s in series
        for i, channel in enumerate(s.channels)
    ]


def data_fingerprint(series: Iterable[Series]) -> str:
    """sha256 over every series' timestamps and values, in order: the identity of a corpus."""
    h = hashlib.sha256()
    for s in series:
        for array in (s.ts, s.values):
            h.update(np.ascontiguousarray(array, np.float64).tobytes())
    return h.hexdigest()


def synthetic(n_series: int, length: int, seed: int, *, anomalies: int = 0) -> list[Series]:
    """The synthetic fleet (`streamer.sim`) with every channel its own stream, as the daemon sees it."""
    return univariate(sim.corpus(n_series, length, seed, anomalies=anomalies))
