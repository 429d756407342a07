"""A paho client configured from `MqttConfig`: protocol, session, TLS, credentials, backoff.

One place for it, so the daemon's receiver and `streamer simulate` reach a broker
the same way.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import MqttConfig


def read_password(cfg: MqttConfig, environ: dict[str, str] | None = None) -> str | None:
    """The broker password from STREAMER_MQTT_PASSWORD or mqtt.password_file; never from a flag."""
    environ = os.environ if environ is None else environ
    if "STREAMER_MQTT_PASSWORD" in environ:
        return environ["STREAMER_MQTT_PASSWORD"]
    if cfg.password_file:
        return Path(cfg.password_file).read_text().strip()
    return None


def make_client(
    cfg: MqttConfig,
    client_id: str | None = None,
    manual_ack: bool = False,
    password: str | None = None,
) -> mqtt.Client:
    """`password` when it was read earlier (the receiver process gets it from the daemon,
    which read it at start-up); otherwise `read_password`."""
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or cfg.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else cfg.clean_start,
        manual_ack=manual_ack,
    )
    client.reconnect_delay_set(int(max(1, cfg.reconnect_min_s)), int(max(1, cfg.reconnect_max_s)))
    if cfg.tls:
        client.tls_set(
            ca_certs=cfg.ca_file or None,
            certfile=cfg.cert_file or None,
            keyfile=cfg.key_file or None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(cfg.tls_insecure)
    if cfg.username:
        client.username_pw_set(cfg.username, password or read_password(cfg))
    return client


def connect(client: mqtt.Client, cfg: MqttConfig, clean_start: bool | None = None) -> None:
    """Where and how to connect (session, expiry); the client's loop connects and reconnects."""
    kwargs = {}
    if cfg.protocol == "5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        kwargs = {
            "clean_start": cfg.clean_start if clean_start is None else clean_start,
            "properties": props,
        }
    client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, **kwargs)
