"""Training: it learns, it is reproducible, its run folder and CLI produce a model the daemon loads."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer import sim
from streamer.model import StepModel
from streamer.normalize import encode_series
from training import cli
from training.data import DataError, Series, synthetic
from training.model import load_checkpoint
from training.report import NO_MEMORY_NLL, CompareConfig, compare_cells, lag_episodes, lag_nll
from training.train import TrainConfig, encode, train

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(hidden_size=16, epochs=3, batch_size=8, chunk=64, progress=False, export=False)


@pytest.fixture(scope="module")
def fleet() -> list[Series]:
    return synthetic(8, 400, seed=3)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamer")
    cli.register(p.add_subparsers(dest="command", required=True))
    return p


def run_cli(*argv: str) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


def test_encode_feeds_the_daemon_normaliser_and_splits_each_series_in_time(fleet):
    cfg = TrainConfig(val_fraction=0.25)
    enc = encode(fleet, cfg)
    s = fleet[0]
    inputs = encode_series(s.values, s.ts, cfg.normalizer, cfg.gap)
    steps = len(s.ts) - 1
    np.testing.assert_array_equal(enc.x[0, :steps], inputs[:-1])
    np.testing.assert_array_equal(enc.y[0, :steps], inputs[1:, :1])
    assert enc.train[0].sum() == round(0.75 * steps)
    assert enc.val[0].sum() == steps - round(0.75 * steps)
    assert not (enc.train & enc.val).any()
    assert enc.train[0, : enc.train[0].sum()].all()  # training steps come first


def test_series_with_different_channels_cannot_share_a_model():
    ts = np.arange(50.0)
    a = Series("a", ts, np.zeros((50, 1)), ["value"])
    b = Series("b", ts, np.zeros((50, 2)), ["x", "y"])
    with pytest.raises(DataError, match="different channels"):
        encode([a, b], TINY)
    with pytest.raises(DataError, match="too short"):
        encode([Series("c", ts[:1], np.zeros((1, 1)), ["value"])], TINY)


def test_a_short_run_learns_to_beat_the_normaliser(fleet):
    result = train(fleet, TINY)
    assert result.val_nll == min(m.val_nll for m in result.history)
    assert result.val_nll < result.baseline_nll - 0.3
    assert result.history[-1].train_nll < result.history[0].train_nll
    assert result.n_params == sum(p.numel() for p in result.model.parameters())
    assert result.info.input_features == ["value", "log_gap"]
    assert result.info.extra["val_nll"] == pytest.approx(result.val_nll, abs=1e-5)


def test_same_seed_same_run_other_seed_other_run(fleet):
    cfg = TrainConfig(hidden_size=8, epochs=2, batch_size=4, chunk=32, progress=False, export=False)
    a, b = train(fleet, cfg), train(fleet, cfg)
    c = train(fleet, TrainConfig(**{**cfg.__dict__, "seed": 1}))
    assert [m.train_nll for m in a.history] == [m.train_nll for m in b.history]
    assert [m.val_nll for m in a.history] == [m.val_nll for m in b.history]
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [m.train_nll for m in a.history] != [m.train_nll for m in c.history]


def test_cli_train_on_csv_folder_writes_a_run_folder_the_daemon_can_use(tmp_path):
    sim.write_corpus(
        sim.corpus(3, 300, seed=5, kinds=["vibration", "temperature"]), tmp_path / "csv"
    )
    out = tmp_path / "run"
    argv = [str(tmp_path / "csv"), "--univariate", "--hidden", "8", "--epochs", "2", "--quiet"]
    assert run_cli("train", *argv, "--out", str(out)) == 0
    names = {"config.json", "checkpoint.safetensors", "metrics.json", "metrics.csv", "loss.png"}
    assert names <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == len((out / "metrics.csv").read_text().splitlines()) - 1
    model = StepModel(out / "model.onnx")
    assert model.info.input_features == ["value", "log_gap"]
    assert model.info.hidden_size == 8
    assert model.info.extra["val_nll"] == pytest.approx(metrics["val_nll"], abs=1e-5)
    assert len(model.info.extra["data_fingerprint"]) == 64

    # checkpoint round trip: the loaded weights compute what the exported file computes
    restored = load_checkpoint(out / "checkpoint.safetensors")
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    h = np.zeros((5, model.state_size), np.float32)
    with torch.no_grad():
        want = restored.step(torch.from_numpy(x), torch.from_numpy(h))
    for got, w in zip(model.step(x, h), want, strict=True):
        np.testing.assert_allclose(got, w.numpy(), atol=1e-5)

    # and `streamer export` rebuilds the same model file from the checkpoint
    exported = tmp_path / "again.onnx"
    assert run_cli("export", str(out / "checkpoint.safetensors"), "--out", str(exported)) == 0
    again = StepModel(exported)
    assert again.info.extra["data_fingerprint"] == model.info.extra["data_fingerprint"]
    for got, w in zip(again.step(x, h), model.step(x, h), strict=True):
        np.testing.assert_allclose(got, w, atol=1e-6)


def test_cli_flag_defaults_are_the_config_defaults():
    train_args = parser().parse_args(["train"])
    defaults = TrainConfig()
    flag = {"hidden": "hidden_size"}
    for name in (
        "cell",
        "hidden",
        "layers",
        "epochs",
        "batch_size",
        "chunk",
        "lr",
        "patience",
        "seed",
        "threads",
        "warmup",
    ):
        assert getattr(train_args, name) == getattr(defaults, flag.get(name, name)), name
    compare = parser().parse_args(["compare-cells"])
    cfg = CompareConfig()
    pairs = {
        "series": "n_series",
        "length": "length",
        "epochs": "epochs",
        "hidden": "hidden_size",
        "seed": "seed",
        "lag_updates": "lag_updates",
    }
    for arg, field_name in pairs.items():
        assert getattr(compare, arg) == getattr(cfg, field_name), arg
    assert tuple(compare.lags) == cfg.lags
    assert {f.name for f in fields(CompareConfig)} >= set(pairs.values())


def test_cli_without_inputs_or_without_torch_exits_2(monkeypatch, capsys):
    assert run_cli("train", "--quiet") == 2
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util, "find_spec", lambda n: None if n == "torch" else real(n)
    )
    assert run_cli("train-default") == 2
    assert "pip install 'sensor-streamer[train]'" in capsys.readouterr().err


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, training.cli; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_lag_episodes_put_the_cue_k_steps_before_the_query():
    x, y = lag_episodes(5, 32, torch.Generator().manual_seed(0))
    assert x.shape == (32, 6, 2)
    torch.testing.assert_close(x[:, 0, 0:1], y)
    assert set(y.flatten().tolist()) == {-1.0, 1.0}
    assert (x[:, 0, 1] == 1).all() and (x[:, 5, 1] == -1).all() and (x[:, 1:5, 1] == 0).all()


def test_a_cell_learns_a_short_lag_but_noise_alone_teaches_nothing():
    cfg = CompareConfig(hidden_size=16, lag_updates=150)
    assert lag_nll("gru", 1, cfg) < NO_MEMORY_NLL - cfg.lag_margin
    assert (
        lag_nll("gru", 1, CompareConfig(hidden_size=16, lag_updates=0))
        > NO_MEMORY_NLL - cfg.lag_margin
    )


def test_compare_cells_writes_the_report(tmp_path):
    cfg = CompareConfig(
        n_series=4,
        length=300,
        epochs=1,
        hidden_size=8,
        lags=(1, 2),
        lag_updates=20,
        latency_runs=20,
        cells=("gru",),
        progress=False,
    )
    reports = compare_cells(cfg, tmp_path, "streamer compare-cells --tiny")
    readme = (tmp_path / "README.md").read_text()
    assert "streamer compare-cells --tiny" in readme.split("|")[0]
    assert "| gru |" in readme
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "validation.png",
        "long_lag.png",
        "latency.png",
    }
    assert reports[0].latency_us[256] > 0 and reports[0].result.n_params > 0
