"""Where a wave's time goes: each part of the per-reading path timed on its own, no sockets.

The end-to-end and engine benchmarks (`benchmarks.bench`) say how fast the whole is;
this says which part to work on, and lets a change to one part be measured against
the code before it (run it on both commits, back to back). Every figure is the minimum
over repeats: on a shared machine the minimum is what the code costs, the rest is
the neighbours.

    python -m benchmarks.parts                 # the default model (GRU-64), waves of 1,024
    python -m benchmarks.parts --streams 64 --repeats 3

Parts: the engine's steps inside `StreamEngine.step` (id lookup, normaliser, envelope,
time-of-day profile on a wave with nothing to learn and on the wave a minute that learns,
gap feature, surprise, calibration, the hidden state's gather and scatter), the whole
step against a bare `session.run` (the minimum over slices of 60 waves, one full
minute of the profile), parsing an array and a SenML pack of 100 readings, and the
work of ingest for a one-reading message (`Ingest.take`: parse and queue).
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from collections.abc import Callable

import numpy as np
import orjson

from benchmarks import OfflineDaemon
from benchmarks.bench.engine import EngineDriver, SessionDriver
from streamer.model import DEFAULT_MODEL, StepModel
from streamer.parse import Parser, PayloadSpec, TopicTemplate
from streamer.score import surprise

T0 = 1_700_000_000.0


def best_us(fn: Callable[[], object], number: int, repeats: int) -> float:
    """Microseconds a call of `fn`: the minimum over `repeats` timings of `number` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6


def engine_parts(streams: int, repeats: int) -> dict[str, float]:
    """Microseconds a wave of `streams` known streams, part by part, in the steady state."""
    driver = EngineDriver(StepModel(DEFAULT_MODEL), streams)
    for _ in range(130):  # past every warm-up
        driver()
    engine, store = driver.engine, driver.engine.store
    rows, _ = store.lookup(driver.ids)
    values = driver.values[5]
    # 30.5 s into a minute: the previous reading, 1 s earlier, is in the same minute.
    ts, second = np.full(streams, T0 + 1030.5), np.full(streams, 1.0)
    scale = store.normalizer.scale(rows)
    z = store.normalizer.step(rows, values, scale)
    mean, log_var = store.pred_mean[rows], store.pred_log_var[rows]
    novelty = store.envelope.step(rows, values, scale, 64)
    total, _ = surprise(z, mean, log_var)
    seasonal = store.seasonal
    parts = {
        "lookup": lambda: store.lookup(driver.ids),
        "normaliser": lambda: store.normalizer.step(rows, values, store.normalizer.scale(rows)),
        "envelope": lambda: store.envelope.step(rows, values, scale, 64),
        "profile, nothing to learn": lambda: seasonal.step(rows, values, ts, second, scale, 64),
        "profile, every stream learns": lambda: seasonal.step(
            rows, values, ts, np.full(streams, 300.0), scale, 64
        ),
        "gap feature and resets": lambda: (
            engine._reset_after_gaps(rows, second),
            store.gaps.step(rows, second),
        ),
        "surprise": lambda: surprise(z, mean, log_var),
        "calibration": lambda: store.calibrator.step(rows, total, novelty, None, ts),
        "hidden state gather and scatter": lambda: store.h.__setitem__(rows, store.h.take(rows, 0)),
    }
    return {name: best_us(fn, 100, repeats) for name, fn in parts.items()}


def engine_ratio(streams: int, slices: int) -> dict[str, float]:
    """The whole step against a bare `session.run`: minimum microseconds a wave over slices
    of 60 waves (one minute of 1 s readings: the profile's learning wave included)."""
    model = StepModel(DEFAULT_MODEL)
    engine, session = EngineDriver(model, streams), SessionDriver(model, streams)
    for _ in range(120):
        engine()
        session()
    best = {"engine": np.inf, "session": np.inf}
    for _ in range(slices):
        for name, fn in (("engine", engine), ("session", session)):
            start = time.process_time()
            for _ in range(60):
                fn()
            best[name] = min(best[name], (time.process_time() - start) / 60 * 1e6)
    return {**best, "ratio": best["session"] / best["engine"]}


def parsing(repeats: int, k: int = 100) -> dict[str, float]:
    """Microseconds a reading to parse an array of `k` objects and a SenML pack of `k` sensors."""
    parser = Parser(TopicTemplate("sensors/{stream}"), PayloadSpec())
    array = orjson.dumps([{"value": float(j % 7), "ts": T0 + j} for j in range(k)])
    pack = orjson.dumps(
        [{"bt": T0, "n": "c0", "v": 1.0}] + [{"n": f"c{j}", "v": float(j % 7)} for j in range(1, k)]
    )
    return {
        f"array of {k}": best_us(lambda: parser.parse("sensors/x", array, T0), 300, repeats) / k,
        f"SenML pack of {k}": best_us(lambda: parser.parse("sensors/x", pack, T0), 300, repeats)
        / k,
    }


def ingest_take(repeats: int, messages: int = 10_000) -> float:
    """Microseconds `Ingest.take` spends on a one-reading JSON message from the receiver:
    parsed and queued (a fresh daemon for each timing, so the queue always has room)."""
    msgs = [
        (0, f"sensors/s{i}", orjson.dumps({"value": 1.0 + i % 7, "ts": T0 + i}), 1, 0)
        for i in range(messages)
    ]
    best = np.inf
    for _ in range(repeats):
        take = OfflineDaemon.build().daemon.ingest.take
        start = time.perf_counter()
        for msg in msgs:
            take(*msg)
        best = min(best, time.perf_counter() - start)
    return best / messages * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--streams", type=int, default=1024, help="wave size (default 1024)")
    ap.add_argument("--repeats", type=int, default=15, help="timings per part (default 15)")
    ap.add_argument("--slices", type=int, default=150, help="engine vs session (default 150)")
    ap.add_argument("--out", help="write every figure as JSON here")
    args = ap.parse_args()
    results = {
        "engine parts, us a wave": engine_parts(args.streams, args.repeats),
        "engine vs session.run, us a wave": engine_ratio(args.streams, args.slices),
        "parse, us a reading": parsing(args.repeats),
        "ingest, us a one-reading message": {"Ingest.take": ingest_take(args.repeats)},
    }
    for title, figures in results.items():
        print(f"\n{title}")
        for name, value in figures.items():
            print(f"  {name:34s} {value:10.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
