"""The HTTP endpoint: /metrics for Prometheus, /healthz (alive) and /readyz (model loaded, broker connected).

Binds to localhost unless told otherwise; optional TLS and basic auth, so the
endpoint can be opened to a network without opening the data to it.
"""

from __future__ import annotations

import base64
import hmac
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from .config import MetricsConfig


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
        pass


def _authorized(environ: dict, credentials: bytes) -> bool:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if not header.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(header[6:], validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(given, credentials)


def make_app(
    registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]], credentials: bytes | None
):
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        if credentials is not None and not _authorized(environ, credentials):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="streamer"')])
            return [b"unauthorized\n"]
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            ok, why = ready()
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [(why + "\n").encode()]
        return metrics(environ, start_response)

    return app


class Endpoint:
    """A threaded WSGI server in a daemon thread."""

    def __init__(
        self, cfg: MetricsConfig, registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]
    ):
        credentials = (
            Path(cfg.basic_auth_file).read_bytes().strip() if cfg.basic_auth_file else None
        )
        self.server = make_server(
            cfg.host,
            cfg.port,
            make_app(registry, ready, credentials),
            _Server,
            handler_class=_QuietHandler,
        )
        if cfg.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            # Handshake in the request thread, not in accept(): a silent client must not stall the others.
            self.server.socket = ctx.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
