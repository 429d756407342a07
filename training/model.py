"""The torch step model: a recurrent cell and a Gaussian head, with the state kept flat.

The daemon never learns the cell type: it stores one float32 row of `state_size` per
stream and hands it back unchanged. So the module speaks that flat state at its
boundary and unpacks it into torch's layout internally:

    torch RNN/GRU  h [layers, B, H]   ->  flat [B, layers*H]      (layer 0 first)
    torch LSTM     (h, c) each [layers, B, H]
                                      ->  flat [B, 2*layers*H] = concat(h_flat, c_flat)

A zero row is the start state, the same as passing no state to torch.

Training calls `forward` (torch's fused kernels over whole windows); the ONNX file
computes `step`, the same cell written out as matrix products and element-wise ops.
onnxruntime's RNN/GRU/LSTM operators are built for sequences: at one step over a wide
batch the written-out GRU-64 runs 1.7 times as fast (0.44 vs 0.74 us a stream at batch
1,500). `training.export.check_parity` proves the two paths agree on every export.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
LOG_VAR_BOUND = 8.0


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network. `n_inputs` counts the gap feature, which is the last input."""

    cell: str = "gru"
    hidden_size: int = 64
    layers: int = 1
    n_inputs: int = 2
    n_outputs: int = 1

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell {self.cell!r} is not one of {sorted(CELLS)}")
        for name in ("hidden_size", "layers", "n_inputs", "n_outputs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def state_size(self) -> int:
        per_layer = 2 * self.hidden_size if self.cell == "lstm" else self.hidden_size
        return self.layers * per_layer


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """Smoothly squash into (-bound, bound): a hard clamp would stop gradients at the edge,
    and an unbounded log variance lets the Gaussian NLL run off to -inf or overflow."""
    return bound * torch.tanh(x / bound)


class StepRNN(nn.Module):
    """Predicts each channel's next normalised reading as a Gaussian (mean, log_var)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.state_size = cfg.state_size
        self.rnn = CELLS[cfg.cell](
            cfg.n_inputs, cfg.hidden_size, num_layers=cfg.layers, batch_first=True
        )
        self.head = nn.Linear(cfg.hidden_size, 2 * cfg.n_outputs)
        self._init_weights()

    def _init_weights(self) -> None:
        """Orthogonal recurrent blocks keep the state's norm from growing step after step
        (the seed model's exploding gradients); the LSTM forget gate starts open."""
        hidden = self.cfg.hidden_size
        for name, param in self.rnn.named_parameters():
            if name.startswith("bias"):
                nn.init.zeros_(param)
                if self.cfg.cell == "lstm":
                    param.data[hidden : 2 * hidden] = 0.5  # i, f, g, o: half of 1 per bias vector
            else:
                init = (
                    nn.init.orthogonal_ if name.startswith("weight_hh") else nn.init.xavier_uniform_
                )
                for block in param.data.split(hidden):
                    init(block)
        nn.init.xavier_uniform_(self.head.weight, gain=0.1)
        nn.init.zeros_(self.head.bias)

    def zero_state(self, batch: int) -> Tensor:
        return torch.zeros(batch, self.state_size, device=self.head.weight.device)

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, F] -> mean, log_var [B, T, F_out], h_last [B, S]; output t predicts t+1."""
        out, state = self.rnn(x, None if h is None else self._unflatten(h))
        mean, raw_log_var = self.head(out).chunk(2, dim=-1)
        return mean, soft_clamp(raw_log_var, LOG_VAR_BOUND), self._flatten(state)

    def step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, F], h [B, S] -> mean, log_var [B, F_out], h_next [B, S]: what the ONNX file computes."""
        cfg, size = self.cfg, self.cfg.hidden_size
        parts = h.split(size, dim=1)  # h of each layer, then (LSTM) c of each layer
        hs, cs = parts[: cfg.layers], parts[cfg.layers :]
        new_h, new_c = [], []
        for layer in range(cfg.layers):
            weights = [getattr(self.rnn, f"{k}_l{layer}") for k in RNN_PARAMS]
            if cfg.cell == "lstm":
                x, c = _lstm_cell(x, hs[layer], cs[layer], *weights)
                new_c.append(c)
            elif cfg.cell == "gru":
                x = _gru_cell(x, hs[layer], *weights)
            else:
                x = torch.tanh(
                    F.linear(x, weights[0], weights[2]) + F.linear(hs[layer], *weights[1::2])
                )
            new_h.append(x)
        mean, raw_log_var = self.head(x).chunk(2, dim=-1)
        return mean, soft_clamp(raw_log_var, LOG_VAR_BOUND), torch.cat(new_h + new_c, dim=1)

    def _flatten(self, state: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        parts = state if isinstance(state, tuple) else (state,)
        return torch.cat([p.transpose(0, 1).reshape(p.shape[1], -1) for p in parts], dim=1)

    def _unflatten(self, h: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        cfg = self.cfg
        # [B, parts, layers, H] -> [parts, layers, B, H]; parts is (h, c) for lstm, else (h,)
        parts = h.reshape(h.shape[0], -1, cfg.layers, cfg.hidden_size).permute(1, 2, 0, 3)
        parts = parts.contiguous()
        return (parts[0], parts[1]) if cfg.cell == "lstm" else parts[0]


RNN_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # torch's names, per layer


def _gru_cell(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> Tensor:
    """torch.nn.GRU's step (gates r, z, n; the reset gate applied after the recurrent product)."""
    i_r, i_z, i_n = F.linear(x, w_ih, b_ih).chunk(3, dim=1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


def _lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """torch.nn.LSTM's step (gates i, f, g, o): the next (h, c)."""
    i, f, g, o = (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def save_checkpoint(model: StepRNN, path: Path) -> None:
    """Weights as safetensors with the ModelConfig as JSON metadata: loadable without pickle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"model_config": json.dumps(asdict(model.cfg))})


def load_checkpoint(path: Path) -> StepRNN:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "model_config" not in meta:
            raise ValueError(f"{path} has no model_config metadata: not a StepRNN checkpoint")
        model = StepRNN(ModelConfig(**json.loads(meta["model_config"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
