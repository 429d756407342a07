"""End to end: broker, load generator and consumer, each in its own process.

One scenario = a fresh Mosquitto on a free loopback port (nothing queued from an
earlier scenario), a consumer (the daemon or the bare baseline subscriber), and the
load generator. The consumer's rate is the readings it handled over the time from
the first publish to the last reading handled, so a burst larger than the consumer
can take at once measures its sustained capacity: the backlog waits in the broker
(or, with QoS 0, in the daemon's queue, whose peak depth is reported).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from streamer.broker import Mosquitto

from .procs import await_ready, cpu_seconds, result, spawn
from .publisher import Load, Published

CONSUMERS = ("daemon", "bare")


@dataclass(frozen=True)
class Scenario:
    consumer: str  # daemon | bare
    payload: str = "json"
    batch: int = 1  # readings per message
    qos: int = 0
    streams: int = 10_000
    readings: int = 150_000
    rate: float = 0.0  # readings/s; 0 = a burst, as fast as the broker takes it

    @property
    def name(self) -> str:
        shape = self.payload if self.batch == 1 else f"{self.payload}x{self.batch}"
        pace = f" @{self.rate:,.0f}/s" if self.rate else ""
        return f"{self.consumer} {shape} qos{self.qos}{pace}"


@dataclass
class Outcome:
    scenario: Scenario
    published: int
    handled: int  # readings the consumer took (daemon: scored or warming up)
    seconds: float  # first publish to last reading handled
    lost: int  # published, but neither handled nor dropped or refused by reason
    dropped: dict[str, float] = field(default_factory=dict)  # daemon, by reason, from /metrics
    latency: dict[str, float] = field(default_factory=dict)  # reading ts to scored (bare: taken), s
    cpu_s: dict[str, float] = field(default_factory=dict)  # per process, over the run
    thread_cpu_s: dict[str, float] = field(default_factory=dict)  # daemon, per thread
    rss: dict[str, int] = field(default_factory=dict)  # consumer, bytes
    queue_peak: int = 0  # daemon: most readings waiting at once (sampled every 50 ms)
    mean_wave: float = 0.0  # daemon: readings per engine step
    publisher_rate: float = 0.0

    @property
    def rate(self) -> float:
        return self.handled / max(self.seconds, 1e-9)

    @property
    def cpu_per_reading_us(self) -> float:
        return 1e6 * self.cpu_s.get("consumer", 0.0) / max(self.handled, 1)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "name": self.scenario.name,
            "rate": self.rate,
            "cpu_per_reading_us": self.cpu_per_reading_us,
        }


@dataclass(frozen=True)
class Setup:
    """How every scenario of a run is set up, for the daemon and the baseline alike."""

    daemon_env: tuple[tuple[str, str], ...] = ()  # STREAMER_* settings beyond the defaults
    warmup_s: float = 1.0  # latencies count from this long after the first reading
    nodelay: bool = True  # the broker sets TCP_NODELAY (see `broker`)
    cpus: str = ""  # the consumer is pinned to these CPUs (taskset -c); "": not pinned


def _start_consumer(sc: Scenario, port: int, setup: Setup):
    expected = ("--expected", sc.readings, "--warmup-s", setup.warmup_s)
    if sc.consumer == "bare":
        args = ("--port", port, "--qos", sc.qos, *expected)
        return spawn("benchmarks.bench.bare", *args, cpus=setup.cpus)
    env = {
        "STREAMER_MQTT_PORT": str(port),
        "STREAMER_MQTT_QOS": str(sc.qos),
        "STREAMER_METRICS_ENABLED": "false",  # the runner reads the registry itself
        "STREAMER_LOG_LEVEL": "warning",
        **dict(setup.daemon_env),
    }
    return spawn("benchmarks.bench.runner", *expected, env=env, cpus=setup.cpus)


def broker(workdir: Path, nodelay: bool) -> Mosquitto:
    """`streamer.broker.Mosquitto`, as configured (TCP_NODELAY on) or without TCP_NODELAY.

    Without it, Mosquitto's Nagle buffering meets the subscriber's delayed ACKs, and a
    subscriber that reads a little late now and then (a busy GIL) is sent nothing for
    40 ms: measured, the daemon's p99 latency at 9,000 readings/s went from 64 ms to 31.
    """
    b = Mosquitto(persistence=False, workdir=workdir)
    if not nodelay:
        b.conf.write_text(b.conf.read_text().replace("set_tcp_nodelay true\n", ""))
    return b


def run(sc: Scenario, setup: Setup | None = None) -> Outcome:
    """One scenario from a cold broker; raises if a process fails."""
    setup = setup or Setup()
    if sc.consumer not in CONSUMERS:
        raise ValueError(f"consumer must be one of {CONSUMERS}")
    load = Load(0, sc.payload, sc.streams, sc.readings, sc.batch, sc.rate, sc.qos)
    with (
        tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp,
        broker(Path(tmp), setup.nodelay) as mqtt,
    ):
        consumer = _start_consumer(sc, mqtt.port, setup)
        try:
            await_ready(consumer)
            broker_cpu = cpu_seconds(mqtt.proc.pid)
            args = [f"--{k.replace('_', '-')}={v}" for k, v in asdict(load).items() if k != "port"]
            pub = spawn("benchmarks.bench.publisher", f"--port={mqtt.port}", *args)
            published = Published(**result(pub))
            got = result(consumer)
            broker_cpu = cpu_seconds(mqtt.proc.pid) - broker_cpu
        finally:
            if consumer.poll() is None:
                consumer.kill()
    return _outcome(sc, published, got, broker_cpu)


def _outcome(sc: Scenario, published: Published, got: dict, broker_cpu: float) -> Outcome:
    metrics = got.get("metrics", {})
    dropped = {
        f"{name}:{reason}": n
        for name in ("streamer_readings_dropped_total", "streamer_parse_errors_total")
        for reason, n in metrics.get(name, {}).items()
        if n
    }
    accounted = got.get("accounted", got["count"])
    waves = metrics.get("streamer_batch_size_count", {}).get("", 0.0)
    return Outcome(
        scenario=sc,
        published=published.readings,
        handled=got["count"],
        seconds=got["last"] - published.start,
        lost=published.readings - accounted,
        dropped=dropped,
        latency=got.get("latency", {}),
        cpu_s={
            "consumer": got["cpu_window_s"],
            "publisher": published.cpu_s,
            "broker": broker_cpu,
        },
        thread_cpu_s=got.get("thread_cpu_s", {}),
        rss={"consumer": got["rss"], "consumer_peak": got["rss_peak"]},
        queue_peak=got.get("queue_peak", 0),
        mean_wave=metrics.get("streamer_batch_size_sum", {}).get("", 0.0) / waves if waves else 0.0,
        publisher_rate=published.rate,
    )
