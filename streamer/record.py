"""An audit trail: every scored reading as one JSON line, written before the reading is acknowledged.

For patient and plant monitoring the question "was this reading scored, and how?"
must have an answer after the fact, even across a crash: lines are flushed to the
operating system after every wave, ahead of the broker acknowledgement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from .engine import Wave


class Recorder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the daemon's life

    def write(self, route: str, wave: Wave) -> None:
        raw = np.where(np.isnan(wave.raw), None, wave.raw)
        lines = [
            orjson.dumps(
                {
                    "route": route,
                    "stream": sid,
                    "ts": float(wave.ts[i]),
                    "score": float(wave.score[i]),
                    "raw": None if raw[i] is None else float(raw[i]),
                    "anomalous": bool(wave.anomalous[i]),
                }
            )
            for i, sid in enumerate(wave.ids)
        ]
        if lines:
            self._file.write(b"\n".join(lines) + b"\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()
