"""Configuration: file, environment and flags agree; every mistake names its key."""

import argparse

import pytest

from streamer import config
from streamer.__main__ import build_parser
from streamer.app import Daemon
from streamer.errors import ConfigError


def test_precedence_flag_over_env_over_file(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[mqtt]\nhost = "file"\nport = 1000\nqos = 0\n')
    args = build_parser().parse_args(["run", "--mqtt-host", "flag"])
    cfg = config.load(f, args, environ={"STREAMER_MQTT_HOST": "env", "STREAMER_MQTT_PORT": "2000"})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.qos) == ("flag", 2000, 0)


def test_routes_from_file(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        '[[routes]]\nname = "vitals"\ntopic = "h/{bed}/{sig}"\nvalue_fields = ["hr", "spo2"]\n'
        '[[routes]]\nname = "plant"\ntopic = "p/{rest+}"\nformat = "senml"\n'
    )
    cfg = config.load(f, environ={})
    assert [r.name for r in cfg.routes] == ["vitals", "plant"]
    assert cfg.routes[0].value_fields == ("hr", "spo2")


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("", {"STREAMER_MQTT_PORT": "0"}, "mqtt.port"),
        ("", {"STREAMER_MQTT_PORT": "abc"}, "mqtt.port"),
        ("", {"STREAMER_MQTT_QOS": "2"}, "mqtt.qos"),
        ("", {"STREAMER_MQTT_TLS": "maybe"}, "mqtt.tls"),
        ("", {"STREAMER_ENGINE_ENTER": "0.5", "STREAMER_ENGINE_LEAVE": "0.9"}, "engine.enter"),
        ("", {"STREAMER_ENGINE_CAPACITY": "10"}, "engine.capacity"),
        ("", {"STREAMER_MQTT_CA_FILE": "/nonexistent/ca.pem"}, "mqtt.ca_file"),
        ("", {"STREAMER_ENGINE_CALIBRATION": "{quantile: 1}"}, "engine.calibration: not JSON"),
        ("", {"STREAMER_ENGINE_CALIBRATION": "[1]"}, "engine.calibration: must be a JSON obj"),
        ("", {"STREAMER_ENGINE_CALIBRATION": '{"qantile": 0.9}'}, "engine.calibration: unknown"),
        ("", {"STREAMER_ENGINE_CALIBRATION": '{"quantile": 2}'}, "calibration.quantile"),
        ("[mqtt]\nhots = 1\n", {}, "mqtt.hots"),
        ("[mqt]\n", {}, "mqt"),
        ('[[routes]]\nformat = "xml"\n', {}, "routes[0].format"),
        ('[[routes]]\nmodel = "/nonexistent.onnx"\n', {}, "routes[0].model"),
        ("[mqtt\n", {}, "config file"),
    ],
)
def test_errors_name_the_key(tmp_path, text, env, key):
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config.load(f, environ=env)


def test_every_key_is_a_flag():
    parser = argparse.ArgumentParser()
    config.add_flags(parser)
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings}
    for section, cls in config.SECTIONS.items():
        for name in cls.__dataclass_fields__:
            assert f"--{section}-{name}".replace("_", "-") in flags


def test_the_daemon_scores_with_the_model_calibration_and_the_operator_overrides():
    env = {"STREAMER_METRICS_ENABLED": "false"}
    default = Daemon(config.load(environ=env)).engines[0]
    assert default.calibration.seasonal_harmonics == 3 and default.store.seasonal.enabled
    overrides = {"STREAMER_ENGINE_CALIBRATION": '{"seasonal_harmonics": 0}'}
    tuned = Daemon(config.load(environ={**env, **overrides})).engines[0]
    assert tuned.calibration.seasonal_harmonics == 0 and not tuned.store.seasonal.enabled
    assert tuned.calibration.novelty_weight == default.calibration.novelty_weight
