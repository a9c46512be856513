"""Claim U's targets: L-Lipschitz maps f: [0,1]^{m x d} -> [0,1]^{m x d}, their grid tables, and
the instances that pair a table with the constructed transformer (models/universal.py).

Lipschitz means max-norm to max-norm on the flattened m d numbers (x_{j,k} at index j d + k).
Every family is rational (clipped affine maps, clipped maxima of two affine maps, clipped
quadratic random features), so a table entry, the rounding of f(centre) to the 1/K grid, is
computed exactly in Fractions and the checker can recompute it; "table" is the planted family:
f is itself a grid table (constant on cells), so only the bands and the softmax leakage err.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from peftaudit.instance import Instance, make_instance
from peftaudit.models import universal

FAMILIES = ("affine", "piecewise-linear", "quadratic-features", "table")


def _scaled(rng: np.random.Generator, rows: int, cols: int, lipschitz: float) -> np.ndarray:
    """A random matrix whose largest row sum of absolute values is at most `lipschitz`."""
    A = rng.standard_normal((rows, cols))                                               # (V,V)
    return A * (lipschitz / np.abs(A).sum(axis=1).max()) * (1 - 1e-12)


def draw_target(rng: np.random.Generator, family: str, d: int, m: int, lipschitz: float) -> dict:
    """A target description (JSON-ready, numbers exact binary64) with max-norm Lipschitz bound <= lipschitz."""
    V = d * m
    if family == "affine":
        A = _scaled(rng, V, V, lipschitz)
        return {"family": family, "A": A.tolist(), "b": (0.5 - A.sum(axis=1) / 2).tolist()}
    if family == "piecewise-linear":
        A, A2 = _scaled(rng, V, V, lipschitz), _scaled(rng, V, V, lipschitz)
        return {"family": family, "A": A.tolist(), "b": (0.5 - A.sum(axis=1) / 2).tolist(),
                "A2": A2.tolist(), "b2": (0.4 - A2.sum(axis=1) / 2).tolist()}
    if family == "quadratic-features":
        R = 3
        W = rng.standard_normal((R, V)) / V                                              # (R,V)
        norms = np.abs(W).sum(axis=1)
        C = rng.standard_normal((V, R))                                                  # (V,R)
        C *= lipschitz / (2 * (np.abs(C) * norms ** 2).sum(axis=1).max()) * (1 - 1e-12)
        return {"family": family, "W": W.tolist(), "C": C.tolist(), "b": [0.5 - float(C[i] @ norms ** 2) / 4
                                                                         for i in range(V)]}
    if family == "table":
        return {"family": family}
    raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")


def evaluate(target: dict, X: np.ndarray) -> np.ndarray:
    """f on inputs (..., m, d) in float64 (Monte Carlo); the table family has no closed form here."""
    shape = X.shape
    x = X.reshape(shape[:-2] + (-1,))                                                    # (...,V)
    family = target["family"]
    if family == "affine":
        y = x @ np.asarray(target["A"]).T + np.asarray(target["b"])
    elif family == "piecewise-linear":
        y = np.maximum(x @ np.asarray(target["A"]).T + np.asarray(target["b"]),
                       x @ np.asarray(target["A2"]).T + np.asarray(target["b2"]))
    elif family == "quadratic-features":
        feats = (x @ np.asarray(target["W"]).T) ** 2                                     # (...,R)
        y = feats @ np.asarray(target["C"]).T + np.asarray(target["b"])
    else:
        raise ValueError("the table family is evaluated through its table")
    return np.clip(y, 0.0, 1.0).reshape(shape)


def _exact(target: dict, x: list[Fraction]) -> list[Fraction]:
    dot = lambda r, v: sum((Fraction(a) * b for a, b in zip(r, v)), Fraction(0))  # noqa: E731
    clip = lambda v: min(max(v, Fraction(0)), Fraction(1))  # noqa: E731
    family = target["family"]
    if family == "affine":
        return [clip(dot(r, x) + Fraction(b)) for r, b in zip(target["A"], target["b"])]
    if family == "piecewise-linear":
        return [clip(max(dot(r, x) + Fraction(b), dot(r2, x) + Fraction(b2)))
                for r, b, r2, b2 in zip(target["A"], target["b"], target["A2"], target["b2"])]
    feats = [dot(w, x) ** 2 for w in target["W"]]
    return [clip(dot(c, feats) + Fraction(b)) for c, b in zip(target["C"], target["b"])]


def table(grid: universal.Grid, target: dict, rng: np.random.Generator | None = None) -> np.ndarray:
    """(cells, m, d) grid values: f(centre) rounded to the nearest multiple of 1/K, exactly (ties
    down); for the planted family a random table on the grid."""
    if target["family"] == "table":
        rng = rng or np.random.default_rng(0)
        return rng.integers(0, grid.K + 1, size=(grid.cells, grid.m, grid.d)) / grid.K
    out = np.zeros((grid.cells, grid.m, grid.d))
    for cell in range(grid.cells):
        digits = universal.cell_digits(grid, cell)
        x = [Fraction(2 * int(i) + 1, 2 * grid.K) for i in digits.reshape(-1)]
        values = _exact(target, x)
        out[cell] = np.array([float(-((-v * grid.K + Fraction(1, 2)) // 1)) / grid.K for v in values]
                             ).reshape(grid.m, grid.d)
    return out


def u_instance(rng: np.random.Generator, d: int, m: int, lipschitz: float, eps: float, p: int,
               family: str) -> Instance:
    """A U instance: the constructed g for the grid that (L, eps, p) needs, the dataset 'every cell
    centre -> its table value' (padded to g's width), and the grid, eps, p and target in meta."""
    K, gamma, beta = universal.choose(d, m, lipschitz, eps, p)
    grid = universal.Grid(d, m, K)
    target = draw_target(rng, family, d, m, lipschitz)
    values = table(grid, target, rng)                                                    # (C,m,d)
    spec, weights = universal.build_transformer(grid, gamma, beta)
    X = universal.embed(grid, universal.cell_centres(grid))                               # (C,m,D)
    Y = universal.embed(grid, values)                                                    # (C,m,D)
    meta = {"family": f"U-{family}", "u": {"d": d, "m": m, "K": K, "gamma": gamma, "beta": beta, "eps": eps,
                                           "p": p, "L": lipschitz, "target": target}}
    return make_instance(spec, weights, list(zip(X, Y)), meta)
