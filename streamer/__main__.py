"""The `streamer` command.

streamer demo                  everything on this machine: broker, simulated fleet, daemon, live view
streamer run -c streamer.toml  the daemon
streamer check-config -c F     validate a config and the models it names, print the effective config
streamer simulate              publish the synthetic fleet (with labelled anomalies) to a broker
streamer train / export / compare-cells / train-default
                               training (needs: pip install 'sensor-streamer[train]')
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import __version__, config, logs
from .errors import StreamerError

log = logging.getLogger("streamer")


def _config_parser() -> argparse.ArgumentParser:
    """Options shared by every command that builds a daemon config."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-c", "--config", metavar="FILE", help="TOML config file (keys: see README)")
    config.add_flags(p)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from .app import Daemon

    cfg = config.load(args.config, args)
    logs.setup(cfg.log.level, cfg.log.json)
    return Daemon(cfg).run_forever()


def cmd_check_config(args: argparse.Namespace) -> int:
    from .app import load_model, make_route

    cfg = config.load(args.config, args)
    for i, route in enumerate(cfg.routes):
        model = load_model(route, cfg)
        make_route(i, route, model, cfg)
        print(
            f"route {route.name}: {model.path} ({model.info.cell}, state {model.state_size}, sha256 {model.sha256})"
        )
    print(json.dumps(config.as_dict(cfg), indent=2))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import publish_fleet

    cfg = config.load(args.config, args)
    logs.setup(cfg.log.level, cfg.log.json)
    return publish_fleet(
        cfg.mqtt,
        args.streams,
        args.rate_hz,
        args.seed,
        args.prefix,
        args.duration,
        args.anomaly_rate,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    logs.setup("warning")
    return run_demo(args.streams, args.rate_hz, args.seed, args.metrics_port, args.duration)


def _add_fleet_flags(p: argparse.ArgumentParser, streams: int, rate_hz: float) -> None:
    p.add_argument(
        "--streams", type=int, default=streams, help=f"simulated sensors (default {streams})"
    )
    p.add_argument(
        "--rate-hz",
        type=float,
        default=rate_hz,
        help=f"readings per second per sensor (default {rate_hz})",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the fleet")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run; 0 = until Ctrl-C")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer",
        description="Streaming anomaly detection for sensors: an RNN per stream over MQTT, "
        "scores as Prometheus metrics and MQTT alerts.",
        epilog="Every config key is also a flag (--mqtt-host) and an environment variable "
        "(STREAMER_MQTT_HOST); precedence: flag > environment > file > default.",
    )
    parser.add_argument("--version", action="version", version=f"sensor-streamer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _config_parser()

    p = sub.add_parser(
        "run", parents=[common], help="run the daemon", description="Run the daemon until SIGTERM."
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate a config and its models, print the effective config",
    )
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser(
        "simulate",
        parents=[common],
        help="publish the synthetic fleet to the broker",
        description="Publish simulated sensors (industrial and physiological kinds) with labelled "
        "anomalies to the broker named by the [mqtt] config, as JSON {value, ts} on PREFIX/<stream>.",
    )
    _add_fleet_flags(p, streams=50, rate_hz=1.0)
    p.add_argument("--prefix", default="sensors", help="topic prefix (default sensors)")
    p.add_argument(
        "--anomaly-rate",
        type=float,
        default=0.002,
        help="chance per reading that an anomaly starts",
    )
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser(
        "demo",
        help="broker + simulated fleet + daemon + live view on this machine",
        description="Start a local Mosquitto on a free port, a simulated fleet, and the daemon with "
        "the shipped default model; show the streams and their scores live until Ctrl-C.",
    )
    _add_fleet_flags(p, streams=24, rate_hz=4.0)
    p.add_argument(
        "--metrics-port", type=int, default=9108, help="metrics on 127.0.0.1:PORT (default 9108)"
    )
    p.set_defaults(func=cmd_demo)
    _register_optional(sub)
    return parser


def _register_optional(sub: argparse._SubParsersAction) -> None:
    """Training subcommands, or a pointer to the extra that provides them."""
    try:
        from training.cli import register as register_training
    except ImportError:  # an install without the training package: say how to get it
        for name in ("train", "export", "compare-cells", "train-default"):
            p = sub.add_parser(name, help="(needs: pip install 'sensor-streamer[train]')")
            p.set_defaults(func=_needs_training)
    else:
        register_training(sub)
    from .evaluate import register as register_evaluate

    register_evaluate(sub)


def _needs_training(args: argparse.Namespace) -> int:
    print("training needs the train extra: pip install 'sensor-streamer[train]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StreamerError as e:
        print(f"streamer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
