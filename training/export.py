"""Export a StepRNN as a step-model ONNX file and prove the file computes what torch computes.

The file is the only thing the daemon ever sees of training, so the check runs the file
through `streamer.model.StepModel` (the daemon's own loader and session) step by step
over long sequences: recurrent error compounds, so a one-step comparison is not enough.

Making a model file for a test is a few lines:

    from training.model import ModelConfig, StepRNN
    from training.export import export_onnx
    from streamer.model import ModelInfo
    model = StepRNN(ModelConfig(cell="gru", hidden_size=16))
    info = ModelInfo("gru", 1, 16, ["value", "gap"], ["value"])
    export_onnx(model, info, path)
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from streamer.errors import ModelError
from streamer.model import META_PREFIX, ModelInfo, StepModel

from .model import StepRNN

INPUT_NAMES = ("x", "h")
OUTPUT_NAMES = ("mean", "log_var", "h_next")


class _Step(nn.Module):
    """The exporter traces `forward`, so this wrapper makes `step` the traced function."""

    def __init__(self, model: StepRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.step(x, h)


def _cpu_copy(model: StepRNN) -> StepRNN:
    """A float32 CPU copy in eval mode, so exporting never moves or mutates the caller's model."""
    return copy.deepcopy(model).cpu().float().eval()


def _check_info(model: StepRNN, info: ModelInfo) -> None:
    cfg = model.cfg
    declared = (info.cell, info.layers, info.hidden_size, info.n_inputs, info.n_outputs)
    actual = (cfg.cell, cfg.layers, cfg.hidden_size, cfg.n_inputs, cfg.n_outputs)
    if declared != actual:
        raise ModelError(
            "ModelInfo (cell, layers, hidden, inputs, outputs) = "
            f"{declared} does not describe the model {actual}"
        )


def export_onnx(model: StepRNN, info: ModelInfo, path: Path) -> Path:
    """Write `model.step` as one self-contained .onnx file with `info` in its metadata.

    The batch axis is dynamic; the example batch is 2 because the tracer would
    specialise a batch of 1. The written file is loaded back with StepModel, so a
    file that breaks the contract is never left looking like a success.
    """
    _check_info(model, info)
    model = _cpu_copy(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.zeros(2, model.cfg.n_inputs), model.zero_state(2))
    with _quiet_exporter():
        program = torch.onnx.export(
            _Step(model).eval(),
            example,
            dynamo=True,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_shapes=({0: "batch"}, {0: "batch"}),
            verbose=False,
        )
    proto = program.model_proto
    meta = info.to_metadata()
    meta[META_PREFIX + "exported_with"] = json.dumps(
        {"torch": torch.__version__, "onnx": onnx.__version__, "opset": _opset(proto)}
    )
    onnx.helper.set_model_props(proto, {**_props(proto), **meta})
    onnx.save_model(proto, str(path), save_as_external_data=False)
    StepModel(path)
    return path


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings about torch's own internals (nn.RNN's cached weight
    list, deprecations, x and h sharing the batch axis name, torchvision ops it cannot
    register): none is about this model, and `check_parity` is what tells whether the
    file is right."""
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
            warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used")
            yield
    finally:
        registry_log.setLevel(level)


def _props(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


@dataclass
class ParityReport:
    """Worst absolute differences found; every figure is over mean, log_var and h_next."""

    max_abs_err: dict[int, float]  # batch size -> ONNX vs torch step by step
    steps: int
    seq_vs_steps_err: float  # torch forward over the sequence vs torch steps
    permutation_ok: bool  # permuting the batch rows permutes the ONNX outputs
    zero_state_ok: bool  # h=None and a zero state give the same result


def check_parity(
    model: StepRNN,
    path: Path,
    steps: int = 1000,
    batch_sizes: Sequence[int] = (1, 7, 256),
    seed: int = 0,
    tol: float = 1e-4,
) -> ParityReport:
    """Run the ONNX file step by step against `model.step`; raise ModelError beyond `tol`.

    Each side carries its own state forward, as the daemon does, so drift between
    them accumulates instead of being reset every step. Inputs are standard normal,
    the scale of the z-scores and gap feature the model is fed in service.
    """
    model = _cpu_copy(model)
    onnx_model = StepModel(path)
    gen = torch.Generator().manual_seed(seed)
    errors: dict[int, float] = {}
    seq_err = 0.0
    with torch.inference_mode(), _one_torch_thread():
        for batch in batch_sizes:
            x = torch.randn(batch, steps, model.cfg.n_inputs, generator=gen)
            onnx_err, torch_steps = _run_steps(model, onnx_model, x)
            errors[batch] = onnx_err
            seq_err = max(seq_err, _max_err(model(x), torch_steps))
        x = torch.randn(max(batch_sizes), 8, model.cfg.n_inputs, generator=gen)
        zero_ok = _max_err(model(x), model(x, model.zero_state(len(x)))) == 0.0
        perm_ok = _permutation_ok(model, onnx_model, max(batch_sizes), gen, tol)
    report = ParityReport(errors, steps, seq_err, perm_ok, zero_ok)
    worst = max([*errors.values(), seq_err])
    if worst > tol or not perm_ok or not zero_ok:
        raise ModelError(f"ONNX file {path} does not match its torch model (tol {tol}): {report}")
    return report


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Thousands of tiny steps are dispatch-bound: extra intra-op threads only spin, and on
    a busy machine they made the check over ten times slower (24 s vs 1.5 s measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_steps(
    model: StepRNN, onnx_model: StepModel, x: Tensor
) -> tuple[float, tuple[Tensor, Tensor, Tensor]]:
    """Both sides from the zero state over x [B, T, F]: (worst ONNX error, torch outputs over T)."""
    h_torch = model.zero_state(len(x))
    h_onnx = h_torch.numpy()
    worst = 0.0
    outs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        got = onnx_model.step(xt.numpy(), h_onnx)
        want = model.step(xt, h_torch)
        worst = max(worst, _max_err(want, tuple(torch.from_numpy(g) for g in got)))
        h_torch, h_onnx = want[2], got[2]
        outs.append(want)
    mean, log_var, h = zip(*outs, strict=True)
    return worst, (torch.stack(mean, 1), torch.stack(log_var, 1), h[-1])


def _permutation_ok(
    model: StepRNN, onnx_model: StepModel, batch: int, gen: torch.Generator, tol: float
) -> bool:
    """Rows must not leak into each other: the daemon batches unrelated streams together."""
    x = torch.randn(batch, model.cfg.n_inputs, generator=gen).numpy()
    h = torch.randn(batch, model.state_size, generator=gen).numpy()
    perm = torch.randperm(batch, generator=gen).numpy()
    plain = onnx_model.step(x, h)
    permuted = onnx_model.step(x[perm], h[perm])
    return all(np.abs(p[perm] - q).max() <= tol for p, q in zip(plain, permuted, strict=True))


def _max_err(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a, b, strict=True))
