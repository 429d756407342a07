"""The baseline that bounds the daemon: a paho subscriber that only parses the JSON and counts.

Same client library, protocol (MQTT 5), threading (paho's network thread, as the
daemon runs it) and QoS as the daemon, and the same parser (orjson), but nothing
after it: no routing, no batching, no model. The daemon's rate as a fraction of
this one is what the daemon's own code costs; the rest is paho and the broker. It
also notes each JSON reading's latency (its `ts` to its arrival): what the broker
and paho alone add.

    python -m benchmarks.bench.bare --port 1883 --expected 100000 --qos 0
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .procs import Latencies, Progress, announce_ready, own_usage

TOPIC = "sensors/#"


class BareSubscriber:
    def __init__(self, port: int, qos: int) -> None:
        self.progress = Progress()
        self.latencies = Latencies()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)

    def _on_message(self, client, userdata, msg) -> None:
        data = orjson.loads(msg.payload)
        now = time.time()
        if type(data) is list:
            self.progress.add(len(data), now)
        else:
            self.progress.add(1, now)
            if type(data) is dict:
                self.latencies.add(now, now - data["ts"])

    def run(self, expected: int, idle_s: float, warmup_s: float) -> dict:
        self.client.loop_start()
        self.subscribed.wait(10)
        announce_ready()
        self.progress.wait(expected, idle_s)
        usage = own_usage()
        self.client.disconnect()
        self.client.loop_stop()
        return {
            **self.progress.summary(),
            **usage,
            "latency": self.latencies.summary(warmup_s),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--expected", type=int, required=True, help="readings to wait for")
    p.add_argument("--idle-s", type=float, default=3.0, help="give up after this long without one")
    p.add_argument("--warmup-s", type=float, default=1.0, help="latencies before this are left out")
    args = p.parse_args(argv)
    result = BareSubscriber(args.port, args.qos).run(args.expected, args.idle_s, args.warmup_s)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
