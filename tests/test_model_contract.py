"""StepModel refuses every file that breaks the step-model contract, with a ModelError.

Each bad file is a real exported model with one thing broken by editing its protobuf,
so a refusal here is for the reason under test and not for some other defect.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.errors import ModelError
from streamer.model import CONTRACT_VERSION, META_PREFIX, ModelInfo, StepModel
from training.export import export_onnx
from training.model import ModelConfig, StepRNN

CFG = ModelConfig(cell="gru", hidden_size=4, layers=1, n_inputs=2, n_outputs=1)
INFO = ModelInfo("gru", 1, 4, ["value", "gap"], ["value"])


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> Path:
    return export_onnx(StepRNN(CFG), INFO, tmp_path_factory.mktemp("good") / "step.onnx")


@pytest.fixture
def proto(good_file) -> onnx.ModelProto:
    return onnx.load(str(good_file))


def save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(proto, str(path))
    return path


def set_meta(proto: onnx.ModelProto, **changes: object) -> onnx.ModelProto:
    """Metadata edited as JSON values under the streamer prefix; a None value removes the key."""
    props = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        props.pop(META_PREFIX + key, None)
        if value is not None:
            props[META_PREFIX + key] = json.dumps(value)
    onnx.helper.set_model_props(proto, props)
    return proto


def rename_value(proto: onnx.ModelProto, old: str, new: str) -> onnx.ModelProto:
    """Rename a graph input/output everywhere it is used, so the graph stays valid."""
    graph = proto.graph
    for value in [*graph.input, *graph.output]:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    return proto


def test_the_untouched_file_loads(good_file) -> None:
    model = StepModel(good_file)
    assert model.info.state_size == StepRNN(CFG).state_size
    assert model.provider == "CPUExecutionProvider"


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        StepModel(tmp_path / "nowhere.onnx")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file(good_file, tmp_path, keep) -> None:
    data = good_file.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelError, match="cannot load"):
        StepModel(path)


def test_corrupted_bytes(good_file, tmp_path) -> None:
    data = bytearray(good_file.read_bytes())
    data[: len(data) // 3] = bytes(len(data) // 3)
    path = tmp_path / "zeroed.onnx"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError):
        StepModel(path)


def test_pinned_sha256_must_match(good_file) -> None:
    with pytest.raises(ModelError, match="sha256"):
        StepModel(good_file, sha256="0" * 64)
    assert StepModel(good_file, sha256=StepModel(good_file).sha256.upper()).sha256


def test_valid_onnx_without_metadata_is_not_a_step_model(proto, tmp_path) -> None:
    onnx.helper.set_model_props(proto, {})
    with pytest.raises(ModelError, match="not a step model"):
        StepModel(save(proto, tmp_path / "bare.onnx"))


def test_other_contract_version(proto, tmp_path) -> None:
    set_meta(proto, contract_version=CONTRACT_VERSION + 1)
    with pytest.raises(ModelError, match="contract version"):
        StepModel(save(proto, tmp_path / "v2.onnx"))


def test_state_size_metadata_disagreeing_with_the_cell(proto, tmp_path) -> None:
    set_meta(proto, state_size=INFO.state_size + 1)
    with pytest.raises(ModelError, match="state_size"):
        StepModel(save(proto, tmp_path / "s.onnx"))


def test_metadata_consistent_but_not_the_graph(proto, tmp_path) -> None:
    """hidden_size and state_size agree with each other, but the graph's h is 4 wide."""
    set_meta(proto, hidden_size=5, state_size=5)
    with pytest.raises(ModelError, match=r"'h' has shape .* \[B, 5\]"):
        StepModel(save(proto, tmp_path / "h5.onnx"))


def test_feature_count_disagreeing_with_the_graph(proto, tmp_path) -> None:
    set_meta(proto, input_features=["a", "b", "gap"])
    with pytest.raises(ModelError, match="'x' has shape"):
        StepModel(save(proto, tmp_path / "f.onnx"))


@pytest.mark.parametrize(("old", "new"), [("x", "input"), ("h", "state"), ("h_next", "h_out")])
def test_wrong_input_or_output_names(proto, tmp_path, old, new) -> None:
    rename_value(proto, old, new)
    with pytest.raises(ModelError, match=f"the contract needs .*'{old}'"):
        StepModel(save(proto, tmp_path / "renamed.onnx"))


def test_fixed_batch_axis(proto, tmp_path) -> None:
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 8
    with pytest.raises(ModelError, match="fixed batch"):
        StepModel(save(proto, tmp_path / "b8.onnx"))


def test_unknown_cell(proto, tmp_path) -> None:
    set_meta(proto, cell="transformer", state_size=None)
    with pytest.raises(ModelError, match="transformer"):
        StepModel(save(proto, tmp_path / "cell.onnx"))


def test_missing_required_key(proto, tmp_path) -> None:
    set_meta(proto, layers=None)
    with pytest.raises(ModelError, match=r"lacks streamer\.layers"):
        StepModel(save(proto, tmp_path / "nolayers.onnx"))


def test_metadata_that_is_not_json(proto, tmp_path) -> None:
    onnx.helper.set_model_props(
        proto, {**{p.key: p.value for p in proto.metadata_props}, META_PREFIX + "layers": "one"}
    )
    with pytest.raises(ModelError, match="not JSON"):
        StepModel(save(proto, tmp_path / "json.onnx"))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
KEYS = ["cell", "layers", "hidden_size", "input_features", "output_features", "warmup",
        "normalizer", "gap", "state_size", "contract_version"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(KEYS), JSON, min_size=1, max_size=3))
def test_any_metadata_gives_a_sane_info_or_a_model_error(changes) -> None:
    """Metadata comes from whoever made the file: it must be refused cleanly, never crash."""
    meta = {**INFO.to_metadata(), **{META_PREFIX + k: json.dumps(v) for k, v in changes.items()}}
    try:
        info = ModelInfo.from_metadata(meta)
    except ModelError:
        return
    assert info.cell in ("rnn", "lstm", "gru")
    assert isinstance(info.state_size, int) and info.state_size > 0
    assert isinstance(info.warmup, int)
    for features in (info.input_features, info.output_features):
        assert isinstance(features, list) and all(isinstance(f, str) for f in features)
    assert info.n_inputs > 0 and info.n_outputs > 0


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_are_a_model_error(tmp_path, data) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelError):
        StepModel(path)
