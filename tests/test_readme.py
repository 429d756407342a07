"""The README's own-data walk-through runs as written: a newcomer's first commands must work."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def walkthrough() -> str:
    """The shell block of the walk-through, without the final `streamer run` (it would not return)."""
    block = re.search(r"```sh\n(# 1\. data.*?)```", README.read_text(), re.DOTALL)
    assert block, "the walk-through block is gone from README.md"
    script = block.group(1)
    assert " && streamer run --config mine.toml" in script
    return script.replace(" && streamer run --config mine.toml", "")


def test_the_own_data_walkthrough_trains_evaluates_and_configures(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = "set -euo pipefail\n" + walkthrough().replace("--epochs 3", "--epochs 1")
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs/mine/model.onnx").is_file()
    quality = json.loads((tmp_path / "eval/quality.json").read_text())
    assert len(quality["files"]) == 15  # 13 sensors, the vibration sensor's x, y, z apart
    assert quality["all"]["events"] == 15 * 3  # 3 labelled anomalies in each series
    assert quality["all"]["tp"] + quality["all"]["fn"] > 0
    assert (tmp_path / "eval-report/README.md").is_file()
    assert "route sensors: runs/mine/model.onnx" in done.stdout + done.stderr
