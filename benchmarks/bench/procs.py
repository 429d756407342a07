"""Processes of a benchmark: spawning them, their CPU and memory from /proc, and their handshakes.

Every actor runs in its own process so that each one's CPU time is its own. A
consumer prints "ready" once subscribed and one JSON line when done; the driver
reads both from its stdout.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

READY = "ready"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[2]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of another process (all threads), from /proc/PID/stat (10 ms ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory(pid: int | str = "self") -> dict[str, int]:
    """Resident set size now and at its peak, bytes (VmRSS, VmHWM)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss" if key == "VmRSS" else "rss_peak"] = int(value.split()[0]) * 1024
    return out


def own_usage() -> dict[str, float]:
    return {"cpu_s": time.process_time(), **memory()}


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live Python thread of this process, by thread name."""
    return {
        t.name: time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        for t in threading.enumerate()
        if t.ident is not None
    }


class Progress:
    """Readings a consumer has handled, and when the first and the last one came."""

    def __init__(self, cpu: Callable[[], float] = time.process_time) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu = cpu  # CPU seconds of the consumer (the daemon: with its receiver process)
        self.cpu_at_first = 0.0

    def add(self, n: int, now: float) -> None:
        if not self.count:
            self.first = now
            self.cpu_at_first = self.cpu()
        self.count += n
        self.last = now

    def wait(self, expected: int, idle_s: float, count: Callable[[], int] | None = None) -> None:
        """Until `count()` (default: readings added) reaches `expected`, or stops moving for `idle_s`.

        Before anything arrives the patience is longer: the publisher may still be starting.
        Polled every 50 ms: often enough, since the rate is taken from `last`, and rarely
        enough not to take the GIL from the process being measured.
        """
        count = count or (lambda: self.count)
        seen, changed = -1, time.monotonic()
        while (n := count()) < expected:
            now = time.monotonic()
            if n != seen:
                seen, changed = n, now
            elif now - changed > (idle_s if n else 60.0):
                return
            time.sleep(0.05)

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "cpu_window_s": self.cpu() - self.cpu_at_first if self.count else 0.0,
        }


class Latencies:
    """Reading timestamp to handled, in seconds, with when it was handled (a float or an array each).

    Summarised after a warm-up: the first second holds one-off costs (every stream is
    new, onnxruntime sizes its buffers) that a running daemon does not pay again.
    """

    def __init__(self) -> None:
        self.batches: list[tuple[float, object]] = []

    def add(self, now: float, seconds: object) -> None:
        self.batches.append((now, seconds))

    def summary(self, warmup_s: float) -> dict[str, float]:
        start = self.batches[0][0] + warmup_s if self.batches else 0.0
        kept = [np.atleast_1d(s) for t, s in self.batches if t >= start]
        if not kept:
            return {"n": 0}
        s = np.concatenate(kept)
        p50, p99 = np.percentile(s, [50, 99])
        return {"n": len(s), "p50": float(p50), "p99": float(p99), "max": float(s.max())}


def announce_ready() -> None:
    print(READY, flush=True)


def spawn(
    module: str, *args: object, env: dict[str, str] | None = None, cpus: str = ""
) -> subprocess.Popen:
    """`python -m module args` from the repository root; stdout piped for the handshake.

    STREAMER_* variables of the caller's environment are not passed on: a benchmark
    runs the configuration it states (the defaults plus `env`), not whatever is set.
    `cpus` pins the process to those CPUs (`taskset -c` syntax).
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    pin = ["taskset", "-c", cpus] if cpus else []
    return subprocess.Popen(
        [*pin, sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env={**inherited, **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
    )


def await_ready(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Block until the process prints "ready"; a process that dies first is an error."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline()
        if line.strip() == READY:
            return
        if not line and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before it was ready")
    proc.kill()
    raise TimeoutError(f"{proc.args} not ready after {timeout_s} s")


def result(proc: subprocess.Popen, timeout_s: float = 300.0) -> dict:
    """The JSON line a process prints last; an error if it failed."""
    out, _ = proc.communicate(timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])
