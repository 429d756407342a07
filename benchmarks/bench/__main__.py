"""python -m benchmarks.bench: the performance benchmark, one command, tables on stdout and JSON.

    python -m benchmarks.bench all --out results.json      everything (about 10 minutes)
    python -m benchmarks.bench e2e --repeats 5             one part; several: e2e,engine
    python -m benchmarks.bench all --quick                 a smoke run in seconds (what the test runs)
    python -m benchmarks.bench e2e --set batch.max_delay_ms=20   a daemon setting beyond the defaults

Parts: e2e (broker + load generator + daemon or bare subscriber, each its own process),
engine (StreamEngine.step vs session.run vs a naive torch loop), memory (RSS per
stream at 10k/100k/1M streams), startup (process start to /readyz 200).
See BENCHMARKS.md for what each figure means and the figures of the reference machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from . import report, suite


def _setting(text: str) -> tuple[str, str]:
    """`batch.max_delay_ms=20` -> ("STREAMER_BATCH_MAX_DELAY_MS", "20")."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"expected section.key=value, got {text!r}")
    return "STREAMER_" + key.replace(".", "_").upper(), value


def _parts(text: str) -> tuple[str, ...]:
    parts = suite.PARTS if text == "all" else tuple(text.split(","))
    unknown = set(parts) - set(suite.PARTS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown part {sorted(unknown)}; known: all, {suite.PARTS}"
        )
    return parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "parts", type=_parts, help="all, or a comma-separated list of " + ", ".join(suite.PARTS)
    )
    p.add_argument("--out", type=Path, help="write every figure as JSON here")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that it runs, measures nothing"
    )
    p.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="daemon setting (repeatable)",
    )
    for f in fields(suite.Plan):
        if isinstance(f.default, bool):
            p.add_argument(
                f"--{f.name}", action=argparse.BooleanOptionalAction, help=f"default {f.default}"
            )
        elif not isinstance(f.default, tuple):
            p.add_argument(
                f"--{f.name.replace('_', '-')}", type=type(f.default), help=f"default {f.default}"
            )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = suite.QUICK if args.quick else suite.Plan()
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(suite.Plan)
        if getattr(args, f.name, None) is not None
    }
    plan = replace(plan, **overrides)
    results = suite.run(
        plan, args.parts, dict(args.set), log=lambda s: print(s, file=sys.stderr, flush=True)
    )
    print(report.render(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
