"""Soft prompt tuning: m_p free tokens prepended to every input, shared across examples."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from .. import tangents
from ..interval import ExactAdapter
from ..spec import ModelSpec
from ..transformer import forward

from .base import Params, check_size, project_rows, randn, register_method


@register_method("prompt")
class SoftPrompt:
    name = "prompt"
    size_name = "length"
    kind = "input-space"   # abilities.py: it only prepends trainable tokens
    projectable = True     # project() keeps each token in the norm ball (claim M)

    def init(self, spec: ModelSpec, batch: int, size: int, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        check_size(self.name, size)
        return {"prompt": randn(generator, batch, size, spec.d, scale=1.0, dtype=dtype, device=device)}  # (B,m_p,d)

    def outputs(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor,
                keep: int | None = None) -> Tensor:
        return forward(spec, params, X, prompt=trainable["prompt"], keep=keep)

    def outputs_and_jacobian(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor,
                             keep: int | None = None) -> tuple[Tensor, Tensor]:
        """The outputs and their Jacobian in the prompt's entries, in one forward-mode pass."""
        return tangents.outputs_and_jacobian(spec, params, X, trainable, lambda duals: {"prompt": duals["prompt"]},
                                             keep)

    def exact_adapter(self, adapter: Mapping[str, np.ndarray]) -> ExactAdapter:
        """How the found prompt enters the exact model (for the rigorous replay)."""
        return ExactAdapter(prompt=adapter["prompt"])

    def param_count(self, spec: ModelSpec, size: int) -> int:
        return size * spec.d

    def project(self, trainable: dict[str, Tensor], bound: float) -> None:
        project_rows(trainable["prompt"], bound)
