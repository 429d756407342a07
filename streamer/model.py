"""The step model: one ONNX file that advances a batch of streams by one reading.

The contract (DESIGN.md section 2) is where training, the daemon, the evaluator
and the benchmarks meet, so it is checked here, once, at load time:

    inputs   x [B, F] float32      normalised reading + derived inputs (gap feature last)
             h [B, S] float32      flattened recurrent state; zeros are the start state
    outputs  mean [B, F_out]       predicted next normalised reading
             log_var [B, F_out]    ... and its log variance (Gaussian)
             h_next [B, S]         state after consuming x

Everything needed to feed the model travels inside the file as `metadata_props`
under the `streamer.` prefix, so a model cannot be separated from how it is fed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelError
from .normalize import GapConfig, NormalizerConfig

log = logging.getLogger(__name__)

CONTRACT_VERSION = 1
META_PREFIX = "streamer."
CELLS = ("rnn", "lstm", "gru")
DEFAULT_MODEL = Path(__file__).parent / "models" / "default.onnx"


@dataclass(frozen=True)
class ModelInfo:
    """What a step model declares about itself (the metadata inside the .onnx file)."""

    cell: str
    layers: int
    hidden_size: int
    input_features: list[str]
    output_features: list[str]
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)
    gap: GapConfig = field(default_factory=GapConfig)
    warmup: int = 100
    contract_version: int = CONTRACT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def state_size(self) -> int:
        per_layer = 2 * self.hidden_size if self.cell == "lstm" else self.hidden_size
        return self.layers * per_layer

    @property
    def n_inputs(self) -> int:
        return len(self.input_features)

    @property
    def n_outputs(self) -> int:
        return len(self.output_features)

    def to_metadata(self) -> dict[str, str]:
        """JSON-valued `metadata_props`, for the exporter."""
        d = asdict(self)
        d["normalizer"] = self.normalizer.to_dict()
        d["gap"] = self.gap.to_dict()
        d["state_size"] = self.state_size
        extra = d.pop("extra")
        d.update(extra)
        return {META_PREFIX + k: json.dumps(v) for k, v in d.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> ModelInfo:
        d = {}
        for key, value in meta.items():
            if key.startswith(META_PREFIX):
                try:
                    d[key[len(META_PREFIX) :]] = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ModelError(f"metadata {key!r} is not JSON: {e}") from None
        if "contract_version" not in d:
            raise ModelError("no streamer.contract_version in the model metadata: not a step model")
        if d["contract_version"] != CONTRACT_VERSION:
            raise ModelError(
                f"model contract version {d['contract_version']} but this streamer reads "
                f"version {CONTRACT_VERSION}"
            )
        known = {"cell", "layers", "hidden_size", "input_features", "output_features", "warmup"}
        missing = sorted(k for k in known - {"warmup"} if k not in d)
        if missing:
            raise ModelError(f"model metadata lacks {', '.join(META_PREFIX + k for k in missing)}")
        _check_field_types(d)
        try:
            normalizer = NormalizerConfig.from_dict(d.get("normalizer", {}))
            gap = GapConfig.from_dict(d.get("gap", {}))
        except (TypeError, ValueError, OverflowError) as e:
            raise ModelError(f"model metadata has invalid normalizer/gap parameters: {e}") from None
        info = cls(
            **{k: d[k] for k in known if k in d},
            normalizer=normalizer,
            gap=gap,
            extra={
                k: v
                for k, v in d.items()
                if k not in known | {"normalizer", "gap", "contract_version", "state_size"}
            },
        )
        if info.cell not in CELLS:
            raise ModelError(f"model cell {info.cell!r} is not one of {CELLS}")
        if "state_size" in d and d["state_size"] != info.state_size:
            raise ModelError(
                f"metadata state_size {d['state_size']} disagrees with {info.cell} "
                f"layers={info.layers} hidden={info.hidden_size} ({info.state_size})"
            )
        return info


def _check_field_types(d: dict) -> None:
    """Metadata is whatever the file's maker wrote: a wrong JSON type must be refused here,
    not surface later as a TypeError or a nonsense state size."""

    def refuse(key: str, want: str) -> None:
        raise ModelError(f"metadata {META_PREFIX}{key} must be {want}, got {d[key]!r}")

    for key, least in (("layers", 1), ("hidden_size", 1), ("warmup", 0)):
        if key in d and not (type(d[key]) is int and d[key] >= least):
            refuse(key, f"an integer >= {least}")
    for key in ("input_features", "output_features"):
        names = d[key]
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            refuse(key, "a non-empty list of names")
    for key in ("normalizer", "gap"):
        if key in d and not isinstance(d[key], dict):
            refuse(key, "an object")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def select_providers(provider: str) -> list[str]:
    """onnxruntime providers for `cpu`, `cuda` or `auto`; CUDA falls back to CPU with a warning."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "cuda":
        log.warning(
            "CUDA asked for but onnxruntime has no CUDA provider (install onnxruntime-gpu); using CPU"
        )
    return ["CPUExecutionProvider"]


class StepModel:
    """An onnxruntime session around a step model, validated against the contract."""

    def __init__(
        self,
        path: str | Path = DEFAULT_MODEL,
        provider: str = "cpu",
        threads: int = 1,
        sha256: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file {self.path} does not exist")
        self.sha256 = file_sha256(self.path)
        if sha256 and sha256.lower() != self.sha256:
            raise ModelError(f"model {self.path} has sha256 {self.sha256}, config pins {sha256}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=select_providers(provider)
            )
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"cannot load model {self.path}: {e}") from None
        self.provider = self.session.get_providers()[0]
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        self._check_signature()

    def _check_signature(self) -> None:
        info = self.info
        want_in = {"x": info.n_inputs, "h": info.state_size}
        want_out = {"mean": info.n_outputs, "log_var": info.n_outputs, "h_next": info.state_size}
        for kind, args, want in (
            ("input", self.session.get_inputs(), want_in),
            ("output", self.session.get_outputs(), want_out),
        ):
            got = {a.name: a for a in args}
            if set(got) != set(want):
                raise ModelError(
                    f"model {kind}s are {sorted(got)}, the contract needs {sorted(want)}"
                )
            for name, width in want.items():
                shape = got[name].shape
                if got[name].type != "tensor(float)":
                    raise ModelError(f"model {kind} {name!r} is {got[name].type}, not float32")
                if len(shape) != 2 or shape[1] != width:
                    raise ModelError(
                        f"model {kind} {name!r} has shape {shape}, the contract needs [B, {width}]"
                    )
                if isinstance(shape[0], int) and shape[0] != -1:
                    raise ModelError(
                        f"model {kind} {name!r} has a fixed batch {shape[0]}; it must be dynamic"
                    )

    @property
    def state_size(self) -> int:
        return self.info.state_size

    def step(self, x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, log_var, h_next) for a batch; x [B, F] and h [B, S] float32.

        An empty batch never reaches onnxruntime: some builds abort the process on B = 0.
        """
        if len(x) == 0:
            empty = np.zeros((0, self.info.n_outputs), np.float32)
            return empty, empty.copy(), np.zeros((0, self.state_size), np.float32)
        mean, log_var, h_next = self.session.run(["mean", "log_var", "h_next"], {"x": x, "h": h})
        return mean, log_var, h_next
