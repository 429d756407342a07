"""From a stream of readings to waves: each stream at most once per wave, arrival order kept.

Ingest queues a message's runs (one stream's readings each, in order) in one FIFO of
runs per stream; a wave takes the next reading of every FIFO. Both happen on the
engine thread, which reads the receiver's frames between waves.
One model call per wave is what makes inference cheap (a batch of 256 costs about
as much as 8 single steps), and a stream's readings must be stepped in order, so a
stream with several readings waiting (a SenML pack, a burst) contributes one per
wave and the rest wait for the next.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice


@dataclass(slots=True)
class Ack:
    """The broker's delivery of one QoS 1 message: acknowledged once each of its runs is stepped."""

    mid: int
    qos: int
    left: int


@dataclass(slots=True)
class Item:
    """A run of one stream's readings from one message, oldest first: one of them per wave."""

    route: int
    stream: str
    ts: list[float]
    values: list[tuple[float, ...]]
    ack: Ack | None = None
    taken: int = 0  # readings already in a wave


@dataclass(slots=True)
class Batch:
    """One wave's readings as the engine thread gets them (a list per field), and the runs
    it finished (their acks are due). The engine's scored result is `engine.Wave`."""

    items: list[Item] = field(default_factory=list)  # each reading's run: its route and stream
    ts: list[float] = field(default_factory=list)
    values: list[tuple[float, ...]] = field(default_factory=list)
    finished: list[Item] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Item, ts: float, values: tuple[float, ...]) -> None:
        self.items.append(item)
        self.ts.append(ts)
        self.values.append(values)


@dataclass
class Batcher:
    """A bounded queue of runs, by stream, feeding waves. Depth is counted in readings."""

    max_size: int = 4096
    max_delay_s: float = 0.005
    capacity: int = 200_000
    _pending: dict[tuple[int, str], deque[Item]] = field(default_factory=dict)
    _offered: int = 0
    _taken: int = 0
    _due: float | None = None  # when the next wave is due; None: nothing waited at the last look

    def depth(self) -> int:
        """Readings waiting."""
        return self._offered - self._taken

    def full(self) -> bool:
        return self._offered - self._taken >= self.capacity

    def offer(self, items: list[Item], force: bool = False) -> bool:
        """Queue all of a message's readings, or none of them when they do not fit.

        `force` queues them regardless: a QoS 1 message, which must not be dropped. Its
        reader stops reading while the queue is `full()`, so the queue overshoots by at
        most what it read before it looked (the broker keeps the rest).
        """
        n = len(items[0].ts) if len(items) == 1 else sum([len(item.ts) for item in items])
        if not force and self._offered - self._taken + n > self.capacity:
            return False
        pending = self._pending
        for item in items:
            key = (item.route, item.stream)
            fifo = pending.get(key)
            if fifo is None:
                pending[key] = deque((item,))
            else:
                fifo.append(item)
        self._offered += n
        return True

    def next_wave(self, now: float | None = None, flush: bool = False) -> Batch:
        """The next wave if one is due, else an empty one: due when `max_size` streams wait or
        `max_delay_s` passed.

        `flush` takes whatever waits, without waiting (shutdown, replay).
        """
        now = time.monotonic() if now is None else now
        wave = Batch()
        if not self._pending:
            self._due = None
            return wave
        if self._due is None:
            self._due = now + self.max_delay_s
        if not flush and len(self._pending) < self.max_size and now < self._due:
            return wave
        pending = self._pending
        # The loop runs once per reading: its appends are bound once, not looked up each time.
        add_item, add_ts, add_values = wave.items.append, wave.ts.append, wave.values.append
        for key in list(islice(pending, self.max_size)):
            fifo = pending.pop(key)
            item = fifo[0]
            i = item.taken
            add_item(item)
            add_ts(item.ts[i])
            add_values(item.values[i])
            item.taken = i = i + 1
            if i == len(item.ts):
                fifo.popleft()
                wave.finished.append(item)
            if fifo:
                pending[key] = fifo  # to the back of the line: no stream starves another
        self._taken += len(wave)
        self._due = now  # a backlog is due at once
        return wave
