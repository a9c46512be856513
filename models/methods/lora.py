"""LoRA: W <- W + B A with rank r on a chosen set of matrices (SPEC section 1)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from peftaudit.errors import InputError
from .. import tangents
from ..interval import ExactAdapter
from ..spec import ModelSpec
from ..transformer import forward

from .base import Params, check_size, randn, register_method

TARGETS = {"q": "Wq", "k": "Wk", "v": "Wv", "o": "Wo", "1": "W1", "2": "W2"}


def parse_targets(targets: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'v,q' or ['v', 'q'] -> ('q', 'v'); rejects unknown letters."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    items = [t.strip().removeprefix("W").lower() for t in items if t.strip()]
    for t in items:
        if t not in TARGETS:
            raise InputError("lora targets", t, "letters among q, k, v, o, 1, 2 (for Wq, Wk, Wv, Wo, W1, W2)")
    if not items:
        raise InputError("lora targets", targets, "at least one of q, k, v, o, 1, 2")
    return tuple(sorted(set(items), key=list(TARGETS).index))


def adapted_matrices(spec: ModelSpec, targets: tuple[str, ...]) -> list[tuple[str, tuple[int, int]]]:
    """(weight name, shape) of every matrix a LoRA with these targets adapts."""
    wanted = {TARGETS[t] for t in targets}
    found = [(name, shape) for name, shape in spec.weight_shapes() if name.rsplit(".", 1)[-1] in wanted]
    if not found:
        raise InputError("lora targets", ",".join(targets), "targets naming matrices this model has")
    return found  # type: ignore[return-value]


@register_method("lora")
class LoRA:
    name = "lora"
    size_name = "rank"
    kind = "weight-space"

    def __init__(self, targets: str | tuple[str, ...] = "v"):
        self.targets = parse_targets(targets)

    @property
    def update_class(self) -> str:
        """abilities.py: on W_v alone, a rank-r LoRA is an update of W_v of rank <= r."""
        return "value-rank" if self.targets == ("v",) else ""

    def init(self, spec: ModelSpec, batch: int, size: int, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        check_size(self.name, size)
        out = {}
        for name, (rows, cols) in adapted_matrices(spec, self.targets):
            out[name + ".A"] = randn(generator, batch, size, cols, scale=cols ** -0.5, dtype=dtype, device=device)
            out[name + ".B"] = randn(generator, batch, rows, size, scale=0.5, dtype=dtype, device=device)
        return out

    def outputs(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor,
                keep: int | None = None) -> Tensor:
        """The forward with W + B A on the adapted matrices, applied factored (Z W^T + (Z A^T) B^T)."""
        updates = {key[:-2]: (trainable[key[:-2] + ".B"], A) for key, A in trainable.items() if key.endswith(".A")}
        return forward(spec, params, X, low_rank=updates, keep=keep)

    def outputs_and_jacobian(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor,
                             keep: int | None = None) -> tuple[Tensor, Tensor]:
        """The outputs and their Jacobian in the factors' entries, in one forward-mode pass."""
        def place(duals: dict) -> dict:
            return {"low_rank": {key[:-2]: (duals[key[:-2] + ".B"], duals[key]) for key in duals if key.endswith(".A")}}
        return tangents.outputs_and_jacobian(spec, params, X, trainable, place, keep)

    def exact_adapter(self, adapter: Mapping[str, np.ndarray]) -> ExactAdapter:
        """W + B A, computed in the exact model (never rounded)."""
        return ExactAdapter(low_rank={key[:-2]: (adapter[key[:-2] + ".B"], a) for key, a in adapter.items()
                                      if key.endswith(".A")})

    def identity_adapter(self, spec: ModelSpec, size: int) -> tuple[dict, dict[str, Tensor]]:
        """B = 0: the weights unchanged, whatever they are (any weights serve)."""
        from .module_method import template_weights
        tensors = self.init(spec, 1, size, torch.Generator().manual_seed(0))
        return template_weights(spec), {k: torch.zeros_like(v) if k.endswith(".B") else v for k, v in tensors.items()}

    def param_count(self, spec: ModelSpec, size: int) -> int:
        return sum(size * (rows + cols) for _, (rows, cols) in adapted_matrices(spec, self.targets))

    def project(self, trainable: dict[str, Tensor], bound: float) -> None:
        raise InputError("norm bound", bound, "no norm bound for LoRA (it applies to prompts and prefixes)")
