"""One frozen, typed configuration: TOML file, then environment, then flags; validated once.

Every scalar key of every section is also a flag (`--mqtt-host`) and an environment
variable (`STREAMER_MQTT_HOST`), generated from the dataclasses below, so the three
ways to configure can never drift apart. Routes are a list and live in the TOML
file only. Errors name the key (`mqtt.port: must be 1..65535, got 0`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .calibration import CalibrationConfig
from .errors import ConfigError

ENV_PREFIX = "STREAMER_"


@dataclass(frozen=True)
class MqttConfig:
    """How to reach the broker. Persistent sessions need a fixed client id and clean_start off."""

    host: str = "localhost"
    port: int = 1883
    client_id: str = "sensor-streamer"
    protocol: str = "5"  # "5" or "3.1.1"
    qos: int = 1
    clean_start: bool = False
    session_expiry_s: int = 86400
    keepalive_s: int = 30
    username: str = ""
    password_file: str = ""  # the password itself only via STREAMER_MQTT_PASSWORD
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_insecure: bool = False  # skip the hostname check: for test rigs only
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class RouteConfig:
    """A topic template with its payload format and its model: one daemon can watch several fleets."""

    name: str = "sensors"
    topic: str = "sensors/{stream+}"
    stream_id: str = ""  # e.g. "{device}:{channel}"; default joins the captured levels with "/"
    format: str = "auto"  # number | json | array | senml | auto
    value_fields: tuple[str, ...] = ("value",)
    time_field: str = "ts"
    time_unit: str = "auto"  # s | ms | iso | auto
    model: str = ""  # path to an .onnx step model; empty = the shipped default model
    model_sha256: str = ""  # pin the model file; a mismatch refuses to start


@dataclass(frozen=True)
class EngineConfig:
    """Per-stream state and scoring."""

    capacity: int = 100_000  # streams held; the least recently seen is evicted beyond it
    gap_reset: float = 20.0  # a gap of this many typical periods resets the stream's hidden state
    warmup: int = 0  # readings before a stream may alert; 0 = what the model declares
    enter: float = 0.999  # anomaly score at which a stream becomes anomalous
    leave: float = 0.99  # ... and below which it is normal again (hysteresis)
    provider: str = "cpu"  # cpu | cuda | auto
    threads: int = 1
    # JSON object of score calibration fields over the model's own, e.g. '{"seasonal_harmonics": 0}'
    calibration: str = ""


@dataclass(frozen=True)
class BatchConfig:
    """How readings are gathered into one model call: larger waves are cheaper per reading."""

    max_size: int = 4096  # streams per wave (one model call)
    max_delay_ms: float = 5.0
    queue_size: int = 200_000
    max_run: int = 16  # readings of one stream per round of waves
    max_payload_bytes: int = 65536


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108  # 0 = any free port (logged)
    max_streams: int = 1000  # per-stream series exported; the most anomalous first beyond it
    tls_cert: str = ""
    tls_key: str = ""
    basic_auth_file: str = ""  # a file holding "user:password"


@dataclass(frozen=True)
class AlertsConfig:
    enabled: bool = True
    topic: str = "streamer/alerts/{stream}"
    qos: int = 1


@dataclass(frozen=True)
class StateConfig:
    dir: str = ""  # where snapshots live; empty = no snapshots
    snapshot_interval_s: float = 60.0


@dataclass(frozen=True)
class OutputConfig:
    jsonl: str = ""  # append every scored reading here as a JSON line (an audit trail); empty = off


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    json: bool = False


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    log: LogConfig = field(default_factory=LogConfig)
    routes: tuple[RouteConfig, ...] = (RouteConfig(),)


SECTIONS: dict[str, type] = {
    f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "routes"
}


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """Turn TOML/env/flag text into the field's type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(v).strip() for v in items if str(v).strip())
        if kind is int and isinstance(value, float):
            raise ValueError(f"not an integer: {value!r}")
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    return cls(**{k: _coerce(where + k, hints[k], v) for k, v in data.items()})


def _scalar_fields(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`--section-key` for every scalar key; defaults None so only given flags override."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"[{section}]")
        for name, kind in _scalar_fields(cls):
            flag = f"--{section}-{name}".replace("_", "-")
            default = getattr(cls(), name)
            env = f"{ENV_PREFIX}{section}_{name}".upper()
            group.add_argument(
                flag,
                dest=f"cfg__{section}__{name}",
                default=None,
                metavar=_metavar(kind),
                help=f"default {default!r}; env {env}",
            )


def _metavar(kind: Any) -> str:
    if kind is bool:
        return "BOOL"
    if typing.get_origin(kind) is tuple:
        return "A,B"
    return kind.__name__.upper() if isinstance(kind, type) else "VALUE"


def load(
    path: str | Path | None = None,
    args: argparse.Namespace | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """The config from a TOML file (optional), overridden by environment, then flags; validated."""
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    environ = os.environ if environ is None else environ
    unknown = sorted(set(raw) - set(SECTIONS) - {"routes"})
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown section (known: {', '.join([*SECTIONS, 'routes'])})"
        )
    sections = {}
    for section, cls in SECTIONS.items():
        data = dict(raw.get(section) or {})
        if not isinstance(data, dict):
            raise ConfigError(f"{section}: must be a table")
        for name, _ in _scalar_fields(cls):
            env = environ.get(f"{ENV_PREFIX}{section}_{name}".upper())
            if env is not None:
                data[name] = env
            flag = getattr(args, f"cfg__{section}__{name}", None) if args else None
            if flag is not None:
                data[name] = flag
        sections[section] = _build(cls, data, f"{section}.")
    routes = raw.get("routes")
    if routes is None:
        route_list: tuple[RouteConfig, ...] = (RouteConfig(),)
    elif not isinstance(routes, list) or not routes:
        raise ConfigError("routes: must be a non-empty array of tables ([[routes]])")
    else:
        route_list = tuple(_build(RouteConfig, r, f"routes[{i}].") for i, r in enumerate(routes))
    cfg = Config(**sections, routes=route_list)
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def validate(cfg: Config) -> None:
    """Every rule a running daemon relies on, checked before anything starts."""
    m, e, b = cfg.mqtt, cfg.engine, cfg.batch
    _check(1 <= m.port <= 65535, "mqtt.port", "must be 1..65535", m.port)
    _check(m.protocol in ("5", "3.1.1"), "mqtt.protocol", 'must be "5" or "3.1.1"', m.protocol)
    _check(m.qos in (0, 1), "mqtt.qos", "must be 0 or 1", m.qos)
    _check(
        bool(m.client_id),
        "mqtt.client_id",
        "must be set (persistent sessions need it)",
        m.client_id,
    )
    _check(m.session_expiry_s >= 0, "mqtt.session_expiry_s", "must be >= 0", m.session_expiry_s)
    _check(m.keepalive_s >= 5, "mqtt.keepalive_s", "must be >= 5", m.keepalive_s)
    _check(
        0 < m.reconnect_min_s <= m.reconnect_max_s,
        "mqtt.reconnect_min_s",
        "must be > 0 and <= mqtt.reconnect_max_s",
        m.reconnect_min_s,
    )
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        value = getattr(m, key)
        _check(not value or Path(value).is_file(), f"mqtt.{key}", "file does not exist", value)
    _check(
        bool(m.cert_file) == bool(m.key_file),
        "mqtt.key_file",
        "cert_file and key_file go together",
        m.key_file,
    )
    _check(e.capacity >= 1, "engine.capacity", "must be >= 1", e.capacity)
    _check(e.capacity >= b.max_size, "engine.capacity", "must be >= batch.max_size", e.capacity)
    _check(e.gap_reset > 1, "engine.gap_reset", "must be > 1 (typical periods)", e.gap_reset)
    _check(e.warmup >= 0, "engine.warmup", "must be >= 0", e.warmup)
    _check(
        0 < e.leave <= e.enter < 1,
        "engine.enter",
        "needs 0 < engine.leave <= engine.enter < 1",
        e.enter,
    )
    _check(
        e.provider in ("cpu", "cuda", "auto"),
        "engine.provider",
        "must be cpu, cuda or auto",
        e.provider,
    )
    _check(e.threads >= 1, "engine.threads", "must be >= 1", e.threads)
    try:
        CalibrationConfig().with_overrides(e.calibration)
    except ConfigError as error:
        raise ConfigError(f"engine.calibration: {error}") from None
    _check(b.max_size >= 1, "batch.max_size", "must be >= 1", b.max_size)
    _check(b.max_run >= 1, "batch.max_run", "must be >= 1", b.max_run)
    _check(0 <= b.max_delay_ms <= 1000, "batch.max_delay_ms", "must be 0..1000", b.max_delay_ms)
    _check(
        b.queue_size >= b.max_size, "batch.queue_size", "must be >= batch.max_size", b.queue_size
    )
    _check(
        b.max_payload_bytes >= 16, "batch.max_payload_bytes", "must be >= 16", b.max_payload_bytes
    )
    _check(
        0 <= cfg.metrics.port <= 65535,
        "metrics.port",
        "must be 0..65535 (0 = any free port)",
        cfg.metrics.port,
    )
    _check(
        cfg.metrics.max_streams >= 0, "metrics.max_streams", "must be >= 0", cfg.metrics.max_streams
    )
    _check(
        bool(cfg.metrics.tls_cert) == bool(cfg.metrics.tls_key),
        "metrics.tls_key",
        "tls_cert and tls_key go together",
        cfg.metrics.tls_key,
    )
    _check(cfg.alerts.qos in (0, 1), "alerts.qos", "must be 0 or 1", cfg.alerts.qos)
    _check(
        "{stream}" in cfg.alerts.topic, "alerts.topic", "must contain {stream}", cfg.alerts.topic
    )
    _check(
        cfg.state.snapshot_interval_s > 0,
        "state.snapshot_interval_s",
        "must be > 0",
        cfg.state.snapshot_interval_s,
    )
    _check(
        cfg.log.level in ("debug", "info", "warning", "error"),
        "log.level",
        "must be debug|info|warning|error",
        cfg.log.level,
    )
    names = [r.name for r in cfg.routes]
    _check(len(set(names)) == len(names), "routes", "route names must be unique", names)
    for i, r in enumerate(cfg.routes):
        _check(
            r.format in ("auto", "number", "json", "array", "senml"),
            f"routes[{i}].format",
            "must be auto|number|json|array|senml",
            r.format,
        )
        _check(
            r.time_unit in ("auto", "s", "ms", "iso"),
            f"routes[{i}].time_unit",
            "must be auto|s|ms|iso",
            r.time_unit,
        )
        _check(
            bool(r.value_fields),
            f"routes[{i}].value_fields",
            "must name at least one field",
            r.value_fields,
        )
        _check(
            not r.model or Path(r.model).is_file(),
            f"routes[{i}].model",
            "file does not exist",
            r.model,
        )


def as_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration, secrets excluded (they are never in Config)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return plain(cfg)
