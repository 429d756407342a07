"""Anomaly events on MQTT: one message when a stream enters the anomalous state, one when it leaves.

Hysteresis in the engine decides *when*; this module only says it, so a dashboard,
a pager bridge or a PLC can subscribe to `streamer/alerts/#` without scraping.
Published with QoS 1 (configurable) so an event survives a broker hiccup.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import orjson

from .config import AlertsConfig
from .engine import StreamEngine, Wave

log = logging.getLogger(__name__)


def event(route: str, engine: StreamEngine, wave: Wave, i: int, kind: str) -> dict:
    """The JSON body of one event; values in sensor units, channel names from the model."""
    store = engine.store
    row = wave.rows[i]
    channels = engine.model.info.output_features
    return {
        "event": kind,
        "route": route,
        "stream": wave.ids[i],
        "time": float(wave.ts[i]),
        "score": float(wave.score[i]),
        "raw": None if np.isnan(wave.raw[i]) else float(wave.raw[i]),
        "observed": store.value[row].tolist(),
        "expected": store.expected[row].tolist(),
        "band": store.band[row].tolist(),
        "channels": list(channels),
        "channel": channels[int(store.contrib[row])],
    }


class Publisher(Protocol):
    """Where events go: the daemon's receiver (its broker connection), or a paho client."""

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> object: ...


class AlertPublisher:
    def __init__(self, client: Publisher, cfg: AlertsConfig) -> None:
        self.client = client
        self.cfg = cfg
        self.published = 0

    def topic(self, route: str, stream: str) -> str:
        return self.cfg.topic.format(stream=stream, route=route)

    def publish(self, route: str, engine: StreamEngine, wave: Wave) -> None:
        for kind, mask in (("enter", wave.entered), ("leave", wave.left)):
            for i in np.flatnonzero(mask):
                body = event(route, engine, wave, int(i), kind)
                self.client.publish(
                    self.topic(route, body["stream"]), orjson.dumps(body), qos=self.cfg.qos
                )
                self.published += 1
