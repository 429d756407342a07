"""From a stream of readings to rounds of waves: each stream at most once per wave, in order.

Ingest queues a message's runs (one stream's readings each, in order) in one FIFO of
runs per stream; a round takes up to `max_run` consecutive readings (across its runs)
of each of up to `max_size` streams, and is stepped as waves: wave j holds reading j of every
stream that has one. Both happen on the engine thread, which reads the receiver's
frames between rounds.

One model call per wave is what makes inference cheap (a batch of 256 costs about as
much as 8 single steps), and a stream's readings must be stepped in order, so a stream
contributes one reading per wave. Taking a stream's readings a run at a time, not a
reading at a time, is what keeps Python's per-reading work out of batched payloads
and backlogs: the round is gathered with one pass over streams, and its waves are
slices of arrays.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice

import numpy as np


@dataclass(slots=True)
class Ack:
    """The broker's delivery of one QoS 1 message: acknowledged once each of its runs is stepped."""

    mid: int
    qos: int
    left: int


@dataclass(slots=True)
class Item:
    """A run of one stream's readings from one message, oldest first."""

    route: int
    stream: str
    ts: list[float] | np.ndarray  # numpy [n] when it came packed (`receiver.pack`)
    values: list[tuple[float, ...]] | np.ndarray  # numpy [n, channels] likewise
    ack: Ack | None = None
    taken: int = 0  # readings already in a round


@dataclass(slots=True)
class Block:
    """One route's share of a round: each stream's next readings, stream after stream.

    Streams are sorted by how many readings they have, most first, so that wave j (reading
    j of every stream that has one) is a prefix of the streams: a slice, not a mask.
    """

    streams: list[str]
    counts: np.ndarray  # readings per stream, non-increasing
    starts: np.ndarray  # where each stream's readings start in ts and values
    ts: np.ndarray  # [readings]
    values: np.ndarray  # [readings, channels]

    def __len__(self) -> int:
        return len(self.ts)

    def waves(self) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """(streams, ts, values) of each wave, in order."""
        counts, starts = self.counts, self.starts
        for j in range(int(counts[0])):  # a block has at least one stream
            n = len(counts) if j == 0 else int(np.count_nonzero(counts > j))
            at = starts[:n] + j
            yield self.streams[:n], self.ts[at], self.values[at]


@dataclass(slots=True)
class _Gather:
    """A block while its round is gathered, stream after stream.

    Readings of list runs are appended one by one; a packed run's (numpy) readings go in
    as slices, after the readings appended before them are made a slice of their own, so
    the order of the streams is kept.
    """

    streams: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    values: list[tuple[float, ...]] = field(default_factory=list)
    slices: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def extend(self, ts: list[float] | np.ndarray, values: list | np.ndarray) -> None:
        if type(ts) is list:
            self.ts.extend(ts)
            self.values.extend(values)
        else:
            self._close()
            self.slices.append((ts, values))

    def _close(self) -> None:
        """The readings appended so far, as one slice."""
        if self.ts:
            n, channels = len(self.ts), len(self.values[0])
            # np.fromiter over the flattened tuples: a third of the time of np.array on the list.
            flat = np.fromiter(chain.from_iterable(self.values), np.float64, n * channels)
            self.slices.append((np.array(self.ts, np.float64), flat.reshape(n, -1)))
            self.ts, self.values = [], []

    def block(self) -> Block:
        counts = np.array(self.counts, np.int64)
        starts = np.cumsum(counts) - counts
        streams = self.streams
        if not (counts == counts[0]).all():
            order = np.argsort(-counts, kind="stable")
            counts, starts = counts[order], starts[order]
            streams = [streams[i] for i in order.tolist()]
        self._close()
        if len(self.slices) == 1:
            ts, values = self.slices[0]
        else:
            ts = np.concatenate([t for t, _ in self.slices])
            values = np.concatenate([v for _, v in self.slices])
        return Block(streams, counts, starts, ts, values)


@dataclass(slots=True)
class Round:
    """What one round steps, by route, and the runs it finished (their acks are due)."""

    blocks: dict[int, Block] = field(default_factory=dict)
    finished: list[Item] = field(default_factory=list)

    def __len__(self) -> int:
        return sum([len(b) for b in self.blocks.values()])


@dataclass
class Batcher:
    """A bounded queue of runs, by stream, feeding rounds. Depth is counted in readings."""

    max_size: int = 4096  # streams per wave
    max_delay_s: float = 0.005
    capacity: int = 200_000
    max_run: int = 16  # readings of one stream per round
    _pending: dict[tuple[int, str], deque[Item]] = field(default_factory=dict)
    _offered: int = 0
    _taken: int = 0
    _due: float | None = None  # when the next round is due; None: nothing waited at the last look

    def depth(self) -> int:
        """Readings waiting."""
        return self._offered - self._taken

    def full(self) -> bool:
        return self._offered - self._taken >= self.capacity

    def wide(self) -> bool:
        """A full wave's streams wait: reading more now would not make the next wave wider."""
        return len(self._pending) >= self.max_size

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

    def next_round(self, now: float | None = None, flush: bool = False) -> Round:
        """The next round if one is due, else an empty one: due when `max_size` streams wait
        or `max_delay_s` passed.

        `flush` takes whatever waits, without waiting (shutdown, replay).
        """
        now = time.monotonic() if now is None else now
        out = Round()
        if not self._pending:
            self._due = None
            return out
        if self._due is None:
            self._due = now + self.max_delay_s
        if not flush and not self.wide() and now < self._due:
            return out
        pending, run, finished = self._pending, self.max_run, out.finished
        gathers: dict[int, _Gather] = {}
        route, g = -1, None
        taken = 0
        for key in list(islice(pending, self.max_size)):
            fifo = pending.pop(key)
            if key[0] != route:
                route = key[0]
                g = gathers.setdefault(route, _Gather())
            n = 0  # readings of this stream in this round, across its runs
            while fifo and n < run:
                item = fifo[0]
                i, end = item.taken, len(item.ts)
                if end - i == 1:  # one reading: one-reading messages, SenML packs
                    g.ts.append(item.ts[i])
                    g.values.append(item.values[i])
                    j = end
                else:
                    j = min(i + run - n, end)
                    g.extend(item.ts[i:j], item.values[i:j])
                n += j - i
                item.taken = j
                if j < end:
                    break
                fifo.popleft()
                finished.append(item)
            g.streams.append(key[1])
            g.counts.append(n)
            taken += n
            if fifo:
                pending[key] = fifo  # to the back of the line: no stream starves another
        out.blocks = {route: g.block() for route, g in gathers.items()}
        self._taken += taken
        self._due = now  # a backlog is due at once
        return out
