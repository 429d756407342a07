"""From a stream of readings to waves: each stream at most once per wave, arrival order kept.

The MQTT thread appends to a bounded inbox and returns at once; the engine thread
drains it into one FIFO per stream and takes the head of every FIFO as a wave.
One model call per wave is what makes inference cheap (a batch of 256 costs about
as much as 8 single steps), and a stream's readings must be stepped in order, so a
stream with several readings waiting (a SenML pack, a burst) contributes one per
wave and the rest wait for the next.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Ack:
    """The broker's delivery of one QoS 1 message: acknowledged once every reading in it is taken."""

    mid: int
    qos: int
    left: int


@dataclass(slots=True)
class Item:
    route: int
    stream: str
    ts: float
    values: tuple[float, ...]
    ack: Ack | None = None


@dataclass
class Batcher:
    """Bounded inbox (any thread) feeding waves (one engine thread)."""

    max_size: int = 4096
    max_delay_s: float = 0.005
    capacity: int = 200_000
    inbox: deque[Item] = field(default_factory=deque)
    _pending: dict[tuple[int, str], deque[Item]] = field(default_factory=dict)
    _queued: int = 0
    _due: float = 0.0

    def depth(self) -> int:
        """Readings waiting, inbox and per-stream FIFOs together."""
        return len(self.inbox) + self._queued

    def offer(self, items: list[Item]) -> bool:
        """Queue all of a message's readings, or none of them when the queue is full."""
        if len(self.inbox) + self._queued + len(items) > self.capacity:
            return False
        self.inbox.extend(items)
        return True

    def put(self, items: list[Item], stop: Any = None, poll_s: float = 0.001) -> bool:
        """Queue, waiting for room: back-pressure for QoS 1, where dropping would lose data.

        Blocking the MQTT network thread stops reading the socket, so the broker keeps
        the messages (in its queue, on disk with persistence) until we catch up.
        Gives up only when `stop` (a threading.Event) is set.
        """
        while not self.offer(items):
            if stop is not None and stop.is_set():
                return False
            time.sleep(poll_s)
        return True

    def _drain(self) -> None:
        inbox, pending = self.inbox, self._pending
        while inbox:
            item = inbox.popleft()
            key = (item.route, item.stream)
            fifo = pending.get(key)
            if fifo is None:
                pending[key] = deque((item,))
            else:
                fifo.append(item)
            self._queued += 1

    def next_wave(self, now: float | None = None, flush: bool = False) -> list[Item]:
        """The next wave if one is due, else []: due when `max_size` streams wait or `max_delay_s` passed.

        `flush` takes whatever waits, without waiting (shutdown, replay).
        """
        now = time.monotonic() if now is None else now
        was_idle = not self._pending
        self._drain()
        if not self._pending:
            return []
        if was_idle and not flush:
            self._due = now + self.max_delay_s
        if not flush and len(self._pending) < self.max_size and now < self._due:
            return []
        wave = []
        pending = self._pending
        for key in list(pending)[: self.max_size]:
            fifo = pending.pop(key)
            wave.append(fifo.popleft())
            if fifo:
                pending[key] = fifo  # to the back of the line: no stream starves another
        self._queued -= len(wave)
        self._due = now  # a backlog is due at once
        return wave
