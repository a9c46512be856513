"""Prefix tuning: extra keys and values in every attention of every layer.

Two styles (SPEC section 1): "prefix-kv" (peft style: free key and value vectors per head) and
"prefix" (hidden-state style: free prefix states per layer that pass through W_k and W_v).
"""

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


class _Prefix:
    """What both styles share: `forward` reads either from the prefix's tensor names."""
    size_name = "length"

    def outputs(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor,
                keep: int | None = None) -> Tensor:
        return forward(spec, params, X, prefix=trainable, keep=keep)

    def outputs_and_jacobian(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor,
                             keep: int | None = None) -> tuple[Tensor, Tensor]:
        """The outputs and their Jacobian in the prefix's entries, in one forward-mode pass."""
        return tangents.outputs_and_jacobian(spec, params, X, trainable, lambda duals: {"prefix": duals}, keep)

    def exact_adapter(self, adapter: Mapping[str, np.ndarray]) -> ExactAdapter:
        return ExactAdapter(prefix=dict(adapter))

    def project(self, trainable: dict[str, Tensor], bound: float) -> None:
        for t in trainable.values():
            project_rows(t, bound)


@register_method("prefix")
class PrefixStates(_Prefix):
    name = "prefix"

    def init(self, spec: ModelSpec, batch: int, size: int, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        check_size(self.name, size)
        return {f"layers.{li}.states": randn(generator, batch, size, spec.d, scale=1.0, dtype=dtype, device=device)
                for li in range(len(spec.layers))}  # each (B,m,d)

    def param_count(self, spec: ModelSpec, size: int) -> int:
        return size * spec.d * len(spec.layers)


@register_method("prefix-kv")
class PrefixKeyValue(_Prefix):
    name = "prefix-kv"

    def init(self, spec: ModelSpec, batch: int, size: int, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        check_size(self.name, size)
        out = {}
        for li, layer in enumerate(spec.layers):
            for hi, head in enumerate(layer.heads):
                p = f"layers.{li}.heads.{hi}."
                out[p + "K"] = randn(generator, batch, size, head.k, scale=1.0, dtype=dtype, device=device)  # (B,m,k)
                out[p + "V"] = randn(generator, batch, size, head.v, scale=1.0, dtype=dtype, device=device)  # (B,m,v)
        return out

    def param_count(self, spec: ModelSpec, size: int) -> int:
        return size * sum(h.k + h.v for layer in spec.layers for h in layer.heads)

