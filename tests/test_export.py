"""The torch step model and its ONNX export: state layout, bounds, checkpoints and parity."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx.external_data_helper import uses_external_data

from streamer.errors import ModelError
from streamer.model import ModelInfo, StepModel
from training.export import check_parity, export_onnx
from training.model import (
    LOG_VAR_BOUND,
    ModelConfig,
    StepRNN,
    load_checkpoint,
    save_checkpoint,
)

CELLS = ("rnn", "lstm", "gru")


def small_config(cell: str) -> ModelConfig:
    """Two layers and two channels, so the state layout and head split are both exercised."""
    return ModelConfig(cell=cell, hidden_size=8, layers=2, n_inputs=3, n_outputs=2)


def info_for(cfg: ModelConfig, hidden_size: int | None = None) -> ModelInfo:
    channels = [f"channel{i}" for i in range(cfg.n_outputs)]
    hidden = hidden_size or cfg.hidden_size
    return ModelInfo(cfg.cell, cfg.layers, hidden, [*channels, "gap"], channels)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: on a shared 2-core machine extra torch threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=CELLS)
def exported(request, tmp_path_factory) -> tuple[StepRNN, Path, ModelInfo]:
    torch.manual_seed(CELLS.index(request.param))
    model = StepRNN(small_config(request.param))
    info = info_for(model.cfg)
    path = tmp_path_factory.mktemp(request.param) / "step.onnx"
    start = time.perf_counter()
    export_onnx(model, info, path)
    print(f"\nexport {request.param}: {time.perf_counter() - start:.2f} s")
    return model, path, info


def test_parity_over_long_sequences(exported) -> None:
    model, path, _ = exported
    report = check_parity(model, path, steps=1000, batch_sizes=(1, 7, 256), tol=1e-4)
    print(f"\nparity {model.cfg.cell}: {report}")
    assert sorted(report.max_abs_err) == [1, 7, 256]
    assert max(report.max_abs_err.values()) <= 1e-4
    assert report.seq_vs_steps_err <= 1e-4
    assert report.permutation_ok
    assert report.zero_state_ok


def test_parity_check_catches_a_different_model(exported) -> None:
    model, path, _ = exported
    drifted = StepRNN(model.cfg)
    drifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        drifted.head.bias.add_(1e-3)
    with pytest.raises(ModelError, match="does not match"):
        check_parity(drifted, path, steps=3, batch_sizes=(2,))


def test_exported_file_is_one_self_describing_file(exported) -> None:
    model, path, info = exported
    assert list(path.parent.iterdir()) == [path]
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(uses_external_data(t) for t in proto.graph.initializer)
    loaded = StepModel(path).info
    assert loaded.state_size == model.state_size
    for name in ("cell", "layers", "hidden_size", "input_features", "output_features"):
        assert getattr(loaded, name) == getattr(info, name)
    assert loaded.extra["exported_with"]["torch"] == torch.__version__


def test_onnx_log_var_stays_bounded_on_wild_inputs(exported) -> None:
    model, path, _ = exported
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, model.cfg.n_inputs)) * 1e4).astype(np.float32)
    h = (rng.standard_normal((64, model.state_size)) * 1e4).astype(np.float32)
    mean, log_var, h_next = StepModel(path).step(x, h)
    assert np.isfinite(mean).all() and np.isfinite(h_next).all()
    assert np.abs(log_var).max() <= LOG_VAR_BOUND


def test_export_refuses_info_that_does_not_describe_the_model(tmp_path) -> None:
    model = StepRNN(small_config("gru"))
    wrong = info_for(model.cfg, hidden_size=16)
    with pytest.raises(ModelError, match="does not describe"):
        export_onnx(model, wrong, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_leaves_the_callers_model_alone(tmp_path) -> None:
    model = StepRNN(ModelConfig(cell="gru", hidden_size=4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, info_for(model.cfg), tmp_path / "m.onnx")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@settings(max_examples=30, deadline=None)
@given(
    cell=st.sampled_from(CELLS),
    layers=st.integers(1, 3),
    hidden=st.integers(1, 6),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_flat_state_layout_is_the_documented_one(cell, layers, hidden, batch, seed) -> None:
    """h [layers, B, H] -> [B, layers*H], layer 0 first; LSTM appends c the same way."""
    torch.manual_seed(seed)
    model = StepRNN(ModelConfig(cell=cell, hidden_size=hidden, layers=layers))
    x = torch.randn(batch, 4, model.cfg.n_inputs)
    with torch.no_grad():
        _, torch_state = model.rnn(x)
        _, _, flat = model(x)
    parts = torch_state if cell == "lstm" else (torch_state,)
    expected = torch.cat([p[layer] for p in parts for layer in range(layers)], dim=1)
    assert flat.shape == (batch, model.state_size)
    assert torch.equal(flat, expected)


@pytest.mark.parametrize("cell", CELLS)
def test_single_steps_equal_the_sequence_from_any_state(cell) -> None:
    torch.manual_seed(3)
    model = StepRNN(small_config(cell))
    x = torch.randn(5, 20, model.cfg.n_inputs)
    h0 = torch.randn(5, model.state_size)
    with torch.no_grad():
        mean, log_var, h_last = model(x, h0)
        h = h0
        for t in range(x.shape[1]):
            m_t, lv_t, h = model.step(x[:, t], h)
            torch.testing.assert_close(m_t, mean[:, t])
            torch.testing.assert_close(lv_t, log_var[:, t])
    torch.testing.assert_close(h, h_last)


@pytest.mark.parametrize("cell", CELLS)
def test_zero_state_is_torchs_start_state(cell) -> None:
    model = StepRNN(small_config(cell))
    x = torch.randn(3, 6, model.cfg.n_inputs)
    with torch.no_grad():
        from_none = model(x)
        from_zero = model(x, model.zero_state(3))
    assert not model.zero_state(3).any()
    for a, b in zip(from_none, from_zero, strict=True):
        assert torch.equal(a, b)


def test_log_var_is_bounded_with_a_gradient_at_the_edge() -> None:
    model = StepRNN(ModelConfig(cell="gru", hidden_size=4))
    with torch.no_grad():
        model.head.weight.fill_(50.0)
    x = torch.full((2, 3, 2), 100.0)
    _, log_var, _ = model(x)
    assert log_var.abs().max().item() <= LOG_VAR_BOUND
    log_var.sum().backward()
    assert model.head.weight.grad.abs().sum().item() > 0


@pytest.mark.parametrize("cell", CELLS)
def test_recurrent_weights_start_orthogonal(cell) -> None:
    model = StepRNN(ModelConfig(cell=cell, hidden_size=6, layers=2))
    eye = torch.eye(6)
    for name, param in model.rnn.named_parameters():
        if name.startswith("weight_hh"):
            for block in param.detach().split(6):
                torch.testing.assert_close(block @ block.T, eye, atol=1e-5, rtol=0)


def test_gradients_stay_finite_through_long_sequences() -> None:
    """The seed model's gradients exploded over long windows; a fresh model's must not."""
    torch.manual_seed(0)
    model = StepRNN(ModelConfig(cell="rnn", hidden_size=32))
    x = torch.randn(4, 2000, 2) * 3
    mean, log_var, _ = model(x)
    var = log_var[:, :-1].exp()
    nll = (log_var[:, :-1] + (x[:, 1:, :1] - mean[:, :-1]) ** 2 / var).mean()
    nll.backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert torch.isfinite(norm) and norm.item() < 1e3


def test_checkpoint_round_trip(tmp_path) -> None:
    model = StepRNN(ModelConfig(cell="lstm", hidden_size=5, layers=2, n_inputs=3, n_outputs=2))
    path = tmp_path / "ckpt" / "model.safetensors"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert loaded.cfg == model.cfg
    assert not loaded.training
    x = torch.randn(2, 7, 3)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x), strict=True):
            assert torch.equal(a, b)


def test_checkpoint_without_config_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="model_config"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "kwargs", [{"cell": "transformer"}, {"hidden_size": 0}, {"layers": 0}, {"n_outputs": 0}]
)
def test_config_refuses_nonsense(kwargs) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)
