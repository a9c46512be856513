"""Claim Z1's instances: a deep linear network [W_1, ..., W_L] (each D x D) and a target W_bar, as data.

The JSON form `peftaudit.linear/1` ({"format", "layers", "target", "meta"}) is what Z1
certificates embed; its digest is the SHA-256 of the canonical encoding (keys sorted, no spaces,
numbers as the shortest round-trip decimals of their binary64 values, -0.0 as 0.0), the rule the
transformer instances follow, recomputed by the checker (verify/checkers/z1.py) on its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

FORMAT = "peftaudit.linear/1"


@dataclass(frozen=True)
class LinearShape:
    d: int


@dataclass(frozen=True)
class LinearInstance:
    layers: tuple[np.ndarray, ...]      # W_1 .. W_L, each (D, D)
    target: np.ndarray                  # W_bar (D, D)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        D = self.target.shape[0]
        if self.target.shape != (D, D) or not self.layers or any(W.shape != (D, D) for W in self.layers):
            raise ValueError("LinearInstance: expected square layers and target of one size")
        if not all(np.isfinite(W).all() for W in (*self.layers, self.target)):
            raise ValueError("LinearInstance: numbers must be finite")

    @property
    def spec(self) -> LinearShape:      # what reports read (spec.d)
        return LinearShape(self.target.shape[0])

    @property
    def depth(self) -> int:
        return len(self.layers)


def to_dict(inst: LinearInstance) -> dict:
    zero = lambda a: (np.asarray(a, dtype=np.float64) + 0.0).tolist()  # noqa: E731  (-0.0 -> 0.0)
    return {"format": FORMAT, "layers": [zero(W) for W in inst.layers], "target": zero(inst.target),
            "meta": copy.deepcopy(dict(inst.meta))}  # no aliasing: editing the dict never edits the instance


def digest(inst: LinearInstance) -> str:
    text = json.dumps(to_dict(inst), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


RELU_FORMAT = "peftaudit.relu/1"


@dataclass(frozen=True)
class ReluInstance:
    """A frozen ReLU network (ReLU after every layer but the last) [(W_l, b_l)], a target network of
    the same width and smaller depth [(W_bar_g, b_bar_g)], and the input domain [-bound, bound]^D."""
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    target: tuple[tuple[np.ndarray, np.ndarray], ...]
    bound: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        D = self.layers[0][0].shape[0]
        for W, b in (*self.layers, *self.target):
            if W.shape != (D, D) or b.shape != (D,) or not (np.isfinite(W).all() and np.isfinite(b).all()):
                raise ValueError("ReluInstance: expected finite D x D weights and D biases throughout")
        if not (self.bound > 0 and np.isfinite(self.bound)):
            raise ValueError("ReluInstance: bound must be a positive number")

    @property
    def spec(self) -> LinearShape:
        return LinearShape(self.layers[0][0].shape[0])

    @property
    def depth(self) -> int:
        return len(self.layers)


def relu_to_dict(inst: ReluInstance) -> dict:
    zero = lambda a: (np.asarray(a, dtype=np.float64) + 0.0).tolist()  # noqa: E731
    return {"format": RELU_FORMAT, "layers": [{"W": zero(W), "b": zero(b)} for W, b in inst.layers],
            "target": [{"W": zero(W), "b": zero(b)} for W, b in inst.target], "bound": float(inst.bound),
            "meta": copy.deepcopy(dict(inst.meta))}  # no aliasing: editing the dict never edits the instance


def relu_digest(inst: ReluInstance) -> str:
    text = json.dumps(relu_to_dict(inst), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
