"""Instance builders: the L1 family (skew, parallel and exact rays) and planted instances.

Planted instances have targets computed from a known prompt or LoRA, so they are memorizable
by construction; the planted object is recorded under meta["planted"] for the tests (the
search never reads it). Every builder is a function of a numpy Generator.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from peftaudit.errors import InputError
from peftaudit.instance import Instance, make_instance
from peftaudit.models.methods.lora import adapted_matrices, parse_targets
from peftaudit.models.spec import ModelSpec, simple_spec
from peftaudit.models.transformer import forward, to_torch

from .weights import generic_matrix, model_weights

L1_VARIANTS = ("skew", "parallel", "exact")


def model_outputs(spec: ModelSpec, weights: dict[str, np.ndarray], X: np.ndarray,
                  prompt: np.ndarray | None = None) -> np.ndarray:
    """Float64 reference outputs (E, n, d) of inputs X (E, n, d), optionally with a prompt (m_p, d)."""
    W = to_torch(weights)
    P = None if prompt is None else torch.as_tensor(prompt, dtype=torch.float64)[None]
    with torch.no_grad():
        return forward(spec, W, torch.as_tensor(X, dtype=torch.float64)[None], prompt=P)[0].numpy()


def _last_token_attention(weights: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Att(x_0, X) of the single head of layer 0 at the last token (float)."""
    p = "layers.0.heads.0."
    logits = X @ weights[p + "Wk"].T @ (weights[p + "Wq"] @ X[-1])
    s = np.exp(logits - logits.max())
    out = weights[p + "Wv"] @ X.T @ (s / s.sum())
    return weights[p + "Wo"] @ out if p + "Wo" in weights else out


def _mlp(weights: dict[str, np.ndarray], h: np.ndarray) -> np.ndarray:
    return h + weights["layers.0.W2"] @ np.maximum(weights["layers.0.W1"] @ h + weights["layers.0.b1"], 0) \
        + weights["layers.0.b2"]


def _diverging_directions(rng: np.random.Generator, a: list[np.ndarray], d: int) -> list[np.ndarray]:
    """Directions e_i such that the rays a_i + e_i + t e_i (t >= 0) are far from meeting."""
    for _ in range(1000):
        e = [rng.normal(size=d) for _ in a]
        if d >= 3:
            return e
        # in the plane: the lines meet at a_1 + t1 e_1 = a_2 + t2 e_2; the rays (t >= 1) must not
        M = np.stack([e[0], -e[1]], axis=1)
        if abs(np.linalg.det(M)) < 1e-3:
            continue
        t1, t2 = np.linalg.solve(M, a[1] - a[0])
        if min(t1, t2) < 0.5:
            return e
    raise RuntimeError("no diverging rays found")  # not reached for generic draws


def l1_instance(rng: np.random.Generator, d: int, variant: str = "skew", *, positional: bool = False,
                output_map: bool = False, kappa: float = 0.5, value_map: np.ndarray | None = None) -> Instance:
    """Two examples [x_i, x_0] sharing x_0 whose targets need attention outputs c_i = a_i + e_i.

    skew: independent directions (rays that never meet, robustly: d >= 3 skew, d = 2 diverging);
    parallel: e_1 = e_2 (unmemorizable exactly, but only L1+ can give a robust margin, and only
    when the two normalisers differ); exact: zero logits at x_0 (W_q x_0 = 0 exactly), so every
    softmax is uniform and rational, with skew rays. value_map replaces W_v (shape (d, d)).
    """
    if variant not in L1_VARIANTS:
        raise InputError("l1 variant", variant, "one of " + ", ".join(L1_VARIANTS))
    if d < 2:
        raise InputError("d", d, "an integer >= 2 for the L1 family")
    if variant == "exact" and positional:
        raise InputError("positional", positional, "no positional encoding for the exact variant")
    from peftaudit.models.spec import HeadShape, LayerShape
    head = HeadShape(k=d, v=d, has_wo=output_map)
    spec = ModelSpec(d=d, layers=(LayerShape(heads=(head,), hidden=2 * d),), positions=2 if positional else 0)
    weights = model_weights(rng, spec, kappa=kappa)
    if value_map is not None:  # e.g. ill-conditioned or low-rank W_v (strategies/weights.py)
        weights["layers.0.heads.0.Wv"] = np.asarray(value_map, dtype=np.float64)
    x0 = rng.normal(size=d)
    if variant == "exact":
        x0 = np.zeros(d)
        x0[0] = rng.normal() + np.sign(rng.normal()) * 1.0
        weights["layers.0.heads.0.Wq"][:, 0] = 0.0  # W_q x_0 = 0 exactly: all logits at x_0 vanish
    X = [np.stack([rng.normal(size=d), x0]) for _ in range(2)]
    encoded = [x + weights["positional"][:2] if positional else x for x in X]
    a = [_last_token_attention(weights, x) for x in encoded]
    if variant == "parallel":
        e = [rng.normal(size=d)] * 2
    else:
        e = _diverging_directions(rng, a, d)
    targets = [_mlp(weights, enc[-1] + ai + ei)[None, :] for enc, ai, ei in zip(encoded, a, e)]
    return make_instance(spec, weights, list(zip(X, targets)),
                         meta={"family": f"l1-{variant}", "d": d})


def planted_prompt_instance(rng: np.random.Generator, d: int, length: int, *,
                            mlp: Literal["residual", "plain"] = "residual",
                            attention: Literal["encoder", "causal"] = "encoder",
                            layers: int = 1, examples: int = 2, tokens: int = 2,
                            targets: Literal["last", "all"] = "all", l1_shape: bool = True,
                            weak: float | None = None) -> Instance:
    """Targets are the outputs under a hidden random prompt of `length` tokens: memorizable.

    l1_shape: the examples share their last token (so L1's certifier applies to them).
    weak: make the solution ill-conditioned: the first attention layer reads the last ceil(d/2)
    coordinates of every token through columns scaled by `weak` (e.g. 1e-5), so the Jacobian of
    the outputs in the prompt has singular values ~`weak` times the largest, while the targets
    still depend on those coordinates beyond the 1e-8 tolerance (for weak >= 1e-6): the near
    misses of issue 9, as a calibration family of their own.
    """
    if length < 1:
        raise InputError("length", length, "a positive prompt length")
    if weak is not None and not 0 < weak <= 1:
        raise InputError("weak", weak, "a scale in (0, 1]")
    spec = simple_spec(d, layers=layers, mlp=mlp, attention=attention)
    weights = model_weights(rng, spec)
    if weak is not None:
        cols = np.ones(d)
        cols[d - (d + 1) // 2:] = weak
        for name in weights:
            if name.startswith("layers.0.heads.") and name.rsplit(".", 1)[-1] in ("Wq", "Wk", "Wv"):
                weights[name] = weights[name] * cols[None, :]
    X = rng.normal(size=(examples, tokens, d))
    if l1_shape:
        X[:, -1, :] = X[0, -1, :]
    prompt = rng.normal(size=(length, d))
    Y = model_outputs(spec, weights, X, prompt)
    if targets == "last":
        Y = Y[:, -1:, :]
    planted = {"method": "prompt", "length": length, "prompt": prompt.tolist()}
    if weak is not None:
        planted["weak"] = weak
    family = "planted-prompt" if weak is None else "planted-prompt-ill-conditioned"
    return make_instance(spec, weights, list(zip(X, Y)), meta={"family": family, "planted": planted})


def planted_lora_instance(rng: np.random.Generator, d: int, rank: int = 1, lora_targets: str = "v", *,
                          examples: int = 2, tokens: int = 2, targets: Literal["last", "all"] = "last",
                          l1_shape: bool = True) -> Instance:
    """Targets from the model with a hidden rank-`rank` LoRA on `lora_targets`: memorizable by LoRA."""
    spec = simple_spec(d)
    weights = model_weights(rng, spec)
    adapted = dict(weights)
    delta = {}
    for name, (rows, cols) in adapted_matrices(spec, parse_targets(lora_targets)):
        delta[name] = generic_matrix(rng, rows, rank) @ generic_matrix(rng, rank, cols)
        adapted[name] = weights[name] + delta[name]
    X = rng.normal(size=(examples, tokens, d))
    if l1_shape:
        X[:, -1, :] = X[0, -1, :]
    Y = model_outputs(spec, adapted, X)
    if targets == "last":
        Y = Y[:, -1:, :]
    return make_instance(spec, weights, list(zip(X, Y)),
                         meta={"family": "planted-lora", "planted": {"method": "lora", "rank": rank,
                                                                     "targets": lora_targets}})


def l2_instance(rng: np.random.Generator, d: int, positions: int, *, attention: str = "encoder",
                kappa: float = 0.5) -> Instance:
    """`positions` examples [x_j, x'_j] whose last-token targets need c_j = a_j + e_j, e_j random:
    {a_j, c_j} generically independent (needs 2 * positions <= d), for claim L2."""
    if positions < 2 or 2 * positions > d:
        raise InputError("positions", positions, f"an integer N with 2 <= N and 2N <= d = {d}")
    spec = simple_spec(d, attention=attention)  # type: ignore[arg-type]
    weights = model_weights(rng, spec, kappa=kappa)
    data = []
    for _ in range(positions):
        X = rng.normal(size=(2, d))
        c = _last_token_attention(weights, X) + rng.normal(size=d)
        data.append((X, _mlp(weights, X[-1] + c)[None, :]))
    return make_instance(spec, weights, data, meta={"family": "l2", "N": positions})


def l2_lora_instance(rng: np.random.Generator, d: int, positions: int, *, attention: str = "encoder",
                     kappa: float = 0.5) -> Instance:
    """L2's LoRA-generated variant: `positions` examples whose last-token targets come from the model
    with W_v + alpha beta^T (rank 1), so rank-1 LoRA on W_v memorizes them exactly (2d parameters),
    while {a_1..a_N, alpha} is generically independent (needs positions + 1 <= d): every memorizing
    prompt then has length >= N (exactly; there is no robust margin, see docs/claims.md)."""
    if positions < 2 or positions + 1 > d:
        raise InputError("positions", positions, f"an integer N with 2 <= N and N + 1 <= d = {d}")
    spec = simple_spec(d, attention=attention)  # type: ignore[arg-type]
    weights = model_weights(rng, spec, kappa=kappa)
    alpha, beta = rng.normal(size=d), rng.normal(size=d) / np.sqrt(d)
    adapted = dict(weights)
    adapted["layers.0.heads.0.Wv"] = weights["layers.0.heads.0.Wv"] + np.outer(alpha, beta)
    data = []
    for _ in range(positions):
        X = rng.normal(size=(2, d))
        data.append((X, model_outputs(spec, adapted, X[None])[0][-1:]))
    return make_instance(spec, weights, data, meta={
        "family": "l2-lora", "N": positions,
        "planted": {"method": "lora", "rank": 1, "targets": "v", "alpha": alpha.tolist(), "beta": beta.tolist()}})


def lv_instance(rng: np.random.Generator, d: int, examples: int, *, planted_rank: int | None = None,
                planted_scale: bool = False, attention: str = "encoder", kappa: float = 0.5) -> Instance:
    """Claim LV: `examples` inputs of two tokens with one last-token target each. Targets are
    random (generic: the residual matrix R has rank min(d, N), so every rank below it is
    certifiable), or with `planted_rank` r they come from the model with W_v + Delta, Delta a
    hidden rank-r update: then a rank-r update of W_v memorizes them, and no rank >= r may ever be
    certified. With `planted_scale` they come from W_v's rows scaled by hidden factors
    (diag(l) W_v, IA3 on v): claim LV-scale must then never be certified."""
    spec = simple_spec(d, attention=attention)  # type: ignore[arg-type]
    weights = model_weights(rng, spec, kappa=kappa)
    adapted = dict(weights)
    if planted_rank is not None:
        B, A = rng.normal(size=(d, planted_rank)), rng.normal(size=(planted_rank, d)) / np.sqrt(d)
        adapted["layers.0.heads.0.Wv"] = weights["layers.0.heads.0.Wv"] + B @ A
    if planted_scale:
        scale = 1 + 0.5 * rng.normal(size=d)
        adapted["layers.0.heads.0.Wv"] = scale[:, None] * weights["layers.0.heads.0.Wv"]
    planted = planted_rank is not None or planted_scale
    data = []
    for _ in range(examples):
        X = rng.normal(size=(2, d))
        if not planted:
            y = _mlp(weights, X[-1] + _last_token_attention(weights, X) + rng.normal(size=d))
        else:
            y = _mlp(adapted, X[-1] + _last_token_attention(adapted, X))
        data.append((X, y[None, :]))
    meta = {"family": "planted-lv-scale" if planted_scale else "lv" if planted_rank is None else "planted-lv",
            "N": examples}
    if planted_rank is not None:
        meta["planted_rank"] = planted_rank
    return make_instance(spec, weights, data, meta=meta)
