"""The daemon: wires ingest -> batcher -> engine -> sinks, and owns start-up and shutdown.

Processes and threads: the receiver process holds the MQTT connection; the engine
thread reads its frames, parses, forms rounds of waves and steps the engines (the only
writer of engine state); the HTTP thread reads the state at scrape time under the
same lock. Shutdown order matters for "nothing
lost": stop taking messages, drain and score what was queued, acknowledge it,
snapshot, then disconnect.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from . import snapshot
from .alerts import AlertPublisher
from .batcher import Batcher, Block, Round
from .calibration import CalibrationConfig
from .config import Config, RouteConfig
from .endpoint import Endpoint
from .engine import EngineSettings, StreamEngine
from .errors import ConfigError, ModelError, SnapshotError
from .ingest import Ingest, Route
from .metrics import (
    BATCH_BOUNDS,
    INFERENCE_BOUNDS,
    LATENCY_BOUNDS,
    Buckets,
    OpsCollector,
    OpsStats,
    StreamerCollector,
)
from .model import DEFAULT_MODEL, StepModel
from .parse import Parser, PayloadSpec, TopicTemplate
from .record import Recorder

log = logging.getLogger(__name__)

YOUNG_GC_THRESHOLD = 10_000  # net new tracked objects before a young collection (CPython: 700)


class Pipeline:
    """The engine thread's loop: waves from the batcher through the engines to the sinks."""

    def __init__(
        self,
        engines: list[StreamEngine],
        route_names: list[str],
        batcher: Batcher,
        ingest: Ingest | None = None,
        alerts: AlertPublisher | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.engines = engines
        self.route_names = route_names
        self.batcher = batcher
        self.ingest = ingest
        self.alerts = alerts
        self.recorder = recorder
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.failed = False  # a wave failed half way: the state is ahead of the acknowledgements
        self.batch_sizes = Buckets(BATCH_BOUNDS)
        self.inference = Buckets(INFERENCE_BOUNDS)
        self.latency = Buckets(LATENCY_BOUNDS)
        self.waves = 0

    def run(self, idle_s: float = 0.0005) -> None:
        """Step waves until stopped and drained: every queued reading is scored before we return.

        The garbage collector is tuned while the pipeline runs, and restored after it
        (so a process that starts many daemons, the tests, is left as it was):

        * everything built before the first wave (models, the state store, the wiring)
          lives as long as the daemon, so it is frozen out of the collector's way; full
          collections walked it and stalled the pipeline for 10-35 ms (the p99 latency
          at 9,000 readings/s);
        * a young-generation collection waits for 10,000 new objects, not 700: under a
          backlog the queue holds up to 200,000 readings, which the default thresholds
          promoted and walked again and again (measured in alternating runs, arrays of
          100 readings at QoS 1: 93,000 -> 113,000 readings/s, CPU per reading -18%;
          one-reading messages: CPU per reading -3%). Readings in flight are not cyclic
          garbage; what is gets collected all the same, a little later. 100,000 was
          faster still with SenML packs (100,000-121,000 -> 142,000 readings/s) but its
          collections stalled the pipeline: p99 latency at 9,000 readings/s 84 ms
          against 17-43 ms, max 115 ms, in alternating runs.
        """
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(YOUNG_GC_THRESHOLD, *thresholds[1:])
        try:
            self._loop(idle_s)
        except Exception:
            log.exception("engine thread failed; readings not acknowledged will be delivered again")
            raise
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    def _loop(self, idle_s: float) -> None:
        """Messages in, waves out, on one thread; waiting only when no wave is due."""
        wait = 0.0
        while True:
            if self.ingest is not None:
                self.ingest.poll(wait)
            elif wait:
                time.sleep(wait)
            batch = self.batcher.next_round(flush=self.stop.is_set())
            if batch:
                self.process(batch)
                wait = 0.0
            elif self.stop.is_set() and self.batcher.depth() == 0:
                return
            else:
                wait = idle_s

    def process(self, batch: Round) -> None:
        """Step, record and alert under the lock, so a snapshot never sees half a round."""
        with self.lock:
            try:
                for route, block in batch.blocks.items():
                    self._step(route, block)
            except BaseException:
                self.failed = True
                raise
        if self.ingest is not None and batch.finished:
            self.ingest.acknowledge(batch.finished)

    def _step(self, route: int, block: Block) -> None:
        engine = self.engines[route]
        for ids, ts, values in block.waves():
            t0 = time.perf_counter()
            scored = engine.step(ids, ts, values)
            self.inference.observe(time.perf_counter() - t0)
            self.batch_sizes.observe(len(ids))
            self.waves += 1
            if len(scored.ts):
                self.latency.observe(time.time() - scored.ts)
            if self.recorder is not None:
                self.recorder.write(self.route_names[route], scored)
            if self.alerts is not None and (scored.entered.any() or scored.left.any()):
                self.alerts.publish(self.route_names[route], engine, scored)


def load_model(route: RouteConfig, cfg: Config) -> StepModel:
    return StepModel(
        route.model or DEFAULT_MODEL,
        provider=cfg.engine.provider,
        threads=cfg.engine.threads,
        sha256=route.model_sha256 or None,
    )


def make_route(index: int, route: RouteConfig, model: StepModel, cfg: Config) -> Route:
    channels = model.info.n_outputs
    if len(route.value_fields) != channels:
        raise ConfigError(
            f"routes[{index}].value_fields: the model reads {channels} channels "
            f"{model.info.output_features}, the route names {len(route.value_fields)}"
        )
    template = TopicTemplate(route.topic, route.stream_id or None)
    spec = PayloadSpec(
        format=route.format,
        value_fields=tuple(route.value_fields),
        time_field=route.time_field,
        time_unit=route.time_unit,
        max_bytes=cfg.batch.max_payload_bytes,
        # A message must fit in the queue, or QoS 1 back-pressure would wait for room forever.
        max_readings=min(PayloadSpec.max_readings, cfg.batch.queue_size),
    )
    return Route(index, route.name, template.topic_filter, Parser(template, spec))


def calibration(model: StepModel, cfg: Config) -> CalibrationConfig:
    """The model's own score calibration with the operator's `engine.calibration` over it."""
    own = CalibrationConfig.from_dict(model.info.extra.get("calibration", {}))
    try:
        return own.with_overrides(cfg.engine.calibration)
    except ConfigError as e:
        raise ConfigError(f"engine.calibration: {e}") from None


def engine_settings(cfg: Config) -> EngineSettings:
    e = cfg.engine
    return EngineSettings(e.capacity, e.gap_reset, e.warmup, e.enter, e.leave)


class Daemon:
    """`streamer run`: everything wired from one validated Config."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        models = [load_model(r, cfg) for r in cfg.routes]
        routes = [
            make_route(i, r, m, cfg)
            for i, (r, m) in enumerate(zip(cfg.routes, models, strict=True))
        ]
        self.engines = [StreamEngine(m, engine_settings(cfg), calibration(m, cfg)) for m in models]
        b = cfg.batch
        self.batcher = Batcher(b.max_size, b.max_delay_ms / 1000.0, b.queue_size, b.max_run)
        self.ingest = Ingest(cfg.mqtt, routes, self.batcher, cfg.log)
        alerts = AlertPublisher(self.ingest.receiver, cfg.alerts) if cfg.alerts.enabled else None
        recorder = Recorder(cfg.output.jsonl) if cfg.output.jsonl else None
        self.pipeline = Pipeline(
            self.engines, [r.name for r in routes], self.batcher, self.ingest, alerts, recorder
        )
        self.ops = OpsStats()
        self.registry = CollectorRegistry()
        self.registry.register(StreamerCollector(self.pipeline, cfg.metrics.max_streams))
        self.registry.register(OpsCollector(self.ops))
        self.endpoint = (
            Endpoint(cfg.metrics, self.registry, self.ready) if cfg.metrics.enabled else None
        )
        self.worker = threading.Thread(target=self.pipeline.run, name="engine", daemon=True)
        self.snapshot_path = Path(cfg.state.dir) / "snapshot.bin" if cfg.state.dir else None
        self._model_stamps = [_stamp(m.path) for m in models]
        self._stopped = threading.Event()
        self._reload = threading.Event()

    @property
    def metrics_port(self) -> int | None:
        return self.endpoint.port if self.endpoint else None

    def ready(self) -> tuple[bool, str]:
        if not self.ingest.alive():
            return False, "the MQTT receiver process exited"
        if not self.ingest.connected.is_set():
            return False, f"not connected to broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port}"
        return True, "ready"

    def start(self) -> None:
        self.restore_snapshot()
        if self.endpoint:
            self.endpoint.start()
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.host, self.endpoint.port)
        self.worker.start()
        self.ingest.start()
        threading.Thread(target=self._maintain, name="maintenance", daemon=True).start()

    def restore_snapshot(self) -> None:
        """Continue where the last run stopped; a bad snapshot means a cold start, never a crash."""
        if self.snapshot_path is None or not self.snapshot_path.exists():
            self.ops.restore = "none"
            return
        try:
            saved = {r.name: r for r in snapshot.load(self.snapshot_path)}
            with self.pipeline.lock:
                for name, engine in zip(self.pipeline.route_names, self.engines, strict=True):
                    if name in saved:
                        n = snapshot.restore(saved[name], engine.store)
                        log.info(
                            "route %s: restored %d streams from %s", name, n, self.snapshot_path
                        )
            self.ops.restore = "restored"
        except SnapshotError as e:
            for engine in self.engines:  # all or nothing: no route half restored
                engine.reset()
            self.ops.restore = "refused"
            log.error("snapshot %s refused, starting cold: %s", self.snapshot_path, e)

    def save_snapshot(self) -> None:
        if self.snapshot_path is None:
            return
        try:
            with self.pipeline.lock:
                if self.pipeline.failed:  # like after SIGKILL: the last good snapshot stays
                    log.error("engine failed: no snapshot of a state ahead of the acknowledgements")
                    return
                states = [
                    snapshot.capture(name, e.store, e.model.sha256)
                    for name, e in zip(self.pipeline.route_names, self.engines, strict=True)
                ]
            size = snapshot.save(self.snapshot_path, states)
            self.ops.snapshot_ok(size)
        except (OSError, SnapshotError) as e:
            self.ops.snapshots_failed += 1
            log.error("snapshot to %s failed: %s", self.snapshot_path, e)

    def reload_models(self) -> None:
        """SIGHUP or a changed model file: load, validate, swap. A bad file leaves the old model serving."""
        for i, (route, engine) in enumerate(zip(self.cfg.routes, self.engines, strict=True)):
            try:
                model = load_model(route, self.cfg)
                make_route(i, route, model, self.cfg)
            except (ModelError, ConfigError) as e:
                self._model_stamps[i] = _stamp(
                    engine.model.path
                )  # retry on the next change, not every second
                self.ops.reloads["failed"] += 1
                log.error("route %s: model reload refused, the old model stays: %s", route.name, e)
                continue
            with self.pipeline.lock:
                kept = engine.swap_model(model)
            self.ops.reloads["kept_state" if kept else "reset_state"] += 1
            self._model_stamps[i] = _stamp(model.path)
            log.info(
                "route %s: model %s loaded (%s)",
                route.name,
                model.sha256[:12],
                "state kept" if kept else "state reset",
            )

    def _maintain(self, poll_s: float = 1.0) -> None:
        """Periodic snapshots and model-file watching, off the engine thread."""
        next_snapshot = time.monotonic() + self.cfg.state.snapshot_interval_s
        while not self._stopped.wait(poll_s):
            changed = any(
                _stamp(m.path) != s
                for m, s in zip((e.model for e in self.engines), self._model_stamps, strict=True)
            )
            if self._reload.is_set() or changed:
                self._reload.clear()
                self.reload_models()
            if time.monotonic() >= next_snapshot:
                self.save_snapshot()
                next_snapshot = time.monotonic() + self.cfg.state.snapshot_interval_s

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop taking messages, score what was queued, acknowledge it, snapshot, disconnect."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("shutting down: draining %d queued readings", self.batcher.depth())
        self.ingest.stop_taking()
        self.pipeline.stop.set()
        self.worker.join(timeout_s)
        self.save_snapshot()
        self.ingest.close()
        if self.pipeline.recorder is not None:
            self.pipeline.recorder.close()
        if self.endpoint:
            self.endpoint.stop()
        log.info("stopped")

    def run_forever(self) -> int:
        """Until SIGTERM/SIGINT (SIGHUP reloads the models); exit status 0 after a clean shutdown."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self.start()
        while not done.wait(0.5):
            if not (self.worker.is_alive() and self.ingest.alive()):
                log.error(
                    "%s died; exiting", "engine thread" if self.ingest.alive() else "receiver"
                )
                self.shutdown()
                return 1
        self.shutdown()
        return 0


def _stamp(path: Path) -> tuple[float, int] | None:
    """What tells us a model file was replaced: modification time and size."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime, st.st_size
