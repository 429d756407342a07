"""Reliability benchmarks (fuzz, flood, soak) and the pieces they share with the tests.

Run them from the repository root as modules, e.g. `python -m benchmarks.fuzz --help`.
The tests import the same harnesses at small sizes, so a benchmark that rots fails CI.

`OfflineDaemon` is the real daemon (`streamer.app.Daemon`: ingest, batcher, pipeline,
engines, collector) built from a real config but never connected: messages are handed
to its paho callbacks directly. That is the whole path of a reading except the socket,
at a speed and determinism a broker round trip cannot give.

Importing this package stays cheap (stdlib only at module level): other benchmarks
under it measure bare processes, which must not pay for the daemon's imports.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.app import Daemon


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size from /proc (VmRSS): what the kernel charges, allocator slack included."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class OfflineDaemon:
    """A daemon whose MQTT messages come from the caller instead of a broker."""

    daemon: Daemon

    @classmethod
    def build(cls, routes_toml: str = "", **env: str) -> OfflineDaemon:
        """From `[[routes]]` TOML (empty: the default route) and STREAMER_* overrides.

        Metrics are served by no HTTP endpoint (the registry is read directly), alerts
        are off (there is no broker to publish to) and QoS is 0 (nothing to acknowledge).
        """
        from streamer import config
        from streamer.app import Daemon

        environ = {
            "STREAMER_MQTT_QOS": "0",
            "STREAMER_METRICS_ENABLED": "false",
            "STREAMER_ALERTS_ENABLED": "false",
            **env,
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "streamer.toml"
            path.write_text(routes_toml)
            cfg = config.load(path, environ=environ)
        return cls(Daemon(cfg))

    @property
    def route_names(self) -> list[str]:
        return [r.name for r in self.daemon.ingest.routes]

    def deliver(self, route: int, topic: bytes, payload: bytes, qos: int = 0) -> None:
        """Hand one message to `Ingest.take`, as a frame from the receiver would."""
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:  # the receiver sends None for a topic that is not UTF-8
            text = None
        self.daemon.ingest.take(route, text, payload, 1, qos)

    def drain(self) -> int:
        """Step every queued reading through the pipeline; the number of waves it took."""
        pipeline = self.daemon.pipeline
        before = pipeline.waves
        while batch := pipeline.batcher.next_round(flush=True):
            pipeline.process(batch)
        return pipeline.waves - before

    def taken_or_dropped(self) -> int:
        """Readings the engines have accounted for: scored, warming up, or dropped by reason."""
        from streamer.engine import DROPPED, TAKEN

        return sum(e.counts[k] for e in self.daemon.engines for k in (*TAKEN, *DROPPED))
