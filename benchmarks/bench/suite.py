"""What a benchmark run measures, in which order, and how the repeats become figures and verdicts.

A run repeats the end-to-end scenarios in pairs (baseline, then daemon, same payload
and QoS, each on a fresh broker) so that every ratio is taken within one repeat, on
the machine as loaded at that moment; the figures are the medians over the repeats.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import paho.mqtt

from . import endtoend, engine, memory
from .endtoend import Outcome, Scenario
from .procs import ROOT


@dataclass(frozen=True)
class Plan:
    """Sizes and settings of a run; every field is also a flag of `python -m benchmarks.bench`."""

    repeats: int = 3
    streams: int = 10_000
    single_readings: int = 150_000  # per one-reading scenario
    batched_readings: int = 600_000  # per array / SenML scenario
    batch: int = 100  # readings per array or SenML message
    latency_s: float = 10.0  # the paced latency run
    warmup_s: float = 1.0  # latencies in the first second after the first reading are left out
    nodelay: bool = True  # the broker sets TCP_NODELAY (see endtoend.broker)
    cpus: str = ""  # pin the daemon and the baseline to these CPUs (taskset -c); "": not pinned
    hidden_sizes: tuple[int, ...] = (32, 64, 128)
    batches: tuple[int, ...] = (1, 64, 1024, 8192)
    slice_s: float = 0.2
    rounds: int = 5
    calibration: str = ""  # engine part: JSON over the score calibration, as engine.calibration
    memory_streams: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    startup_runs: int = 5


# Small enough for the test suite: every part runs, no figure means anything.
QUICK = Plan(
    repeats=1,
    streams=50,
    single_readings=600,
    batched_readings=1000,
    batch=10,
    latency_s=0.5,
    warmup_s=0.0,
    hidden_sizes=(16,),
    batches=(1, 64),
    slice_s=0.02,
    rounds=1,
    memory_streams=(2000,),
    startup_runs=1,
)

# (payload, batched, qos): one-reading JSON at both QoS levels, arrays and SenML packs.
SHAPES = (("json", False, 0), ("json", False, 1), ("array", True, 1), ("senml", True, 1))


def label(payload: str, batch: int, qos: int, consumer: str, paced: bool = False) -> str:
    shape = payload if batch == 1 else f"{payload}x{batch}"
    return f"{shape} qos{qos} {consumer}" + (" @half" if paced else "")


def e2e_repeat(plan: Plan, daemon_env: dict[str, str]) -> dict[str, Outcome]:
    """One repeat: each shape with the baseline then the daemon, then the paced latency runs.

    Batched payloads run at QoS 1, the default, so a backlog waits in the broker
    (back-pressure) and the rate is one with nothing lost. The latency runs pace
    one-reading messages at half the rate the daemon reached in this repeat, for the
    daemon and, as the reference, the baseline.
    """
    setup = endtoend.Setup(tuple(daemon_env.items()), plan.warmup_s, plan.nodelay, plan.cpus)
    out: dict[str, Outcome] = {}
    for payload, batched, qos in SHAPES:
        batch = plan.batch if batched else 1
        readings = plan.batched_readings if batched else plan.single_readings
        for consumer in endtoend.CONSUMERS[::-1]:  # bare first
            sc = Scenario(consumer, payload, batch, qos, plan.streams, readings)
            out[label(payload, batch, qos, consumer)] = endtoend.run(sc, setup)
    for qos in (0, 1):
        rate = out[label("json", 1, qos, "daemon")].rate / 2
        readings = max(plan.streams, int(rate * plan.latency_s))
        for consumer in endtoend.CONSUMERS[::-1]:
            sc = Scenario(consumer, "json", 1, qos, plan.streams, readings, rate)
            paced = label("json", 1, qos, consumer, paced=True)
            out[paced] = endtoend.run(sc, setup)
    return out


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarise_e2e(repeats: list[dict[str, Outcome]]) -> dict[str, dict]:
    """Medians over repeats per scenario, and daemon/baseline ratios taken within each repeat."""
    summary: dict[str, dict] = {}
    for name in repeats[0]:
        runs = [r[name] for r in repeats]
        summary[name] = {
            "rate": _median([o.rate for o in runs]),
            "cpu_per_reading_us": _median([o.cpu_per_reading_us for o in runs]),
            "lost": sum(o.lost for o in runs),
            "dropped": sum(sum(o.dropped.values()) for o in runs),
            "queue_peak": max(o.queue_peak for o in runs),
            "mean_wave": _median([o.mean_wave for o in runs]),
            "rss_mb": _median([o.rss.get("consumer", 0) / 2**20 for o in runs]),
            "cpu_share": {
                proc: _median([o.cpu_s[proc] / max(o.seconds, 1e-9) for o in runs])
                for proc in runs[0].cpu_s
            },
            **{
                f"latency_{k}_ms": _median([1e3 * o.latency[k] for o in runs if k in o.latency])
                for k in ("p50", "p99", "max")
                if any(k in o.latency for o in runs)
            },
        }
    for daemon in [name for name in summary if " daemon" in name]:
        bare = daemon.replace(" daemon", " bare")
        summary[daemon]["vs_bare_rate"] = _median([r[daemon].rate / r[bare].rate for r in repeats])
        summary[daemon]["vs_bare_cpu"] = _median(
            [r[bare].cpu_per_reading_us / r[daemon].cpu_per_reading_us for r in repeats]
        )
    return summary


@dataclass
class Verdict:
    target: str
    value: float
    bound: float
    higher_is_better: bool
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.bound if self.higher_is_better else self.value <= self.bound


def verdicts(results: dict) -> list[Verdict]:
    """Every target of the brief against the figures of this run (those it measured)."""
    out: list[Verdict] = []
    e2e = results.get("e2e", {}).get("summary", {})
    if e2e:
        one, paced = e2e["json qos0 daemon"], e2e["json qos0 daemon @half"]
        out.append(
            Verdict("one-reading msgs, QoS 0: daemon / bare rate", one["vs_bare_rate"], 0.85, True)
        )
        out.append(
            Verdict(
                "p99 latency at half that rate",
                paced.get("latency_p99_ms", np.inf),
                20.0,
                False,
                "ms",
            )
        )
        for name, o in e2e.items():
            if ("array" in name or "senml" in name) and name.endswith("daemon"):
                out.append(
                    Verdict(f"{name.removesuffix(' daemon')}: readings/s", o["rate"], 500_000, True)
                )
    rows = {(r["hidden"], r["batch"]): r for r in results.get("engine", [])}
    if (64, 1024) in rows:
        r = rows[(64, 1024)]
        out.append(Verdict("engine GRU-64 batch 1024 / session.run", r["vs_session"], 0.7, True))
        out.append(
            Verdict(
                "engine GRU-64 batch 1024, waves in any order / session.run",
                r["shuffled_vs_session"],
                0.7,
                True,
            )
        )
        out.append(
            Verdict("engine GRU-64 batch 1024 / naive torch loop", r["vs_naive"], 50.0, True)
        )
    mem = results.get("memory", [])
    if mem:
        largest = max(mem, key=lambda m: m["streams"])
        out.append(
            Verdict("numpy state per stream", largest["numpy_bytes_per_stream"], 1024, False, "B")
        )
        out.append(
            Verdict(
                f"RSS growth per stream at {largest['streams']:,}",
                largest["bytes_per_stream"],
                1024,
                False,
                "B",
            )
        )
        million = [m for m in mem if m["streams"] == 1_000_000]
        if million:
            out.append(
                Verdict("RSS with 1,000,000 streams", million[0]["rss"] / 2**30, 1.5, False, "GiB")
            )
    if "startup" in results:
        out.append(
            Verdict("process start to /readyz 200", results["startup"]["median_s"], 1.0, False, "s")
        )
    return out


def machine() -> dict[str, object]:
    cpuinfo: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        cpuinfo.setdefault(key.strip(), value.strip())  # the first processor's
    return {
        "cpu": " ".join(
            f"{k} {cpuinfo[k]}" if k != "model name" else cpuinfo[k]
            for k in ("model name", "cpu family", "model", "cpu MHz")
            if k in cpuinfo
        ),
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "paho_mqtt": paho.mqtt.__version__,
        "mosquitto": _first_line(["mosquitto", "-h"]),
        "commit": _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }


def _first_line(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


PARTS = ("e2e", "engine", "memory", "startup")


def run(
    plan: Plan,
    parts: tuple[str, ...] = PARTS,
    daemon_env: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Every part asked for; the results as one JSON-able dict with the verdicts."""
    results: dict = {"machine": machine(), "plan": asdict(plan), "daemon_env": daemon_env or {}}
    started = time.time()
    if "e2e" in parts:
        repeats = []
        for i in range(plan.repeats):
            log(f"end to end, repeat {i + 1}/{plan.repeats}")
            repeats.append(e2e_repeat(plan, daemon_env or {}))
        results["e2e"] = {
            "summary": summarise_e2e(repeats),
            "runs": [{k: o.to_dict() for k, o in r.items()} for r in repeats],
        }
    if "engine" in parts:
        log("engine alone")
        rows = engine.measure(
            plan.hidden_sizes, plan.batches, plan.slice_s, plan.rounds, plan.calibration
        )
        results["engine"] = [r.to_dict() for r in rows]
    if "memory" in parts:
        log("memory")
        results["memory"] = memory.measure_memory(list(plan.memory_streams))
    if "startup" in parts:
        log("start-up")
        results["startup"] = {
            **memory.time_to_ready(plan.startup_runs),
            "python_c_pass_s": memory.interpreter_start_s(),
        }
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["seconds"] = time.time() - started
    results["verdicts"] = [{**asdict(v), "met": v.met} for v in verdicts(results)]
    return results
