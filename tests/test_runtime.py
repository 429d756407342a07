"""Run-time plumbing: provider choice and its fallback, JSON logs, the log throttle."""

import json
import logging
import time

from streamer.logs import JsonFormatter, Throttle
from streamer.model import StepModel, select_providers


def test_cuda_falls_back_to_cpu_with_a_warning(model_path, caplog):
    import onnxruntime as ort

    caplog.set_level(logging.WARNING)
    model = StepModel(model_path, provider="cuda")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert model.provider == "CUDAExecutionProvider"
    else:
        assert model.provider == "CPUExecutionProvider"
        assert "onnxruntime-gpu" in caplog.text
    assert select_providers("cpu") == ["CPUExecutionProvider"]


def test_json_log_lines_parse():
    record = logging.LogRecord("streamer", logging.WARNING, __file__, 1, "bad %s", ("input",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "bad input" and entry["level"] == "warning"


def test_throttle_reports_once_per_interval_and_counts_the_rest(caplog):
    caplog.set_level(logging.WARNING)
    throttle = Throttle(logging.getLogger("t"), interval_s=0.05)
    for _ in range(100):
        throttle.warning("k", "bad message")
    assert caplog.text.count("bad message") == 1
    time.sleep(0.06)
    throttle.warning("k", "bad message")
    assert "99 more like this" in caplog.text
