"""Full fine-tuning: every weight moves (a trainable delta on each)."""

from __future__ import annotations

import math

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from peftaudit.errors import InputError
from ..interval import ExactAdapter
from ..spec import ModelSpec
from ..transformer import forward

from .base import Params, randn, register_method


@register_method("full")
class FullFineTuning:
    name = "full"
    size_name = "size"  # ignored: full fine-tuning has one size
    sized = False
    kind = "weight-space"

    def init(self, spec: ModelSpec, batch: int, size: int, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        return {name: randn(generator, batch, *shape, scale=0.1, dtype=dtype, device=device)
                for name, shape in spec.weight_shapes()}

    def outputs(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor,
                keep: int | None = None) -> Tensor:
        return forward(spec, {name: params[name] + trainable[name] for name in params}, X, keep=keep)

    def exact_adapter(self, adapter: Mapping[str, np.ndarray]) -> ExactAdapter:
        return ExactAdapter(delta=dict(adapter))

    def identity_adapter(self, spec: ModelSpec, size: int) -> tuple[dict, dict[str, Tensor]]:
        """D = 0 on every weight."""
        from .module_method import template_weights
        return template_weights(spec), {k: torch.zeros_like(v) for k, v in self.init(spec, 1, size, torch.Generator()).items()}

    def param_count(self, spec: ModelSpec, size: int) -> int:
        return sum(math.prod(shape) for _, shape in spec.weight_shapes())

    def project(self, trainable: dict[str, Tensor], bound: float) -> None:
        raise InputError("norm bound", bound, "no norm bound for full fine-tuning")
