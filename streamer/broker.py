"""A local Mosquitto on a free loopback port: for `streamer demo`, the benchmarks and the tests.

Configured the way the daemon should be run against: no queue limit that silently
drops QoS 1 messages to a slow subscriber (Mosquitto's default is 1000), a large
in-flight window so manual acknowledgements do not throttle delivery, and optional
persistence so a broker restart loses nothing.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import ConfigError

CONFIG = """\
listener {port} 127.0.0.1
{listener}
user {user}
max_queued_messages 0
max_inflight_messages 0
max_packet_size 1048576
set_tcp_nodelay true
persistence {persistence}
persistence_location {dir}/
autosave_interval 1
log_dest file {dir}/mosquitto.log
log_type error
log_type warning
log_type notice
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class Mosquitto:
    """Start, stop and restart a mosquitto process; same port and data directory across restarts."""

    def __init__(
        self,
        port: int | None = None,
        persistence: bool = True,
        workdir: Path | None = None,
        listener: str = "allow_anonymous true",
    ) -> None:
        """`listener`: mosquitto.conf lines for the listener (TLS files, password_file, ...)."""
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
            None,
        )
        if binary is None:
            raise ConfigError(
                "mosquitto is not installed: run ./scripts/setup (or apt-get install mosquitto)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="streamer-mqtt-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            CONFIG.format(
                port=self.port,
                user=getpass.getuser(),
                listener=listener,
                persistence="true" if persistence else "false",
                dir=self.dir,
            )
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
