"""Grouping instances into batchable problem sets and moving them onto a device.

Problems of one batch share the model spec and the dataset shape; a batch is instances x
restarts for one method and one size (prompt length or rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from peftaudit.errors import InputError
from peftaudit.instance import Instance
from peftaudit.models.spec import ModelSpec


@dataclass(frozen=True)
class Group:
    """Instances that can share one tensor program."""
    spec: ModelSpec
    indices: tuple[int, ...]  # positions in the caller's instance list


def group_instances(instances: Sequence[Instance]) -> list[Group]:
    if not instances:
        raise InputError("instances", [], "at least one instance")
    keys: dict[tuple, list[int]] = {}
    for i, inst in enumerate(instances):
        key = (inst.spec, len(inst.dataset), inst.n_tokens, inst.n_targets)
        keys.setdefault(key, []).append(i)
    return [Group(key[0], tuple(idx)) for key, idx in keys.items()]


def stacked(instances: Sequence[Instance], rows: Sequence[int], device: torch.device,
            dtype: torch.dtype = torch.float64) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Weights (B, ...), inputs (B, E, n, d) and targets (B, E, k, d) for problems `rows`."""
    names = instances[rows[0]].spec.weight_names()
    weights = {name: torch.as_tensor(np.stack([instances[r].weights[name] for r in rows]), dtype=dtype, device=device)
               for name in names}
    X = torch.as_tensor(np.stack([instances[r].inputs() for r in rows]), dtype=dtype, device=device)
    Y = torch.as_tensor(np.stack([instances[r].targets() for r in rows]), dtype=dtype, device=device)
    return weights, X, Y


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device", device, "'cpu' or 'auto' (no CUDA device is available here)")
    if device not in ("cpu", "cuda"):
        raise InputError("device", device, "one of auto, cpu, cuda")
    return torch.device(device)


def bytes_per_problem(spec: ModelSpec, examples: int, tokens: int, targets: int, n_params: int, size: int) -> int:
    """A generous estimate of the memory one problem needs (activations, gradients, Jacobian)."""
    T = tokens + size
    attn = sum(len(layer.heads) for layer in spec.layers) * examples * T * (2 * T + size) * 6
    acts = len(spec.layers) * examples * T * (spec.d * 10 + 2 * max(l.hidden for l in spec.layers) * 3)
    weights = sum(int(np.prod(shape)) for _, shape in spec.weight_shapes())
    residuals = examples * targets * spec.d
    small = min(residuals, n_params)
    jac = residuals * n_params * 3 + small * small * 3
    return 8 * 4 * (attn + acts + weights + jac + n_params * 8)
