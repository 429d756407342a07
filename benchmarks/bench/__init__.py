"""The performance benchmark: end to end over MQTT, the engine alone, memory, start-up.

`python -m benchmarks.bench all --out results.json`; BENCHMARKS.md explains the figures.
"""
