"""IA3: the rows of chosen matrices scaled by trainable vectors, W <- diag(l) W (Liu et al. 2022,
"(IA)^3"); on W_v alone it is the update class 'value-scale', for claim LV-scale."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from peftaudit.errors import InputError
from ..interval import ExactAdapter
from ..spec import ModelSpec
from ..transformer import forward

from .base import Params, randn, register_method
from .lora import adapted_matrices, parse_targets


@register_method("ia3")
class IA3:
    name = "ia3"
    size_name = "none"
    sized = False  # one trainable scale per row of each target: no size
    kind = "weight-space"

    def __init__(self, targets: str | tuple[str, ...] = "v"):
        self.targets = parse_targets(targets)

    @property
    def update_class(self) -> str:
        """abilities.py: on W_v alone, IA3 scales W_v's rows (diag(l) W_v)."""
        return "value-scale" if self.targets == ("v",) else ""

    def init(self, spec: ModelSpec, batch: int, size: int, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        """Scales drawn around one (IA3's own start is all ones, where every restart would coincide)."""
        return {name + ".l": 1 + randn(generator, batch, rows, scale=0.3, dtype=dtype, device=device)
                for name, (rows, _) in adapted_matrices(spec, self.targets)}

    def outputs(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor,
                keep: int | None = None) -> Tensor:
        """The forward with diag(l) W in place of each target W."""
        scaled = {key[:-2]: scale[..., :, None] * params[key[:-2]] for key, scale in trainable.items()}  # (B,rows,cols)
        return forward(spec, {**params, **scaled}, X, keep=keep)

    def exact_adapter(self, adapter: Mapping[str, np.ndarray]) -> ExactAdapter:
        """diag(l) W, computed in the exact model."""
        return ExactAdapter(row_scale={key[:-2]: np.asarray(scale) for key, scale in adapter.items()})

    def identity_adapter(self, spec: ModelSpec, size: int) -> tuple[dict, dict[str, Tensor]]:
        """l = 1: the weights unchanged."""
        from .module_method import template_weights
        tensors = self.init(spec, 1, size, torch.Generator().manual_seed(0))
        return template_weights(spec), {k: torch.ones_like(v) for k, v in tensors.items()}

    def param_count(self, spec: ModelSpec, size: int) -> int:
        return sum(rows for _, (rows, _) in adapted_matrices(spec, self.targets))

    def project(self, trainable: dict[str, Tensor], bound: float) -> None:
        raise InputError("norm bound", bound, "no norm bound for IA3 (it applies to prompts and prefixes)")
