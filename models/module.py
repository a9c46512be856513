"""The reference transformer as an `nn.Module`: the same maths as `transformer.py`, a second view.

Researchers bring methods that transform modules (huggingface peft's LoRA, DoRA, IA3 wrap
`nn.Linear` layers found by name). This view names every linear map as an `nn.Linear` so that
peft's `target_modules` reads naturally:

    layers.{l}.attn.heads.{h}.q_proj / k_proj / v_proj / o_proj   (no bias)
    layers.{l}.mlp.fc1 / fc2                                       (biases b1, b2)

and keeps the positional encoding as the frozen parameter `positional`. Every call goes through
the submodules (never through their weights directly), so a method that wraps a submodule takes
effect. Weights are copied in float64 and frozen (requires_grad False); `tests/test_module_view.py`
holds the forward to the functional reference on Hypothesis instances over every option.

Shapes: X (..., n, d) with any leading dimensions (examples, problems); prompt (m_p, d) or with
the same leading dimensions as X.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .spec import ModelSpec
from .transformer import LAYERNORM_EPS

_HEAD_LINEAR = {"Wq": "q_proj", "Wk": "k_proj", "Wv": "v_proj", "Wo": "o_proj"}
_MLP_PARAM = {"W1": "fc1.weight", "b1": "fc1.bias", "W2": "fc2.weight", "b2": "fc2.bias"}


def module_name(weight: str) -> str:
    """The module view's parameter name of a functional weight name:
    'layers.0.heads.1.Wv' -> 'layers.0.attn.heads.1.v_proj.weight', 'layers.0.b1' -> 'layers.0.mlp.fc1.bias'."""
    parts = weight.split(".")
    if weight == "positional":
        return weight
    if len(parts) == 5 and parts[0] == "layers" and parts[2] == "heads" and parts[4] in _HEAD_LINEAR:
        return f"layers.{parts[1]}.attn.heads.{parts[3]}.{_HEAD_LINEAR[parts[4]]}.weight"
    if len(parts) == 3 and parts[0] == "layers" and parts[2] in _MLP_PARAM:
        return f"layers.{parts[1]}.mlp.{_MLP_PARAM[parts[2]]}"
    raise KeyError(weight)


def linear_weight_name(linear: str) -> str:
    """The functional weight name of a linear submodule's path: 'layers.0.attn.heads.0.v_proj' ->
    'layers.0.heads.0.Wv', 'layers.0.mlp.fc2' -> 'layers.0.W2' (KeyError for other paths)."""
    parts = linear.split(".")
    heads = {v: k for k, v in _HEAD_LINEAR.items()}
    if len(parts) == 6 and parts[0] == "layers" and parts[2:4] == ["attn", "heads"] and parts[5] in heads:
        return f"layers.{parts[1]}.heads.{parts[4]}.{heads[parts[5]]}"
    if len(parts) == 4 and parts[0] == "layers" and parts[2] == "mlp" and parts[3] in ("fc1", "fc2"):
        return f"layers.{parts[1]}.W{parts[3][-1]}"
    raise KeyError(linear)


def _linear(weight: np.ndarray, bias: np.ndarray | None = None) -> nn.Linear:
    """A frozen float64 nn.Linear holding exactly these values (out x in)."""
    rows, cols = np.shape(weight)
    layer = nn.Linear(cols, rows, bias=bias is not None, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(np.asarray(weight), dtype=torch.float64))
        if bias is not None:
            layer.bias.copy_(torch.tensor(np.asarray(bias), dtype=torch.float64))
    layer.requires_grad_(False)
    return layer


class Head(nn.Module):
    def __init__(self, weights: Mapping[str, np.ndarray], prefix: str, has_wo: bool):
        super().__init__()
        self.q_proj = _linear(weights[prefix + "Wq"])
        self.k_proj = _linear(weights[prefix + "Wk"])
        self.v_proj = _linear(weights[prefix + "Wv"])
        self.o_proj = _linear(weights[prefix + "Wo"]) if has_wo else None

    def forward(self, Z: Tensor, mask: Tensor | None) -> Tensor:
        """softmax(q k^T) v (then Wo); Z: (..., T, d) -> (..., T, d)."""
        q, k, v = self.q_proj(Z), self.k_proj(Z), self.v_proj(Z)         # (...,T,k) (...,T,k) (...,T,v)
        logits = q @ k.transpose(-1, -2)                                  # (...,T,T)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        out = torch.softmax(logits, dim=-1) @ v                           # (...,T,v)
        return self.o_proj(out) if self.o_proj is not None else out      # (...,T,d)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, weights: Mapping[str, np.ndarray], layer: int):
        super().__init__()
        self.causal = spec.attention == "causal"
        self.heads = nn.ModuleList(Head(weights, f"layers.{layer}.heads.{h}.", head.has_wo)
                                   for h, head in enumerate(spec.layers[layer].heads))

    def forward(self, Z: Tensor) -> Tensor:
        """Sum over heads; Z: (..., T, d) -> (..., T, d)."""
        T = Z.shape[-2]
        mask = torch.ones(T, T, dtype=torch.bool, device=Z.device).tril() if self.causal else None  # (T,T)
        out = torch.zeros_like(Z)
        for head in self.heads:
            out = out + head(Z, mask)                                     # (...,T,d)
        return out


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec, weights: Mapping[str, np.ndarray], layer: int):
        super().__init__()
        p = f"layers.{layer}."
        self.residual = spec.mlp == "residual"
        self.fc1 = _linear(weights[p + "W1"], weights[p + "b1"])
        self.fc2 = _linear(weights[p + "W2"], weights[p + "b2"])

    def forward(self, H: Tensor) -> Tensor:
        branch = self.fc2(torch.relu(self.fc1(H)))                        # (...,T,d)
        return H + branch if self.residual else branch


class Layer(nn.Module):
    def __init__(self, spec: ModelSpec, weights: Mapping[str, np.ndarray], layer: int):
        super().__init__()
        self.layernorm = spec.layernorm
        self.attn = Attention(spec, weights, layer)
        self.mlp = MLP(spec, weights, layer)

    def forward(self, Z: Tensor) -> Tensor:
        """tau(Z) = MLP(Z + Att(Z)), with optional layer norm before the MLP."""
        H = Z + self.attn(Z)                                              # (...,T,d)
        if self.layernorm:
            H = nn.functional.layer_norm(H, H.shape[-1:], eps=LAYERNORM_EPS)
        return self.mlp(H)


class TransformerModule(nn.Module):
    """The reference transformer of one instance's spec and weights, as named frozen submodules."""

    def __init__(self, spec: ModelSpec, weights: Mapping[str, np.ndarray]):
        super().__init__()
        self.spec = spec
        missing = sorted(set(spec.weight_names()) - set(weights))
        if missing:
            raise ValueError(f"weights lack {missing}")
        self.layers = nn.ModuleList(Layer(spec, weights, li) for li in range(len(spec.layers)))
        positional = torch.tensor(np.asarray(weights["positional"]), dtype=torch.float64) if spec.positions \
            else torch.zeros(0, spec.d, dtype=torch.float64)
        self.positional = nn.Parameter(positional, requires_grad=False)  # (positions,d)

    @classmethod
    def from_instance(cls, inst) -> "TransformerModule":
        return cls(inst.spec, inst.weights)

    def forward(self, X: Tensor, prompt: Tensor | None = None) -> Tensor:
        """Final states of the input positions; X: (..., n, d) -> (..., n, d)."""
        n = X.shape[-2]
        if self.spec.positions:
            X = X + self.positional[:n]                                   # (...,n,d)
        Z = X
        if prompt is not None:
            if prompt.dim() == 2:
                prompt = prompt.expand(*X.shape[:-2], *prompt.shape)      # (...,m_p,d)
            elif prompt.dim() < X.dim():  # (B, m_p, d) with X (B, E, n, d): shared by the examples
                prompt = prompt.unsqueeze(-3).expand(*X.shape[:-2], *prompt.shape[-2:])
            Z = torch.cat([prompt, X], dim=-2)                            # (...,m_p+n,d)
        for layer in self.layers:
            Z = layer(Z)                                                  # (...,T,d)
        return Z[..., Z.shape[-2] - n:, :]                                # (...,n,d)
