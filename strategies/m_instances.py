"""Instance builders for claim M (prompts on invertible layers) and its ablations.

Every instance has two examples with X_1 != X_2 and Y_1 == Y_2 (a non-invertible dataset),
targets at every position, and meta["prompt_norm_bound"] = B, the bound on prompt tokens.

- invertible: small spectral norms, so every condition of M holds at B (certifiable); the
  targets are the midpoint of the two outputs under a reference prompt, so search gets close.
- fold-mlp: a residual MLP that reflects a half-space (not injective); planted prompt <= B.
- fold-attention: a prompt token switches the attention across a hyperplane, folding the
  token map; `strong` puts the fold within B (the attention condition fails at B), otherwise
  the conditions hold at B and only a prompt ten times longer than B folds (the bound matters).
- naive-encoder: two encoder layers with zero logits (uniform, exactly rational attention),
  each injective for every fixed prompt state, yet the composed map folds through the prompt
  states: out_P(X_1) == out_P(X_2) exactly for every one-token prompt.
Planted prompts are recorded under meta["planted"] (the search never reads them).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import root

from peftaudit.errors import InputError
from peftaudit.instance import Instance, make_instance
from peftaudit.models.spec import simple_spec
from peftaudit.verify.encoders.m import NORM_BOUND_KEY

from .instances import model_outputs
from .weights import generic_matrix, orthogonal



def _scaled(M: np.ndarray, norm: float) -> np.ndarray:
    """M rescaled to spectral norm `norm`."""
    return M * (norm / np.linalg.norm(M, 2))


def _tokens_in_ball(rng: np.random.Generator, n: int, d: int, radius: float) -> np.ndarray:
    X = rng.normal(size=(n, d))
    return X * (radius * rng.uniform(0.5, 1.0, size=(n, 1)) / np.linalg.norm(X, axis=1, keepdims=True))


def _contractive_mlp(rng: np.random.Generator, d: int, hidden: int, kappa: float) -> dict[str, np.ndarray]:
    """Residual MLP weights with ||W2||_2 ||W1||_2 = kappa (2-norm contraction) and small biases."""
    W1 = generic_matrix(rng, hidden, d)
    return {"W1": W1, "b1": rng.normal(size=hidden) * 0.05,
            "W2": _scaled(generic_matrix(rng, d, hidden), kappa / np.linalg.norm(W1, 2)),
            "b2": rng.normal(size=d) * 0.05}


def _layer_weights(rng: np.random.Generator, d: int, li: int, v_norm: float, a_norm: float,
                   kappa: float) -> dict[str, np.ndarray]:
    p = f"layers.{li}."
    Wq, Wk = generic_matrix(rng, d, d), generic_matrix(rng, d, d)
    Wq = Wq * (a_norm / np.linalg.norm(Wk.T @ Wq, 2))  # ||Wk^T Wq||_2 = a_norm
    out = {p + "heads.0.Wq": Wq, p + "heads.0.Wk": Wk, p + "heads.0.Wv": _scaled(generic_matrix(rng, d, d), v_norm)}
    out.update({p + k: v for k, v in _contractive_mlp(rng, d, 2 * d, kappa).items()})
    return out


def _build(spec, weights: dict[str, np.ndarray], X: list[np.ndarray], Y: np.ndarray, bound: float, family: str,
           planted: np.ndarray | None = None) -> Instance:
    meta = {"family": f"m-{family}", NORM_BOUND_KEY: bound}
    if planted is not None:
        meta["planted"] = {"method": "prompt", "length": len(planted), "prompt": planted.tolist(),
                           "norm": float(np.linalg.norm(planted, axis=1).max())}
    return make_instance(spec, {n: weights[n] for n in spec.weight_names()}, [(x, Y) for x in X], meta=meta)


def m_invertible_instance(rng: np.random.Generator, d: int, *, layers: int = 1, attention: str = "encoder",
                          tokens: int = 2, bound: float = 1.0, v_norm: float = 0.2, a_norm: float = 0.1,
                          kappa: float = 0.3) -> Instance:
    """With the default norms every M condition holds at `bound` by construction (||V|| = v_norm,
    ||Wk^T Wq|| = a_norm, ||W2|| ||W1|| = kappa); targets are the outputs' midpoint."""
    if d < 1 or layers < 1 or tokens < 1:
        raise InputError("m instance", (d, layers, tokens), "positive d, layers and tokens")
    spec = simple_spec(d, layers=layers, attention=attention)
    weights: dict[str, np.ndarray] = {}
    for li in range(layers):
        weights.update(_layer_weights(rng, d, li, v_norm=v_norm, a_norm=a_norm, kappa=kappa))
    X = [_tokens_in_ball(rng, tokens, d, 0.9) for _ in range(2)]
    reference = _tokens_in_ball(rng, 1, d, bound)
    out = model_outputs(spec, weights, np.stack(X), reference)
    return _build(spec, weights, X, (out[0] + out[1]) / 2, bound, "invertible")


def _single_token_attention(weights: dict[str, np.ndarray], x: np.ndarray, prompt: np.ndarray) -> np.ndarray:
    """Att(x, [prompt, x]) of the single head of layer 0 (float)."""
    p = "layers.0.heads.0."
    Z = np.vstack([prompt, x[None]])
    logits = Z @ weights[p + "Wk"].T @ (weights[p + "Wq"] @ x)
    s = np.exp(logits - logits.max())
    return weights[p + "Wv"] @ Z.T @ (s / s.sum())


def _preimage(weights: dict[str, np.ndarray], prompt: np.ndarray, h: np.ndarray, start: np.ndarray) -> np.ndarray:
    """x with x + Att(x, [prompt, x]) = h, by a root finder from `start` (checked by the caller)."""
    sol = root(lambda x: x + _single_token_attention(weights, x, prompt) - h, start, method="hybr", tol=1e-15)
    return sol.x


def _finish_single_token(spec, weights, prompt, x1, x2, bound, family) -> Instance:
    if not np.linalg.norm(x1 - x2) > 1e-3:
        raise RuntimeError(f"{family}: the planted inputs coincide")
    out = model_outputs(spec, weights, np.stack([x1[None], x2[None]]), prompt)
    if np.abs(out[0] - out[1]).max() > 1e-10:
        raise RuntimeError(f"{family}: planted outputs differ by {np.abs(out[0] - out[1]).max():.3g}")
    return _build(spec, weights, [x1[None], x2[None]], out[0], bound, family, planted=prompt)


def m_fold_mlp_instance(rng: np.random.Generator, d: int, *, bound: float = 1.0) -> Instance:
    """Weak attention (its condition holds at `bound`), but the residual MLP reflects the half-space
    e.z > 0 (z - 2 e relu(e.z)): not injective. A planted prompt within the bound memorizes."""
    if d < 1:
        raise InputError("d", d, "a positive integer")
    spec = simple_spec(d)
    weights = _layer_weights(rng, d, 0, v_norm=0.2, a_norm=0.1, kappa=0.3)
    prompt = _tokens_in_ball(rng, 1, d, bound)
    x1 = _tokens_in_ball(rng, 1, d, 0.9)[0]
    h1 = x1 + _single_token_attention(weights, x1, prompt)
    e = rng.normal(size=d)
    e /= np.linalg.norm(e)
    e = e if e @ h1 > 0 else -e
    if e @ h1 < 0.2 * np.linalg.norm(h1):  # keep the reflection well away from the fold's hinge
        e = h1 / np.linalg.norm(h1)
    W1, W2 = np.zeros((2 * d, d)), np.zeros((d, 2 * d))
    W1[0], W2[:, 0] = e, -2 * e
    weights.update({"layers.0.W1": W1, "layers.0.b1": np.zeros(2 * d), "layers.0.W2": W2,
                    "layers.0.b2": np.zeros(d)})
    h2 = h1 - 2 * (e @ h1) * e  # MLP(h2) = h2 = MLP(h1)
    x2 = _preimage(weights, prompt, h2, h2)
    return _finish_single_token(spec, weights, prompt, x1, x2, bound, "fold-mlp")


def m_fold_attention_instance(rng: np.random.Generator, d: int, *, strong: bool = False) -> Instance:
    """A prompt token p = B0 q1 switches attention across the hyperplane q2.x = 0 (A = a (q2 q1^T -
    q1 q2^T), so x^T A x = 0 and the prompt's logit is -a B0 q2.x), and V p = v B0 q2 jumps the output:
    along q2 the token map is y + v B0 sigmoid(-a B0 y), which folds when v a B0^2 > 4.

    strong=False: v = 1/4, a = 1, B0 = 5, bound B = 1/2: M's conditions hold at B (alpha ~ 0.55),
    only the ten-times-longer prompt folds. strong=True: a = 40, B0 = 0.8 < B = 1: the fold is within B."""
    if d < 2:
        raise InputError("d", d, "an integer >= 2 (the fold needs a plane)")
    v, a, B0, bound = (0.25, 40.0, 0.8, 1.0) if strong else (0.25, 1.0, 5.0, 0.5)
    spec = simple_spec(d)
    Q = orthogonal(rng, d)
    q1, q2 = Q[:, 0], Q[:, 1]
    weights = {"layers.0.heads.0.Wq": a * (np.outer(q2, q1) - np.outer(q1, q2)), "layers.0.heads.0.Wk": np.eye(d),
               "layers.0.heads.0.Wv": v * np.outer(q2, q1)}
    weights.update({f"layers.0.{k}": w for k, w in _contractive_mlp(rng, d, 2 * d, 0.3).items()})
    prompt = (B0 * q1)[None]
    scale = 1.0 / (a * B0)                     # the fold's width along q2
    g = lambda y: y + v * B0 / (1 + np.exp(a * B0 * y))  # noqa: E731  (the map along q2)
    level = (g(-1.1 * scale * np.log(4)) + g(1.1 * scale * np.log(4))) / 2  # between the fold's extrema
    ys = [y for y in np.linspace(-6 * scale, 6 * scale, 4001)]
    roots = [ys[i] for i in range(len(ys) - 1) if (g(ys[i]) - level) * (g(ys[i + 1]) - level) <= 0]
    rest = rng.normal(size=d) * 0.1
    rest -= (rest @ q1) * q1 + (rest @ q2) * q2
    x1 = roots[0] * q2 + rest
    h1 = x1 + _single_token_attention(weights, x1, prompt)
    x2 = _preimage(weights, prompt, h1, roots[-1] * q2 + rest)
    family = "fold-attention-strong" if strong else "fold-attention"
    return _finish_single_token(spec, weights, prompt, x1, x2, bound, family)


def _dyadic(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    """Normal draws rounded to multiples of 1/8: exact in binary64 and closed under the products below."""
    return np.round(rng.normal(size=shape) * scale * 8) / 8


def m_naive_encoder_instance(rng: np.random.Generator, d: int, *, bound: float = 1.0) -> Instance:
    """Two encoder layers, W_q = 0 (uniform attention), MLP branches zero (kappa = 0).

    With one prompt token p and one input token x, all tokens of a layer receive V mean, so
    out(x) = x + K (p + x) / 2 + const, K = V1 + V2 + V2 V1. V2 is built so that (I + K/2) e = 0
    exactly (dyadic arithmetic): out(x + e/2) = out(x) for every one-token prompt, while each
    layer alone, for every fixed prompt state of any length, is injective (checked exactly)."""
    if d < 2:
        raise InputError("d", d, "an integer >= 2 (in d = 1 the construction breaks layer 2 alone)")
    spec = simple_spec(d, layers=2)
    I = np.eye(d)
    for _ in range(100):
        V1 = _dyadic(rng, (d, d), 0.5)
        V1[0, 0] = 0.0                          # u_1 = 1, so no division below
        u = (I + V1)[:, 0]                      # (I + V1) e_1
        t = -2 * I[:, 0] - V1[:, 0]             # V2 u must equal -(e_1 + V1 e_1 / 2) / (1/2)
        M = _dyadic(rng, (d, d), 0.5)
        V2 = np.outer(t, I[0]) + M @ (I - np.outer(u, I[0]))
        K = V1 + V2 + V2 @ V1
        if abs(np.linalg.det(K)) > 1e-3:        # the prompt can then reach any target
            break
    weights: dict[str, np.ndarray] = {}
    for li, V in enumerate((V1, V2)):
        p = f"layers.{li}."
        weights.update({p + "heads.0.Wq": np.zeros((d, d)), p + "heads.0.Wk": _dyadic(rng, (d, d), 0.5),
                        p + "heads.0.Wv": V, p + "W1": _dyadic(rng, (2 * d, d), 0.5), p + "b1": np.zeros(2 * d),
                        p + "W2": np.zeros((d, 2 * d)), p + "b2": _dyadic(rng, d, 0.2)})
    prompt = _dyadic(rng, (1, d), 0.3)
    while np.linalg.norm(prompt) > bound:
        prompt = prompt / 2
    x1 = _dyadic(rng, (1, d), 0.5)
    x2 = x1 + 0.5 * I[0]
    out = model_outputs(spec, weights, np.stack([x1, x2]), prompt)
    return _build(spec, weights, [x1, x2], out[0], bound, "naive-encoder", planted=prompt)
