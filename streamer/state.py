"""Per-stream state as struct-of-arrays: one preallocated row per stream, a dict from id to row.

Rows, not objects, so a whole wave of streams is gathered and scattered with one
numpy fancy-index per field, and a million streams cost a few hundred bytes each.
The order of last use is a per-row counter, set for a whole wave with one numpy
scatter; the least recently seen streams are found only when the store is full and
a wave brings new ones (one partial sort for all of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress, repeat
from operator import itemgetter

import numpy as np

from .calibration import CalibrationConfig
from .normalize import GapConfig, GapTracker, Normalizer, NormalizerConfig
from .score import Calibrator, Envelope
from .seasonal import Seasonal


def _known_rows(index: dict[str, int], ids: Sequence[str]) -> np.ndarray | None:
    """Rows of `ids` in one C-level call when every id is known (and there are two or more:
    `itemgetter` of one key returns the bare value); None otherwise."""
    if len(ids) < 2:
        return None
    try:
        return np.fromiter(itemgetter(*ids)(index), np.int64, len(ids))
    except KeyError:
        return None


FREE = np.iinfo(np.int64).max  # `last_seen` of a row no stream holds


class StateStore:
    """All per-stream state of one model: recurrent state, inputs, calibration and last outputs."""

    # Fields owned directly by the store (name, dtype, per-row shape: "S" state, "C" channels).
    FIELDS: tuple[tuple[str, str, str], ...] = (
        ("h", "float32", "S"),
        ("pred_mean", "float32", "C"),
        ("pred_log_var", "float32", "C"),
        ("has_pred", "bool", ""),
        ("last_ts", "float64", ""),
        ("seen", "int64", ""),
        ("value", "float32", "C"),
        ("expected", "float32", "C"),
        ("band", "float32", "C"),
        ("raw", "float32", ""),
        ("score", "float32", ""),
        ("contrib", "int16", ""),
        ("anomalous", "bool", ""),
        ("anomalies", "int64", ""),
    )

    def __init__(
        self,
        capacity: int,
        state_size: int,
        channels: int,
        normalizer: NormalizerConfig | None = None,
        gap: GapConfig | None = None,
        calibration: CalibrationConfig | None = None,
    ) -> None:
        self.capacity = capacity
        self.state_size = state_size
        self.channels = channels
        dims = {"S": (state_size,), "C": (channels,), "": ()}
        for name, dtype, dim in self.FIELDS:
            setattr(self, name, np.zeros((capacity, *dims[dim]), dtype))
        self.last_ts[:] = np.nan
        self.normalizer = Normalizer(capacity, channels, normalizer)
        self.gaps = GapTracker(capacity, gap)
        self.calibrator = Calibrator(capacity, calibration)
        self.envelope = Envelope(capacity, channels, calibration)
        self.seasonal = Seasonal(capacity, channels, calibration)
        self.index: dict[str, int] = {}
        self.ids: list[str | None] = [None] * capacity
        # The lookup that last saw each row; a free row is never the least recently seen.
        self.last_seen = np.full(capacity, FREE, np.int64)
        self._clock = 0
        self._free = list(range(capacity - 1, -1, -1))
        self.evicted = 0
        # The ids and rows of the last wave whose streams were all known (see `lookup`).
        self._last_wave: tuple[list[str], np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows, is_new) for stream ids (distinct), allocating rows for new ones.

        A new stream takes a free row or, when none is left, the row of the least
        recently seen stream (counted in `evicted`). Every id looked up becomes the
        most recently seen, and the known ones do so before any room is made, so a
        wave never evicts one of its own streams as long as the capacity is at least
        the wave size.

        This runs for every reading, so the common case (every stream known) is one
        C-level pass (`itemgetter`, `np.fromiter`) and one scatter of the clock: no
        per-id Python, which an ordered dict's `move_to_end` per id was (32 us of 1,024).
        A wave of the same streams in the same order as the last all-known one (a fleet
        reporting in step, the evaluator's replay) skips even that: comparing the id
        lists (1 us when they hold the same strings) stands for the 24 us of look-ups.
        Only this method moves a stream to another row, and it forgets that wave when
        it allocates rows.
        """
        if len(ids) > self.capacity:
            raise ValueError(f"a wave of {len(ids)} streams does not fit {self.capacity} rows")
        index = self.index
        new = np.zeros(len(ids), bool)
        rows = self._rows_of_last_wave(ids)
        if rows is None:
            rows = _known_rows(index, ids)
            if rows is not None:
                self._last_wave = (list(ids), rows.copy())
        if rows is not None:
            self._touch(rows)
            return rows, new
        rows = np.fromiter(map(index.get, ids, repeat(-1)), np.int64, len(ids))
        missing = rows < 0
        self._touch(rows[~missing])
        if missing.any():
            self._last_wave = None
            fresh = list(dict.fromkeys(compress(ids, missing)))  # an id given twice is one stream
            self._make_room(len(fresh))
            for sid in fresh:
                row = self._free.pop()
                index[sid] = row
                self.ids[row] = sid
            new_rows = np.fromiter(map(index.__getitem__, compress(ids, missing)), np.int64)
            rows[missing] = new_rows
            self._touch(new_rows)
            first = np.flatnonzero(missing)
            _, at = np.unique(new_rows, return_index=True)
            new[first[at]] = True  # the first of a repeated new id is the new one
            self.reset(rows[new])
        return rows, new

    def _rows_of_last_wave(self, ids: Sequence[str]) -> np.ndarray | None:
        """A copy of the rows of the last all-known wave when `ids` (a list) are its ids, in
        its order; None otherwise."""
        last = self._last_wave
        if last is None or type(ids) is not list or ids != last[0]:
            return None
        return last[1].copy()

    def _touch(self, rows: np.ndarray) -> None:
        """These rows are now the most recently seen, in this order."""
        n = len(rows)
        self.last_seen[rows] = np.arange(self._clock + 1, self._clock + n + 1)
        self._clock += n

    def _make_room(self, n: int) -> None:
        """Free rows for `n` new streams, evicting the least recently seen where none are free."""
        short = n - len(self._free)
        if short <= 0:
            return
        victims = np.argpartition(self.last_seen, short - 1)[:short]
        for row in victims.tolist():
            del self.index[self.ids[row]]
            self.ids[row] = None
            self._free.append(row)
        self.last_seen[victims] = FREE
        self.evicted += short

    def in_use(self) -> tuple[list[str], np.ndarray]:
        """(ids, rows) of every stream, least recently seen first: the order a snapshot keeps."""
        rows = np.fromiter(self.index.values(), np.int64, len(self.index))
        order = np.argsort(self.last_seen[rows], kind="stable")
        ids = list(self.index)
        return [ids[i] for i in order.tolist()], rows[order]

    def reset(self, rows: np.ndarray) -> None:
        """Forget everything about these rows: a new stream starts from the model's zero state."""
        for name, _, _ in self.FIELDS:
            getattr(self, name)[rows] = 0
        self.last_ts[rows] = np.nan
        self.normalizer.reset(rows)
        self.gaps.reset(rows)
        self.calibrator.reset(rows)
        self.envelope.reset(rows)
        self.seasonal.reset(rows)

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of known streams (no allocation); -1 for unknown ones."""
        return np.array([self.index.get(s, -1) for s in ids], np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every per-row array by a stable name: what a snapshot saves and restores."""
        out = {name: getattr(self, name) for name, _, _ in self.FIELDS}
        for prefix, part in (
            ("norm", self.normalizer),
            ("gap", self.gaps),
            ("cal", self.calibrator),
            ("env", self.envelope),
            ("seas", self.seasonal),
        ):
            out.update({f"{prefix}.{f}": getattr(part, f) for f in part.FIELDS})
        return out

    def bytes_per_stream(self) -> int:
        """Bytes of numpy state per row (the id map and id strings come on top)."""
        arrays = [*self.arrays().values(), self.last_seen]
        return sum(a[0].nbytes if a.ndim > 1 else a.itemsize for a in arrays)
