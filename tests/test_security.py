"""Locked down by default: TLS with client certificates and hostname checks, passwords kept out of
flags and logs, the metrics endpoint on localhost with optional TLS and basic auth."""

import base64
import logging
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_until

from streamer import config
from streamer.__main__ import build_parser
from streamer.app import Daemon
from streamer.broker import Mosquitto, free_port


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for `localhost` only, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    for name, san in (
        ("server", "subjectAltName=DNS:localhost"),
        ("client", "subjectAltName=DNS:streamer"),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        (d / f"{name}.ext").write_text(san + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))  # fmt: skip
    return d


@pytest.fixture
def tls_broker(pki, tmp_path):
    listener = (
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false"
    )
    with Mosquitto(workdir=tmp_path / "mq", listener=listener) as b:
        yield b


def tls_config(broker: Mosquitto, pki: Path, host: str) -> config.Config:
    return config.load(
        environ={
            "STREAMER_MQTT_HOST": host,
            "STREAMER_MQTT_PORT": str(broker.port),
            "STREAMER_MQTT_TLS": "true",
            "STREAMER_MQTT_CA_FILE": str(pki / "ca.pem"),
            "STREAMER_MQTT_CERT_FILE": str(pki / "client.pem"),
            "STREAMER_MQTT_KEY_FILE": str(pki / "client.key"),
            "STREAMER_MQTT_RECONNECT_MAX_S": "1",
            "STREAMER_METRICS_ENABLED": "false",
        }
    )


def test_tls_with_client_certificate_connects(tls_broker, pki):
    d = Daemon(tls_config(tls_broker, pki, "localhost"))
    d.start()
    try:
        wait_until(d.ingest.connected.is_set, 10, "TLS connection")
    finally:
        d.shutdown()


def test_tls_hostname_is_checked_by_default(tls_broker, pki):
    """The server certificate names `localhost`; reaching it as 127.0.0.1 must fail."""
    d = Daemon(tls_config(tls_broker, pki, "127.0.0.1"))
    d.start()
    try:
        time.sleep(2.0)
        assert not d.ingest.connected.is_set()
        assert d.ready()[0] is False
    finally:
        d.shutdown()


def test_password_comes_from_the_environment_and_is_never_logged(tmp_path, caplog, monkeypatch):
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "streamer", "s3cret-Pa55"], check=True
    )
    passwd.chmod(0o644)
    listener = f"allow_anonymous false\npassword_file {passwd}"
    with Mosquitto(workdir=tmp_path / "mq", listener=listener) as broker:
        env = {
            "STREAMER_MQTT_PORT": str(broker.port),
            "STREAMER_MQTT_USERNAME": "streamer",
            "STREAMER_METRICS_ENABLED": "false",
            "STREAMER_MQTT_RECONNECT_MAX_S": "1",
        }
        caplog.set_level(logging.DEBUG)
        monkeypatch.setenv("STREAMER_MQTT_PASSWORD", "wrong")
        wrong = Daemon(config.load(environ=env))
        monkeypatch.setenv("STREAMER_MQTT_PASSWORD", "s3cret-Pa55")
        right = Daemon(config.load(environ=env))
        for d in (right, wrong):
            d.start()
        try:
            wait_until(right.ingest.connected.is_set, 10, "authenticated connection")
            time.sleep(1.0)
            assert not wrong.ingest.connected.is_set()
        finally:
            right.shutdown()
            wrong.shutdown()
    assert "s3cret-Pa55" not in caplog.text


def test_no_flag_takes_a_password():
    """A password on the command line is visible to every user in `ps`: only a file or the environment."""
    flags = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "--mqtt-password-file" in flags
    assert "--mqtt-password " not in flags and "--mqtt-password\n" not in flags


def test_metrics_endpoint_localhost_tls_and_basic_auth(broker, pki, tmp_path):
    assert config.MetricsConfig().host == "127.0.0.1"
    auth = tmp_path / "auth"
    auth.write_text("prom:scrape-me\n")
    port = free_port()
    cfg = config.load(
        environ={
            "STREAMER_MQTT_PORT": str(broker.port),
            "STREAMER_METRICS_PORT": str(port),
            "STREAMER_METRICS_TLS_CERT": str(pki / "server.pem"),
            "STREAMER_METRICS_TLS_KEY": str(pki / "server.key"),
            "STREAMER_METRICS_BASIC_AUTH_FILE": str(auth),
        }
    )
    d = Daemon(cfg)
    d.start()
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    url = f"https://localhost:{port}/metrics"
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, context=ctx, timeout=5)
        assert e.value.code == 401
        req = urllib.request.Request(
            url, headers={"Authorization": "Basic " + base64.b64encode(b"prom:scrape-me").decode()}
        )
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            assert b"streamer_readings_total" in r.read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not served
            urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=5)
    finally:
        d.shutdown()
