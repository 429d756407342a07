"""The shipped default model (`streamer/models/default.onnx`): its recipe, and the one command
that rebuilds it, `streamer train-default`.

The default model must work on sensors nobody has shown it, so it is trained only on the
synthetic fleet (`streamer.sim`: thirteen kinds of sensor, each series with its own scale,
offset, noise, seasonality and sampling period) and never on benchmark data, which it
is later judged on. Everything that decides the result is fixed in `RECIPE`; the card
next to the model (`default.json`) records the command, the metrics and the file's sha256.

Quality is measured twice: the validation NLL of training (the last 20% of each training
stream), and the NLL of the exported ONNX file on a held-out synthetic fleet drawn from a
different seed, read through the daemon's own `StepModel`, after the warm-up the model
declares (the readings on which the daemon does not alert anyway).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from streamer.model import DEFAULT_MODEL, StepModel, file_sha256
from streamer.normalize import encode_series

from .data import Series, synthetic
from .train import TrainConfig, TrainResult, gaussian_nll, train

COMMAND = "streamer train-default"


@dataclass(frozen=True)
class Recipe:
    """Corpus, held-out set and training settings of the default model."""

    n_series: int = 384
    length: int = 3000
    seed: int = 1
    heldout_series: int = 64
    heldout_length: int = 3000
    heldout_seed: int = 2
    # Hidden 64 by measurement (128 sensors x 3000 readings, 20 epochs): held-out NLL 0.26 at
    # hidden 32, 0.19 at 64, 0.16 at 128 and 0.20 at 2 layers of 64, the last two at 1.7 to 2
    # times the training time per epoch. Batch 32 beat 64 (0.19 vs 0.21) at 1.3x the time per epoch.
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            cell="gru", hidden_size=64, layers=1, batch_size=32, epochs=30, patience=5
        )
    )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d


RECIPE = Recipe()


def corpus(recipe: Recipe) -> list[Series]:
    return synthetic(recipe.n_series, recipe.length, recipe.seed)


def heldout(recipe: Recipe) -> list[Series]:
    return synthetic(recipe.heldout_series, recipe.heldout_length, recipe.heldout_seed)


@dataclass
class HeldOut:
    """NLL per reading (nats) of a model file on a set of series, and of predicting 0 with unit variance."""

    nll: float
    predict_zero_nll: float
    readings: int


def heldout_nll(path: Path, series: Sequence[Series]) -> HeldOut:
    """Run a model file over whole series in one batch, as the daemon would, and score
    every reading after the model's warm-up against the prediction made one step before."""
    model = StepModel(path)
    info = model.info
    encoded = [encode_series(s.values, s.ts, info.normalizer, info.gap) for s in series]
    length = max(len(e) for e in encoded)
    x = np.zeros((len(encoded), length, info.n_inputs), np.float32)
    valid = np.zeros((len(encoded), length), bool)
    for i, e in enumerate(encoded):
        x[i, : len(e)] = e
        valid[i, info.warmup : len(e)] = True
    h = np.zeros((len(encoded), info.state_size), np.float32)
    means, log_vars = [], []
    for t in range(length - 1):
        mean, log_var, h = model.step(x[:, t], h)
        means.append(mean)
        log_vars.append(log_var)
    target = torch.from_numpy(x[:, 1:, : info.n_outputs])
    mean = torch.from_numpy(np.stack(means, 1))
    log_var = torch.from_numpy(np.stack(log_vars, 1))
    mask = torch.from_numpy(valid[:, 1:])
    zero = torch.zeros_like(target)
    return HeldOut(
        nll=float(gaussian_nll(mean, log_var, target).mean(-1)[mask].mean()),
        predict_zero_nll=float(gaussian_nll(zero, zero, target).mean(-1)[mask].mean()),
        readings=int(mask.sum()),
    )


def train_default(
    recipe: Recipe = RECIPE,
    out: Path = DEFAULT_MODEL,
    run_dir: Path = Path("runs/default"),
) -> tuple[TrainResult, dict]:
    """Train by the recipe, copy the checked model.onnx to `out` and write its card next to it."""
    result = train(
        corpus(recipe),
        recipe.train,
        run_dir=run_dir,
        extra={"training_command": COMMAND, "recipe": recipe.to_dict()},
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.onnx_path, out)
    score = heldout_nll(out, heldout(recipe))
    card = {
        "model": out.name,
        "sha256": file_sha256(out),
        "recipe_command": COMMAND,
        "recipe": recipe.to_dict(),
        "data_fingerprint": result.info.extra["data_fingerprint"],
        "created": result.info.extra["created"],
        "versions": result.info.extra["versions"],
        "metrics": {
            "val_nll": result.val_nll,
            "val_predict_zero_nll": result.baseline_nll,
            "heldout_nll": score.nll,
            "heldout_predict_zero_nll": score.predict_zero_nll,
            "heldout_readings": score.readings,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "train_seconds": result.seconds,
            "epoch_seconds": result.epoch_seconds,
            "parameters": result.n_params,
            "state_size": result.info.state_size,
        },
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return result, card
