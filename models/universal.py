"""Claim U's construction: a fixed transformer g and, per grid table, a prompt P with
g([P, X]) = table(cell(X)) on the last m positions.

The task: maps f from [0,1]^{m x d} (m tokens of d numbers) to [0,1]^{m x d}. Inputs are quantized
on a grid of step delta = 1/K (K a power of two, so every grid number is an exact binary64 value);
a table gives, for each of the K^{dm} cells, an output sequence on the same grid. The model is a
SPEC section 1 transformer (softmax attention, residual ReLU MLPs, encoder mask, additive
positional encoding on the input positions), three layers, of width

    D = 2d + m + 5        channels: x (d) | position one-hot (m) | code | id | key a, b, a^2+b^2 | out (d)

with the documented linear embedding "pad x with zeros to width D" and the readout "first d
channels" of each of the last m positions (the other channels end exactly 0 on the grid).

    layer 0  attention off (W_v = 0); MLP = staircase quantizer, gated by the position one-hot:
             code_j = sum_k q(x_jk) K^{j d + k}, q(x) = #{i : x >= i/K} by ramps of width gamma
    layer 1  uniform attention (W_q = 0: all logits 0): id = sum over tokens of n * code / n = the
             cell's index s in base K (the prompt's code channels are 0)
    layer 2  look-up attention: query (s, j, 1), prompt key beta (2a, 2b, -(a^2 + b^2)); the logit
             beta (s^2 + j^2 - (s - a)^2 - (j - b)^2) peaks at the prompt token (a, b) = (s, j) with
             a gap >= beta to every other token; its value is table[a][b]; the MLP (one unit
             relu(z + 1) per channel) moves the result into the x channels and zeroes the rest

Sizes (the report's size table): depth 3 (independent of delta), width D, MLP widths
2 m d (K - 1), 1 and D, prompt length m_p = m K^{dm} (one token per cell and output position:
exactly the counting bound m delta^{-dm} for table-indexing constructions), prompt parameters
m_p D, and model parameters (every weight of the three layers and the positional encoding, zeros
included) 2 D^2 + (20 + 2d + m + 2h) D + h + 1 with h = 2 m d (K - 1). Hardmax attention reproduces the table exactly on every cell away from bands of width
gamma below the grid lines; softmax leaks at most (n - 1) e^{-beta} of the weight, n = m_p + m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .spec import HeadShape, LayerShape, ModelSpec


@dataclass(frozen=True)
class Grid:
    """Task dimensions and grid: m tokens of d numbers, K cells per coordinate (delta = 1/K)."""
    d: int
    m: int
    K: int

    def __post_init__(self) -> None:
        for name in ("d", "m", "K"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Grid.{name}: expected a positive integer, got {value!r}")
        if self.K < 2 or self.K & (self.K - 1):
            raise ValueError(f"Grid.K: expected a power of two >= 2 (delta = 1/K exact in binary64), got {self.K}")
        if self.K ** (self.d * self.m) > 2 ** 20:
            raise ValueError(f"Grid: K^(d m) = {self.K}^{self.d * self.m} cells exceed the construction's limit 2^20")

    @property
    def cells(self) -> int:
        return self.K ** (self.d * self.m)

    @property
    def prompt_length(self) -> int:
        return self.m * self.cells

    @property
    def width(self) -> int:
        return 2 * self.d + self.m + 5

    @property
    def delta(self) -> float:
        return 1.0 / self.K


def channels(grid: Grid) -> dict[str, int]:
    """Index of the first channel of each group."""
    d, m = grid.d, grid.m
    return {"x": 0, "pos": d, "code": d + m, "id": d + m + 1, "key": d + m + 2, "out": d + m + 5}


def cell_digits(grid: Grid, cell: int) -> np.ndarray:
    """(m, d) grid indices of a cell: digit j d + k of `cell` in base K is coordinate (j, k)."""
    digits = [(cell // grid.K ** e) % grid.K for e in range(grid.d * grid.m)]
    return np.array(digits, dtype=np.int64).reshape(grid.m, grid.d)                   # (m,d)


def cell_centres(grid: Grid) -> np.ndarray:
    """(cells, m, d) centre (i + 1/2) / K of every cell, in cell-index order."""
    digits = np.stack([cell_digits(grid, c) for c in range(grid.cells)])               # (C,m,d)
    return (2 * digits + 1) / (2.0 * grid.K)                                            # (C,m,d)


def embed(grid: Grid, X: np.ndarray) -> np.ndarray:
    """The documented linear embedding: (..., m, d) inputs -> (..., m, D), zero-padded."""
    out = np.zeros(X.shape[:-1] + (grid.width,))
    out[..., : grid.d] = X
    return out


def spec_for(grid: Grid) -> ModelSpec:
    """The shapes of g: three layers of width D, MLP widths 2 m d (K - 1), 1 and D."""
    D = grid.width
    return ModelSpec(d=D, layers=(
        LayerShape(heads=(HeadShape(k=1, v=1, has_wo=True),), hidden=2 * grid.m * grid.d * (grid.K - 1)),
        LayerShape(heads=(HeadShape(k=1, v=1, has_wo=True),), hidden=1),
        LayerShape(heads=(HeadShape(k=3, v=grid.d, has_wo=True),), hidden=D),
    ), mlp="residual", attention="encoder", positions=grid.m)


def build_transformer(grid: Grid, gamma: float, beta: float) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """The fixed transformer g for prompts of length grid.prompt_length (see the module docstring)."""
    if not 0 < gamma < 1 / (2 * grid.K):
        raise ValueError(f"gamma: expected 0 < gamma < delta / 2 = {1 / (2 * grid.K)}, got {gamma}")
    if not beta > 0:
        raise ValueError(f"beta: expected a positive logit scale, got {beta}")
    d, m, K, D = grid.d, grid.m, grid.K, grid.width
    ch = channels(grid)
    n = grid.prompt_length + m
    spec = spec_for(grid)
    w = {name: np.zeros(shape) for name, shape in spec.weight_shapes()}
    # layer 0: staircase quantizer, one ramp pair per (position j, coordinate k, threshold i/K)
    slope = 1.0 / gamma
    gate = slope + 2.0  # a unit gated off (one-hot 0) has pre-activation <= -t/gamma - 1 < 0
    unit = 0
    for j in range(m):
        for k in range(d):
            weight = float(K ** (j * d + k))
            for i in range(1, K):
                t_over_gamma = i / K * slope
                for offset, sign in ((1.0, 1.0), (0.0, -1.0)):   # relu(u + 1) - relu(u): ramp 0 -> 1
                    w["layers.0.W1"][unit, ch["x"] + k] = slope
                    w["layers.0.W1"][unit, ch["pos"] + j] = gate
                    w["layers.0.b1"][unit] = offset - t_over_gamma - gate
                    w["layers.0.W2"][ch["code"], unit] = sign * weight
                    unit += 1
    # layer 1: uniform attention sums the codes into the id channel
    w["layers.1.heads.0.Wv"][0, ch["code"]] = float(n)
    w["layers.1.heads.0.Wo"][ch["id"], 0] = 1.0
    # layer 2: look-up of the prompt token (a, b) = (id, position)
    w["layers.2.heads.0.Wq"][0, ch["id"]] = 1.0
    for j in range(m):
        w["layers.2.heads.0.Wq"][1, ch["pos"] + j] = float(j + 1)
        w["layers.2.heads.0.Wq"][2, ch["pos"] + j] = 1.0
    w["layers.2.heads.0.Wk"][0, ch["key"]] = 2.0 * beta
    w["layers.2.heads.0.Wk"][1, ch["key"] + 1] = 2.0 * beta
    w["layers.2.heads.0.Wk"][2, ch["key"] + 2] = -beta
    for k in range(d):
        w["layers.2.heads.0.Wv"][k, ch["x"] + k] = 1.0
        w["layers.2.heads.0.Wo"][ch["out"] + k, k] = 1.0
    # layer 2 MLP: unit c = relu(z_c + 1); x_k <- o_k, every other channel <- 0
    w["layers.2.W1"][:] = np.eye(D)
    w["layers.2.b1"][:] = 1.0
    w["layers.2.W2"][:] = -np.eye(D)
    w["layers.2.b2"][:] = 1.0
    for k in range(d):
        w["layers.2.W2"][ch["x"] + k, ch["out"] + k] = 1.0
        w["layers.2.b2"][ch["x"] + k] = 0.0
    for j in range(m):
        w["positional"][j, ch["pos"] + j] = 1.0
    return spec, w


def build_prompt(grid: Grid, table: np.ndarray) -> np.ndarray:
    """The prompt (m_p, D) that indexes `table` (cells, m, d): token (a, b) holds table[a][b - 1] in
    its x channels and the key (a, b, a^2 + b^2)."""
    table = np.asarray(table, dtype=np.float64)
    if table.shape != (grid.cells, grid.m, grid.d):
        raise ValueError(f"table: expected shape {(grid.cells, grid.m, grid.d)}, got {table.shape}")
    ch = channels(grid)
    P = np.zeros((grid.prompt_length, grid.width))                                      # (m_p,D)
    for a in range(grid.cells):
        for b in range(1, grid.m + 1):
            row = P[a * grid.m + b - 1]
            row[ch["x"]: ch["x"] + grid.d] = table[a, b - 1]
            row[ch["key"]: ch["key"] + 3] = (a, b, a * a + b * b)
    return P


def cell_of(grid: Grid, X: np.ndarray) -> np.ndarray:
    """Cell index of each input (..., m, d) in [0,1]: digit floor(x K), with x = 1 in the last cell."""
    idx = np.minimum(np.floor(X * grid.K), grid.K - 1).astype(np.int64)                 # (...,m,d)
    powers = grid.K ** np.arange(grid.d * grid.m, dtype=np.int64).reshape(grid.m, grid.d)  # (m,d)
    return (idx * powers).sum(axis=(-1, -2))                                             # (...)


def sizes(grid: Grid) -> dict:
    """The construction's size as functions of (d, m, delta), beside the counting bound and the anchors
    of SPEC claim U (Hu et al. 2025 on the paper's construction; their 1 attention + 2 MLP layers)."""
    d, m, K, D = grid.d, grid.m, grid.K, grid.width
    spec = spec_for(grid)
    g_params = sum(math.prod(shape) for _, shape in spec.weight_shapes())
    return {"d": d, "m": m, "K": K, "delta": 1 / K, "cells": grid.cells, "depth": 3, "width": D,
            "mlp_widths": [layer.hidden for layer in spec.layers], "prompt_length": grid.prompt_length,
            "prompt_params": grid.prompt_length * D, "model_params": g_params,
            "counting_bound_prompt_length": m * K ** (d * m),
            "anchor_paper_attention_layers": f"O((m_p + m) (1/eps)^d) = O({grid.prompt_length + m} * {K}^{d})",
            "anchor_paper_mlp_layers": f"O((1/eps)^(d (m_p + m))) = O({K}^{d * (grid.prompt_length + m)})",
            "anchor_hu_et_al": "1 attention layer + 2 MLP layers"}


def leakage_bound(grid: Grid, beta: float) -> float:
    """Softmax weight outside the matching token: at most (n - 1) e^{-beta} (float estimate; the
    checker encloses it exactly)."""
    return (grid.prompt_length + grid.m - 1) * math.exp(-beta)


MAX_K = 1024


MIN_GAMMA_EXPONENT = -48  # ramps narrower than 2^-48 would need biases beyond binary64's 53 bits (g inexact)


def choose(d: int, m: int, lipschitz: float, eps: float, p: int) -> tuple[int, float, float]:
    """(K, gamma, beta) from the documented bound, with V = m d and the band error taken as 2:

        d_p^p <= V (delta/2 + L delta/2 + lam)^p + V 2^p V (K - 1) gamma

    K: the least power of two with V^(1/p) (L + 1) / (2K) <= eps / 2; lam = eps / (4 V^(1/p)) through
    beta = ceil(ln((n - 1) / lam)), so the first term is at most (3 eps / 4)^p; gamma: the largest
    power of two with V^2 (K - 1) gamma 2^p <= eps^p - (3 eps / 4)^p (the rest of the budget), so the
    total is at most eps^p. The checker recomputes the bound exactly from the model; these choices
    only make it hold. A p whose gamma falls below 2^MIN_GAMMA_EXPONENT is refused: g's weights
    (slopes 1/gamma beside offsets of 1) would no longer be exact binary64 values, and the
    construction would not be the documented g."""
    if not (isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 64):
        raise ValueError(f"p: expected an integer in 1..64, got {p!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    if not (math.isfinite(lipschitz) and lipschitz >= 0):
        raise ValueError(f"lipschitz: expected a non-negative number, got {lipschitz!r}")
    V = d * m
    root = V ** (1 / p)
    K = 2
    while root * (lipschitz + 1) / (2 * K) > eps / 2:
        K *= 2
        if K > MAX_K:
            raise ValueError(f"eps = {eps} needs a grid finer than 1/{MAX_K} for d = {d}, m = {m}, L = {lipschitz}, "
                             f"p = {p}")
    try:
        grid = Grid(d, m, K)
    except ValueError:
        raise ValueError(f"eps = {eps} needs a grid of step 1/{K}, {K}^{V} cells for d = {d}, m = {m}: beyond the "
                         "construction's limit of 2^20 cells") from None
    lam = eps / (4 * root)
    beta = float(math.ceil(math.log((grid.prompt_length + m - 1) / lam)))
    # log2 of the band budget (eps^p - (3 eps/4)^p) / (V^2 (K - 1) 2^p), computed in logs (no underflow)
    log2_gamma = p * math.log2(eps) + math.log2(1 - 0.75 ** p) - math.log2(V * V * (K - 1)) - p
    exponent = min(math.floor(log2_gamma), -2 - int(math.log2(K)))  # and gamma <= 1/(4K)
    if exponent < MIN_GAMMA_EXPONENT:
        raise ValueError(f"p = {p} at eps = {eps} (d = {d}, m = {m}) needs ramps of width 2^{math.floor(log2_gamma)}, "
                         f"below 2^{MIN_GAMMA_EXPONENT} where g's weights stay exact binary64 values; use a smaller p "
                         "or a larger eps")
    return K, 2.0 ** exponent, max(beta, 1.0)
