"""Grouping instances into batchable problem sets and moving them onto a device.

Problems of one batch share the model spec and the dataset shape; a batch is instances x
restarts for one method and one size (prompt length or rank).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

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


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n for the body (float results of large products can depend on
    it), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    """An upper estimate of the memory one problem of a search chunk needs, in bytes of float64.

    The Jacobian dominates: forward mode pushes min(R, P) tangents (reverse mode pulls as many
    cotangents) through the network at once, so each token's activations (residual stream,
    query/key/value, attention row, MLP hidden units) live that many times over, beside the (R, P)
    Jacobian, its damped normal system and the per-tangent parameter vectors. The coefficients
    are fitted to `benchmarks/search_memory.py`'s measurements of whole chunks (LM, Adam, replay)
    on eleven families, from planted prompts at d = 8 to the U construction's transformers: the
    estimate lay 1.3x to 3.4x above every measurement, and 1.2x to 9.3x since the built-in methods'
    Jacobians are written out (docs/design.md, "How the search works")."""
    T = tokens + size
    per_token = sum(spec.d + sum(2 * (2 * h.k + h.v) + T for h in layer.heads) + 2 * layer.hidden
                    for layer in spec.layers)                            # activations of one token
    weights = sum(int(np.prod(shape)) for _, shape in spec.weight_shapes())
    residuals = examples * targets * spec.d
    small = min(residuals, n_params)
    entries = ((small + 4) * examples * T * per_token + 6 * residuals * n_params + 3 * small * small
               + 12 * small * n_params + 4 * weights + 8 * n_params)
    return 8 * entries
