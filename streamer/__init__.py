"""sensor-streamer: streaming anomaly detection for sensors.

A reading travels: MQTT message -> parse -> batcher -> engine (normalize, state,
model step, score) -> metrics and alerts. Nothing in this package imports torch.
"""

__version__ = "0.1.0"
