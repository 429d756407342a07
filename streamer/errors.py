"""Two kinds of failure, handled in opposite ways.

Bad *input* (a payload, a topic, a reading) is the world's fault and arrives all
the time: it is counted by reason and logged at a limited rate, and the daemon
carries on. Bad *configuration* (a config key, a model file, a snapshot that does
not fit) is the operator's fault: it stops start-up with a message naming what is
wrong, or, once running, is refused while the old, good one stays in service.
"""


class StreamerError(Exception):
    """Base of every error this package raises on purpose."""


class BadInput(StreamerError):
    """A message or reading that cannot be used. `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple:
        """Pickled by its arguments: the receiver process sends what it could not parse."""
        return BadInput, (self.reason, self.detail)


class ConfigError(StreamerError):
    """A configuration value is missing or invalid; the message names the key."""


class ModelError(StreamerError):
    """A model file is unreadable or breaks the step-model contract."""


class SnapshotError(StreamerError):
    """A state snapshot is corrupt or does not fit the running model."""
