"""The MQTT side: connect, subscribe in on_connect, parse in the callback, hand readings to the batcher.

The paho network thread runs the callback, so it does as little as possible and
never raises (an exception there would end the network loop). Delivery:

* QoS 1 (default): the broker's message is acknowledged only after every reading in
  it was taken into the engine (manual acks). When the queue is full the callback
  waits, which stops reading the socket: back-pressure, the broker keeps the
  backlog, nothing is lost.
* QoS 0: there is nothing to hold back, so a full queue drops the message and
  counts it (`streamer_readings_dropped_total{reason="queue_full"}`).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .batcher import Ack, Batcher, Item
from .config import MqttConfig
from .errors import BadInput, ConfigError
from .logs import Throttle
from .parse import Parser

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A subscription at run time: its filter and its parser (whose readings have as many
    values as the route's model reads: `app.make_route` checks it)."""

    index: int
    name: str
    topic_filter: str
    parser: Parser


def read_password(cfg: MqttConfig, environ: dict[str, str] | None = None) -> str | None:
    """The broker password from STREAMER_MQTT_PASSWORD or mqtt.password_file; never from a flag."""
    environ = os.environ if environ is None else environ
    if "STREAMER_MQTT_PASSWORD" in environ:
        return environ["STREAMER_MQTT_PASSWORD"]
    if cfg.password_file:
        return Path(cfg.password_file).read_text().strip()
    return None


def make_client(
    cfg: MqttConfig, client_id: str | None = None, manual_ack: bool = False
) -> mqtt.Client:
    """A paho client configured for the broker: protocol, session, TLS, credentials, backoff."""
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or cfg.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else cfg.clean_start,
        manual_ack=manual_ack,
    )
    client.reconnect_delay_set(int(max(1, cfg.reconnect_min_s)), int(max(1, cfg.reconnect_max_s)))
    if cfg.tls:
        client.tls_set(
            ca_certs=cfg.ca_file or None,
            certfile=cfg.cert_file or None,
            keyfile=cfg.key_file or None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(cfg.tls_insecure)
    if cfg.username:
        client.username_pw_set(cfg.username, read_password(cfg))
    return client


def connect(client: mqtt.Client, cfg: MqttConfig, clean_start: bool | None = None) -> None:
    """Start connecting in the background; paho retries with backoff until it gets through."""
    kwargs = {}
    if cfg.protocol == "5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        kwargs = {
            "clean_start": cfg.clean_start if clean_start is None else clean_start,
            "properties": props,
        }
    client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, **kwargs)
    client.loop_start()


class Ingest:
    """The daemon's subscriber: routes messages to parsers and parsed readings to the batcher."""

    def __init__(self, cfg: MqttConfig, routes: list[Route], batcher: Batcher) -> None:
        if not routes:
            raise ConfigError("routes: at least one route is needed")
        self.cfg = cfg
        self.routes = routes
        self.batcher = batcher
        self.manual_ack = cfg.qos > 0
        self.client = make_client(cfg, manual_ack=self.manual_ack)
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.messages: Counter[str] = Counter()  # by route
        self.errors: Counter[tuple[str, str]] = Counter()  # by (route, reason)
        self.dropped: Counter[tuple[str, str]] = Counter()  # readings by (route, reason)
        self.connects = 0
        self._throttle = Throttle(log)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        for route in routes:
            self.client.message_callback_add(route.topic_filter, self._handler(route))

    def start(self) -> None:
        connect(self.client, self.cfg)

    def stop_taking(self) -> None:
        """Stop taking new messages (unsubscribe) but keep the connection for acks and alerts."""
        self.stopping.set()
        if self.connected.is_set():
            self.client.unsubscribe([r.topic_filter for r in self.routes])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def ack(self, ack: Ack) -> None:
        """One run of a QoS 1 message stepped; the message is acknowledged with its last.

        Called on the engine thread only: `left -= 1` is not atomic, so the network
        thread never counts down (a lost count would leave a message unacknowledged).
        """
        ack.left -= 1
        if ack.left == 0:
            self.client.ack(ack.mid, ack.qos)

    def _hand_over(self, items: list[Item], ack: Ack) -> None:
        """Queue a QoS 1 message's readings, waiting for room; acknowledge at once if none."""
        if not items:
            self.client.ack(ack.mid, ack.qos)
            return
        ack.left = len(items)  # runs; set before the engine thread can see any of them
        self.batcher.put(items, self.stopping)  # False when stopping: unacknowledged, redelivered

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error(
                "broker %s:%s refused the connection: %s", self.cfg.host, self.cfg.port, reason_code
            )
            return
        self.connects += 1
        session = "resumed" if getattr(flags, "session_present", False) else "new"
        log.info("connected to %s:%s (%s session)", self.cfg.host, self.cfg.port, session)
        if not self.stopping.is_set():
            client.subscribe([(r.topic_filter, self.cfg.qos) for r in self.routes])
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused subscriptions: %s", ", ".join(refused))
        else:
            log.info("subscribed to %s", ", ".join(r.topic_filter for r in self.routes))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("disconnected from broker (%s); reconnecting with backoff", reason_code)

    def _handler(self, route: Route) -> Callable:
        def on_message(client, userdata, msg) -> None:
            try:
                self._take(route, msg)
            except Exception:  # never let the network thread die
                self.errors[(route.name, "internal")] += 1
                log.exception("internal error handling a message on route %s", route.name)

        return on_message

    def _take(self, route: Route, msg: mqtt.MQTTMessage) -> None:
        arrival = time.time()
        self.messages[route.name] += 1
        ack = Ack(msg.mid, msg.qos, 0) if self.manual_ack and msg.qos > 0 else None
        try:
            topic = msg.topic
            runs = route.parser.parse(topic, msg.payload, arrival)
        except (BadInput, UnicodeDecodeError) as e:
            reason = e.reason if isinstance(e, BadInput) else "bad_topic"
            self.errors[(route.name, reason)] += 1
            self._throttle.warning(
                f"{route.name}/{reason}", "route %s: bad message (%s)", route.name, e
            )
            if ack:
                self.client.ack(ack.mid, ack.qos)
            return
        # Every reading has the route's channels: the parser gives it one value per value
        # field, and `make_route` checks the fields against the model at start and reload.
        items = [Item(route.index, r.stream, r.ts, r.values, ack) for r in runs]
        if ack is not None:
            self._hand_over(items, ack)
        elif not self.batcher.offer(items):
            self.dropped[(route.name, "queue_full")] += sum([len(item.ts) for item in items])
            self._throttle.warning("queue_full", "queue full: dropping QoS 0 readings")
