"""Memory per stream and time to ready, each measured in a fresh process.

Memory: an engine with the default model and a capacity of N streams, filled with N
distinct streams (waves of 8192 new ids through `StreamEngine.step`, so every row is
touched: numpy's untouched zero pages would not count). Bytes per stream is the RSS
growth over the process before the engine existed, divided by N: the numpy rows,
the id strings, the id map and allocator slack, all of it.

Start-up: `python -m streamer run` with the default model against a local broker,
from process start to the first 200 from /readyz (model loaded, broker connected).

    python -m benchmarks.bench.memory --streams 1000000
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from streamer.broker import Mosquitto, free_port
from streamer.engine import EngineSettings, StreamEngine
from streamer.model import StepModel

from .procs import ROOT, memory, result, spawn

WAVE = 8192
T0 = 1_700_000_000.0


def stream_id(i: int) -> str:
    """Ids of a realistic length (about 30 characters): they are part of the cost."""
    return f"plant{i % 50:02d}/line{i % 20:02d}/sensor-{i:08d}"


def fill(streams: int) -> dict[str, float]:
    """RSS before and after an engine of `streams` rows is filled (in this process)."""
    model = StepModel()
    scratch = StreamEngine(model, EngineSettings(capacity=WAVE))  # warms onnxruntime's arena
    scratch.step([stream_id(i) for i in range(WAVE)], np.full(WAVE, T0), np.ones((WAVE, 1)))
    before = memory()["rss"]
    engine = StreamEngine(model, EngineSettings(capacity=streams))
    start = time.perf_counter()
    for first in range(0, streams, WAVE):
        ids = [stream_id(i) for i in range(first, min(first + WAVE, streams))]
        engine.step(ids, np.full(len(ids), T0), np.full((len(ids), 1), 20.0))
    elapsed = time.perf_counter() - start
    after = memory()
    assert len(engine.store) == streams
    return {
        "streams": streams,
        "rss_before": before,
        "rss": after["rss"],
        "rss_peak": after["rss_peak"],
        "bytes_per_stream": (after["rss"] - before) / streams,
        "numpy_bytes_per_stream": engine.store.bytes_per_stream(),
        "fill_s": elapsed,
    }


def measure_memory(counts: list[int]) -> list[dict[str, float]]:
    """One fresh process per count, so no run inherits another's heap."""
    return [result(spawn("benchmarks.bench.memory", "--streams", n)) for n in counts]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def time_to_ready(runs: int, timeout_s: float = 30.0) -> dict[str, float | list[float]]:
    """Seconds from `python -m streamer run` starting to /readyz answering 200, over `runs` runs."""
    times = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-ready-") as tmp,
        Mosquitto(persistence=False, workdir=Path(tmp)) as broker,
    ):
        for _ in range(runs):
            port = free_port()
            env = {
                "STREAMER_MQTT_PORT": str(broker.port),
                "STREAMER_METRICS_PORT": str(port),
                "STREAMER_LOG_LEVEL": "warning",
            }
            start = time.perf_counter()
            proc = spawn("streamer", "run", env=env)
            try:
                while not _ready(port):
                    if proc.poll() is not None or time.perf_counter() - start > timeout_s:
                        raise RuntimeError(f"streamer run not ready (exit {proc.returncode})")
                    time.sleep(0.005)
                times.append(time.perf_counter() - start)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=30)
    return {"median_s": statistics.median(times), "max_s": max(times), "runs_s": times}


def interpreter_start_s() -> float:
    """A bare `python -c pass`, for scale: the part of start-up no code of ours can cut."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], cwd=ROOT, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", type=int, required=True)
    args = p.parse_args(argv)
    print(json.dumps(fill(args.streams)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
