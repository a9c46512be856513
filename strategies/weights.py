"""Weight builders: generic, chosen spectrum, low rank, invertible residual MLPs, non-injective MLPs.

Builders are plain functions of a numpy Generator, so the CLI and the audit draw the same
instances from a seed; strategies/hyp.py wraps them (and adds adversarial entry-wise draws)
for Hypothesis. Each builds the property it needs instead of filtering random draws.
"""

from __future__ import annotations

import numpy as np

from peftaudit.models.spec import ModelSpec


def generic_matrix(rng: np.random.Generator, rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
    """Gaussian entries with variance scale^2 / cols (so W @ x keeps the scale of x)."""
    return rng.normal(size=(rows, cols)) * (scale / np.sqrt(cols))


def orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    Q, R = np.linalg.qr(rng.normal(size=(n, n)))
    return Q * np.sign(np.diag(R))


def spectrum_matrix(rng: np.random.Generator, singular_values: np.ndarray) -> np.ndarray:
    """A square matrix U diag(s) V^T with exactly the chosen singular values (up to rounding)."""
    n = len(singular_values)
    return orthogonal(rng, n) @ np.diag(singular_values) @ orthogonal(rng, n).T


def low_rank_matrix(rng: np.random.Generator, rows: int, cols: int, rank: int) -> np.ndarray:
    return generic_matrix(rng, rows, rank) @ generic_matrix(rng, rank, cols)


def branch_bound(W1: np.ndarray, W2: np.ndarray) -> float:
    """Float value of || |W2| |W1| ||_inf (the exact one is in verify.mlp)."""
    return float((np.abs(W2) @ np.abs(W1)).sum(axis=1).max())


def contractive_mlp(rng: np.random.Generator, d: int, hidden: int, kappa: float = 0.5) -> dict[str, np.ndarray]:
    """Residual-MLP weights whose branch has max-norm Lipschitz bound kappa < 1: invertible."""
    W1 = generic_matrix(rng, hidden, d)
    W2 = generic_matrix(rng, d, hidden)
    W2 *= kappa / branch_bound(W1, W2)
    return {"W1": W1, "b1": rng.normal(size=hidden) * 0.5, "W2": W2, "b2": rng.normal(size=d) * 0.1}


def non_injective_plain_mlp(rng: np.random.Generator, d: int, hidden: int) -> dict[str, np.ndarray]:
    """Plain-MLP weights that are not injective: W1 has rank < d (a kernel direction collapses)."""
    rank = max(1, min(hidden, d - 1))
    return {"W1": low_rank_matrix(rng, hidden, d, rank), "b1": rng.normal(size=hidden) * 0.5,
            "W2": generic_matrix(rng, d, hidden), "b2": rng.normal(size=d) * 0.1}


def model_weights(rng: np.random.Generator, spec: ModelSpec, *, kappa: float = 0.5,
                  attention_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Weights for every matrix of spec; residual MLPs are contractive (kappa), plain ones generic."""
    out: dict[str, np.ndarray] = {}
    for name, shape in spec.weight_shapes():
        last = name.rsplit(".", 1)[-1]
        if last in ("Wq", "Wk", "Wv", "Wo"):
            out[name] = generic_matrix(rng, *shape, scale=attention_scale)
        elif name == "positional":
            out[name] = rng.normal(size=shape) * 0.5
    for li, layer in enumerate(spec.layers):
        if spec.mlp == "residual":
            mlp = contractive_mlp(rng, spec.d, layer.hidden, kappa)
        else:
            mlp = {"W1": generic_matrix(rng, layer.hidden, spec.d), "b1": rng.normal(size=layer.hidden) * 0.5,
                   "W2": generic_matrix(rng, spec.d, layer.hidden), "b2": rng.normal(size=spec.d) * 0.1}
        out.update({f"layers.{li}.{k}": v for k, v in mlp.items()})
    return {name: out[name] for name in spec.weight_names()}
