"""The daemon's side of MQTT: messages from the receiver process, parsed, handed to the batcher.

The receiver process (`receiver.py`) holds the broker connection and ships
messages here in frames; the engine thread reads them between waves (`poll`), parses
them and queues the readings. Delivery:

* QoS 1 (default): the broker's message is acknowledged only after every reading in
  it was taken into the engine (manual acks, sent back to the receiver). While the
  queue is full no frame is read, the receiver's frames pile up until it stops
  reading the broker's socket: back-pressure, the broker keeps the backlog, nothing
  is lost.
* QoS 0: there is nothing to hold back, so a full queue drops the message and
  counts it (`streamer_readings_dropped_total{reason="queue_full"}`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .batcher import Ack, Batcher, Item
from .config import LogConfig, MqttConfig
from .errors import BadInput, ConfigError
from .logs import Throttle
from .parse import Parser
from .receiver import Body, Message, Receiver, unpack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A subscription at run time: its filter and its parser (whose readings have as many
    values as the route's model reads: `app.make_route` checks it)."""

    index: int
    name: str
    topic_filter: str
    parser: Parser


class Ingest:
    """The daemon's subscriber: routes messages to parsers and parsed readings to the batcher."""

    def __init__(
        self,
        cfg: MqttConfig,
        routes: list[Route],
        batcher: Batcher,
        log_cfg: LogConfig | None = None,
    ) -> None:
        if not routes:
            raise ConfigError("routes: at least one route is needed")
        self.cfg = cfg
        self.routes = routes
        self.batcher = batcher
        self.receiver = Receiver(cfg, [r.parser for r in routes], log_cfg or LogConfig())
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.stopping = threading.Event()
        self.messages: Counter[str] = Counter()  # by route
        self.errors: Counter[tuple[str, str]] = Counter()  # by (route, reason)
        self.dropped: Counter[tuple[str, str]] = Counter()  # readings by (route, reason)
        self.connects = 0
        self._throttle = Throttle(log)

    def start(self) -> None:
        self.receiver.start()

    def alive(self) -> bool:
        """False once the receiver process has exited (nothing more can arrive)."""
        return not self.receiver.exited()

    def stop_taking(self) -> None:
        """Stop taking new messages (unsubscribe) but keep the connection for acks and alerts."""
        self.stopping.set()
        self.receiver.send("unsubscribe")

    def close(self) -> None:
        self.receiver.close()

    def acknowledge(self, finished: Iterable[Item]) -> None:
        """Runs stepped; a QoS 1 message is acknowledged with the last of its runs.

        Called on the engine thread, which also parses (`poll`), so nothing else counts down.
        """
        due = []
        for item in finished:
            ack = item.ack
            if ack is not None:
                ack.left -= 1
                if ack.left == 0:
                    due.append((ack.mid, ack.qos))
        if due:
            self.receiver.send("ack", due)

    def poll(self, timeout: float) -> None:
        """Take the frames the receiver sent, waiting up to `timeout` s for the first.

        Called by the engine thread between rounds: parsing there, not on a thread of
        its own, keeps the two from taking turns on the interpreter lock. It reads on
        while more is ready, until a full wave's streams wait (wide waves are what make
        the model call cheap). While the queue is full nothing is read: the receiver's
        frames wait, then it stops reading the broker (back-pressure).
        """
        if self.batcher.full():
            time.sleep(timeout)
            return
        while frames := self.receiver.receive(timeout):
            for kind, *args in frames:
                if kind == "messages":
                    self._take_all(args[0])
                else:
                    self._event(kind, *args)
            if self.batcher.full() or self.batcher.wide():
                return
            timeout = 0.0
        if frames is None:
            self.connected.clear()
            if not self.stopping.is_set():
                log.error("the MQTT receiver process exited; no more messages can arrive")

    def _event(self, kind: str, *args: object) -> None:
        if kind == "connected":
            self.connects += 1
            self.connected.set()
        elif kind == "subscribed":
            if not args[0]:
                self.subscribed.set()
        elif kind == "disconnected":
            self.connected.clear()

    def _take_all(self, messages: list[Message]) -> None:
        take = self.take
        for message in messages:
            try:
                take(*message)
            except Exception:  # never let one message stop the others
                route = self.routes[message[0]].name if message[0] >= 0 else ""
                self.errors[(route, "internal")] += 1
                log.exception("internal error handling a message on route %s", route)

    def take(self, index: int, topic: str | None, body: Body, mid: int, qos: int) -> None:
        """One message: parsed into runs of readings (here, or already by the receiver for a
        large payload), queued (or counted and dropped)."""
        route = self.routes[index] if index >= 0 else None
        name = route.name if route is not None else ""
        self.messages[name] += 1
        ack = Ack(mid, qos, 0) if qos > 0 else None
        try:
            if route is None or topic is None:
                raise BadInput("bad_topic", "the topic is not UTF-8 or matches no route")
            if type(body) is bytes:
                runs = route.parser.parse(topic, body, time.time())
            elif type(body) is list:
                runs = body
            else:
                raise body
        except BadInput as e:
            self.errors[(name, e.reason)] += 1
            self._throttle.warning(f"{name}/{e.reason}", "route %s: bad message (%s)", name, e)
            if ack:
                self.receiver.send("ack", [(mid, qos)])
            return
        # Every reading has the route's channels: the parser gives it one value per value
        # field, and `make_route` checks the fields against the model at start and reload.
        items = [
            Item(index, stream, ts, values, ack)
            if type(ts) is list
            else Item(index, stream, *unpack(ts, values), ack)
            for stream, ts, values in runs
        ]
        if ack is not None:
            self._hand_over(items, ack)
        elif not self.batcher.offer(items):
            self.dropped[(name, "queue_full")] += sum([len(item.ts) for item in items])
            self._throttle.warning("queue_full", "queue full: dropping QoS 0 readings")

    def _hand_over(self, items: list[Item], ack: Ack) -> None:
        """Queue a QoS 1 message's readings (never dropped); acknowledge at once if none."""
        if not items:
            self.receiver.send("ack", [(ack.mid, ack.qos)])
            return
        ack.left = len(items)  # runs
        self.batcher.offer(items, force=True)  # never dropped: `poll` stops reading when full
