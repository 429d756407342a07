"""The shipped default model: it meets the contract, matches its recipe, and the recipe reproduces it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from streamer.model import DEFAULT_MODEL, StepModel, file_sha256
from training.data import data_fingerprint
from training.default import RECIPE, corpus, heldout, heldout_nll, train_default

CARD = DEFAULT_MODEL.with_suffix(".json")
# The recipe at a scale a test can afford: the same code path on 32 sensors of 1500 readings.
# A corpus this small gives few updates per epoch, so batches are smaller and epochs fewer.
SMALL = replace(
    RECIPE,
    n_series=32,
    length=1500,
    heldout_series=26,
    heldout_length=1500,
    train=replace(RECIPE.train, epochs=15, batch_size=8, progress=False, parity_steps=200),
)


@pytest.fixture(scope="module")
def shipped() -> StepModel:
    return StepModel(DEFAULT_MODEL)


def test_shipped_model_is_a_small_univariate_gru(shipped):
    info = shipped.info
    assert (info.cell, info.input_features, info.output_features) == (
        "gru",
        ["value", "log_gap"],
        ["value"],
    )
    assert info.state_size <= 128
    assert info.warmup > 0
    for key in ("data_fingerprint", "training_command", "created", "versions", "val_nll"):
        assert key in info.extra, key
    assert info.extra["training_command"] == "streamer train-default"


def test_card_describes_this_file_and_this_recipe(shipped):
    card = json.loads(CARD.read_text())
    assert card["sha256"] == file_sha256(DEFAULT_MODEL) == shipped.sha256
    assert card["recipe"] == RECIPE.to_dict(), "the recipe changed: run `streamer train-default`"
    assert card["data_fingerprint"] == shipped.info.extra["data_fingerprint"]
    assert card["metrics"]["val_nll"] == pytest.approx(shipped.info.extra["val_nll"], abs=1e-5)


def test_shipped_model_was_trained_on_the_recipe_corpus_only(shipped):
    assert shipped.info.extra["data_fingerprint"] == data_fingerprint(corpus(RECIPE))


def test_the_recipe_retrained_small_gives_a_model_of_comparable_quality(tmp_path):
    _, card = train_default(SMALL, out=tmp_path / "small.onnx", run_dir=tmp_path / "run")
    assert card["sha256"] == file_sha256(tmp_path / "small.onnx")
    assert json.loads((tmp_path / "small.json").read_text()) == card
    held = heldout(SMALL)  # a seed neither model was trained on
    small = heldout_nll(tmp_path / "small.onnx", held)
    big = heldout_nll(DEFAULT_MODEL, held)
    assert small.predict_zero_nll == big.predict_zero_nll
    assert big.nll < big.predict_zero_nll - 2.0
    assert small.nll < small.predict_zero_nll - 2.0
    assert small.nll < big.nll + 0.5  # measured: 0.57 vs 0.27
