"""`streamer simulate`: the synthetic fleet published to a broker, as a real fleet would publish.

Each sensor publishes JSON `{"value": v, "ts": t}` on `<prefix>/<stream>`; a
multi-axis sensor publishes each axis as its own stream (`<prefix>/<stream>/<axis>`)
so the shipped univariate model can watch every channel.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson

from .client import connect, make_client
from .config import MqttConfig
from .sim import Fleet

log = logging.getLogger(__name__)


def messages(fleet: Fleet, prefix: str, now: float) -> list[tuple[str, bytes]]:
    """(topic, payload) for every reading due by `now`."""
    out = []
    for stream, ts, values in fleet.tick(now):
        if len(values) == 1:
            out.append((f"{prefix}/{stream}", orjson.dumps({"value": values[0], "ts": ts})))
        else:
            for axis, v in enumerate(values):
                out.append((f"{prefix}/{stream}/{axis}", orjson.dumps({"value": v, "ts": ts})))
    return out


def publish_fleet(
    cfg: MqttConfig,
    streams: int,
    rate_hz: float,
    seed: int,
    prefix: str = "sensors",
    duration: float = 0.0,
    anomaly_rate: float = 0.002,
    stop: threading.Event | None = None,
) -> int:
    """Publish until `duration` seconds passed (0 = forever) or `stop` is set."""
    fleet = Fleet(streams, seed, anomaly_rate=anomaly_rate, rate_hz=rate_hz)
    client = make_client(cfg, client_id=f"{cfg.client_id}-sim-{seed}")
    connect(client, cfg, clean_start=True)
    client.loop_start()
    stop = stop or threading.Event()
    end = time.time() + duration if duration > 0 else float("inf")
    sent = 0
    try:
        while not stop.is_set() and time.time() < end:
            for topic, payload in messages(fleet, prefix, time.time()):
                client.publish(topic, payload, qos=cfg.qos)
                sent += 1
            stop.wait(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
        log.info("published %d readings", sent)
    return 0
