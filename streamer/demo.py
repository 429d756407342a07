"""`streamer demo`: the whole system on one machine, no setup beyond the install.

A local Mosquitto on a free port, the simulated fleet publishing to it, the daemon
with the shipped default model scoring it, metrics on localhost, and a live table
of the most anomalous streams in the terminal, until Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
import time

import numpy as np

from . import config
from .app import Daemon
from .broker import Mosquitto
from .simulate import publish_fleet


def view(daemon: Daemon, started: float, top: int = 12) -> str:
    """One frame of the live table: fleet counters and the streams with the highest scores."""
    engine = daemon.engines[0]
    store = engine.store
    with daemon.pipeline.lock:
        ids = list(store.index)
        rows = np.fromiter(store.index.values(), np.int64, len(ids))
        order = np.argsort(-store.score[rows], kind="stable")[:top]
        lines = [
            f"sensor-streamer demo  up {time.time() - started:6.0f} s   streams {len(ids)}   "
            f"scored {engine.counts['scored']}   warming {engine.counts['warmup']}   "
            f"anomalous now {int(store.anomalous[rows].sum())}   alerts {engine.counts['anomalies']}",
            f"metrics: http://127.0.0.1:{daemon.metrics_port}/metrics      Ctrl-C to stop",
            "",
            f"{'stream':32} {'value':>12} {'expected':>12} {'band':>10} {'score':>7}  state",
        ]
        for i in order:
            r = rows[i]
            state = (
                "ANOMALY"
                if store.anomalous[r]
                else ("warm-up" if store.seen[r] <= engine.warmup else "ok")
            )
            lines.append(
                f"{ids[i][:32]:32} {store.value[r, 0]:12.4g} {store.expected[r, 0]:12.4g} "
                f"{store.band[r, 0]:10.3g} {store.score[r]:7.4f}  {state}"
            )
    return "\n".join(lines)


def run_demo(
    streams: int, rate_hz: float, seed: int, metrics_port: int, duration: float = 0.0
) -> int:
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with Mosquitto(persistence=False) as broker:
        cfg = config.load(
            environ={
                "STREAMER_MQTT_PORT": str(broker.port),
                "STREAMER_MQTT_CLIENT_ID": "streamer-demo",
                "STREAMER_METRICS_PORT": str(metrics_port),
            }
        )
        daemon = Daemon(cfg)
        daemon.start()
        fleet = threading.Thread(
            target=publish_fleet,
            args=(cfg.mqtt, streams, rate_hz, seed),
            kwargs={"stop": done, "anomaly_rate": 0.002},
            daemon=True,
        )
        fleet.start()
        started = time.time()
        end = started + duration if duration > 0 else float("inf")
        while not done.wait(1.0) and time.time() < end:
            print("\033[2J\033[H" + view(daemon, started), flush=True)
        done.set()
        fleet.join(5)
        daemon.shutdown()
    return 0
