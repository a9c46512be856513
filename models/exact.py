"""An independent evaluation of the transformer, one token at a time on plain Python numbers.

With `exact=True` every weight becomes the exact rational Fraction(float(w)) and the result is
exact; this needs each query's logits to be all equal (e.g. zero logits), where the softmax is
uniform and rational, and no layer norm. With `exact=False` it is a plain float loop using
math.exp: a second, vectorization-free implementation to test the torch forward against.
It shares no code with models/transformer.py on purpose.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np

from peftaudit.errors import InputError
from .spec import ModelSpec

Vec = list


def _num(x: float, exact: bool):
    return Fraction(float(x)) if exact else float(x)


def _mat(a: np.ndarray, exact: bool) -> list:
    return [[_num(x, exact) for x in row] for row in np.atleast_2d(a)]


def _matvec(M: list, x: Vec) -> Vec:
    return [sum((m * xi for m, xi in zip(row, x)), start=0 * x[0]) for row in M]


def _softmax(logits: Vec, exact: bool) -> Vec:
    if exact:
        if any(l != logits[0] for l in logits):
            raise InputError("exact evaluation", "unequal logits", "equal logits in every query (e.g. zero logits)")
        return [Fraction(1, len(logits))] * len(logits)
    top = max(logits)
    e = [math.exp(l - top) for l in logits]
    s = sum(e)
    return [v / s for v in e]


def evaluate(spec: ModelSpec, weights: Mapping[str, np.ndarray], X: np.ndarray,
             prompt: np.ndarray | None = None, *, exact: bool = False) -> list[Vec]:
    """Final states of the input positions of one example X (n, d), as a list of n token lists."""
    if exact and spec.layernorm:
        raise InputError("exact evaluation", "layernorm", "a model without layer norm")
    W = {name: (_mat(w, exact) if np.ndim(w) == 2 else [_num(x, exact) for x in w]) for name, w in weights.items()}
    tokens = [[_num(x, exact) for x in row] for row in X]
    if spec.positions:
        tokens = [[a + b for a, b in zip(tok, W["positional"][i])] for i, tok in enumerate(tokens)]
    m_p = 0
    if prompt is not None:
        m_p = len(prompt)
        tokens = [[_num(x, exact) for x in row] for row in prompt] + tokens
    for li, layer in enumerate(spec.layers):
        new_tokens = []
        for t, query in enumerate(tokens):
            visible = tokens if spec.attention == "encoder" else tokens[: t + 1]
            att = [0 * query[0]] * spec.d
            for hi, head in enumerate(layer.heads):
                p = f"layers.{li}.heads.{hi}."
                q = _matvec(W[p + "Wq"], query)
                logits = [sum(a * b for a, b in zip(_matvec(W[p + "Wk"], z), q)) for z in visible]
                s = _softmax(logits, exact)
                mix = [sum(si * zi[j] for si, zi in zip(s, visible)) for j in range(spec.d)]
                value = _matvec(W[p + "Wv"], mix)
                if head.has_wo:
                    value = _matvec(W[p + "Wo"], value)
                att = [a + b for a, b in zip(att, value)]
            h = [a + b for a, b in zip(query, att)]
            if spec.layernorm:
                mean = sum(h) / len(h)
                var = sum((x - mean) ** 2 for x in h) / len(h)
                h = [(x - mean) / math.sqrt(var + 1e-5) for x in h]
            new_tokens.append(mlp_token(spec, W, li, h))
        tokens = new_tokens
    return tokens[m_p:]


def mlp_token(spec: ModelSpec, W: Mapping[str, list], layer: int, h: Vec) -> Vec:
    """MLP of one token on Python numbers: W2 relu(W1 h + b1) + b2 (+ h when residual)."""
    p = f"layers.{layer}."
    pre = [a + b for a, b in zip(_matvec(W[p + "W1"], h), W[p + "b1"])]
    hidden = [a if a > 0 else 0 * a for a in pre]
    branch = [a + b for a, b in zip(_matvec(W[p + "W2"], hidden), W[p + "b2"])]
    return [a + b for a, b in zip(h, branch)] if spec.mlp == "residual" else branch


def max_abs_error(outputs: Sequence[Vec], targets: np.ndarray) -> Fraction | float:
    """Max norm of outputs (last k rows) minus targets (k, d)."""
    k = len(targets)
    rows = outputs[len(outputs) - k:]
    exact = isinstance(rows[0][0], Fraction)
    return max(abs(o - _num(y, exact)) for row, trow in zip(rows, targets) for o, y in zip(row, trow))
