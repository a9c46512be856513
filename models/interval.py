"""A rigorous enclosure of the exact model's outputs, with mpmath interval arithmetic.

The model is defined in exact real arithmetic over the instance's binary64 numbers; float64 is
an approximation of it. This evaluates the same forward as models/transformer.py (attention
with optional prefix keys and values, the MLP, positional encoding, layer norm) on intervals
(`mpmath.iv`, outward rounding at PRECISION bits), so each output coordinate of the exact model
lies in the returned interval. A replay that decides a verdict uses the upper end of the
enclosed max error (`max_error_enclosure`), never the float64 figure alone.

Adapters enter as the exact model defines them: prompt tokens prepended, prefix keys/values per
layer, low-rank updates W + s B A and full updates W + D, then (for module methods such as DoRA
and IA3) row normalisation to a magnitude and row or column scaling, all computed in intervals
(never rounded).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Mapping

import numpy as np
from mpmath import iv

from .spec import ModelSpec
from .transformer import LAYERNORM_EPS

PRECISION = 96   # bits of the interval endpoints: far beyond float64, cheap enough in Python

IVec = list
IMat = list


@dataclass(frozen=True)
class ExactAdapter:
    """How an adapter enters the exact model (every field optional). Weight updates apply in this
    order: W + s B A (low_rank, s = 1 when left out), + D (delta), rows rescaled to the norms m
    (row_norm: W_i <- m_i W_i / |W_i|, DoRA), then diag(r) W (row_scale; for a bias, r * b) and
    W diag(c) (col_scale)."""
    prompt: np.ndarray | None = None                                     # (m_p, d), prepended
    prefix: Mapping[str, np.ndarray] = field(default_factory=dict)      # layer/head keys as in the forward
    low_rank: Mapping[str, tuple] = field(default_factory=dict)         # name -> (B, A) or (B, A, s)
    delta: Mapping[str, np.ndarray] = field(default_factory=dict)       # name -> D, W + D
    row_norm: Mapping[str, np.ndarray] = field(default_factory=dict)    # name -> m (rows,)
    row_scale: Mapping[str, np.ndarray] = field(default_factory=dict)   # name -> r (rows,)
    col_scale: Mapping[str, np.ndarray] = field(default_factory=dict)   # name -> c (cols,)
    kron: Mapping[str, tuple] = field(default_factory=dict)             # name -> (factors1, factors2, s)


@contextmanager
def _precision(bits: int) -> Iterator[None]:
    """Work at `bits` in mpmath's (global) interval context, then restore what was there."""
    old = iv.prec
    iv.prec = bits
    try:
        yield
    finally:
        iv.prec = old


def ends(x) -> tuple[Fraction, Fraction]:
    """The exact rational endpoints of an mpmath interval."""
    def frac(raw: tuple) -> Fraction:
        sign, man, exp, _ = raw
        value = Fraction(man) * (Fraction(2) ** exp)
        return -value if sign else value
    lo, hi = x._mpi_
    return frac(lo), frac(hi)


def _rational(x: Fraction):
    """An interval enclosing a rational."""
    return iv.mpf(x.numerator) / iv.mpf(x.denominator)


def _iv(x: float):
    return iv.mpf(float(x))  # a binary64 value is exact at PRECISION >= 53


def _imat(a: np.ndarray) -> IMat:
    return [[_iv(x) for x in row] for row in np.atleast_2d(np.asarray(a, dtype=np.float64))]


def _matvec(M: IMat, x: IVec) -> IVec:
    return [iv.fsum(m * xi for m, xi in zip(row, x)) for row in M]


def _matmul(A: IMat, B: IMat) -> IMat:
    cols = list(zip(*B))
    return [[iv.fsum(a * b for a, b in zip(row, col)) for col in cols] for row in A]


def _add(A: IMat, B: IMat) -> IMat:
    return [[a + b for a, b in zip(r, s)] for r, s in zip(A, B)]


EXP_CAP = 10_000  # exp arguments beyond +-EXP_CAP are bounded by monotonicity, never evaluated


LONG_ROW = 32  # rows longer than this use the enclosure whose cost is linear in the row


def _softmax(logits: IVec) -> IVec:
    """Enclosure of softmax: w_j = 1 / sum_k exp(l_k - l_j), each exp enclosed (quadratic in the
    row; a longer row than LONG_ROW takes _softmax_linear).

    Differences far outside [-EXP_CAP, EXP_CAP] are bounded by monotonicity, so a huge logit costs
    nothing: a term with argument below -EXP_CAP lies in [0, exp(-EXP_CAP)], and a term whose
    argument may exceed EXP_CAP makes w_j <= 1 / exp(lower end), w_j >= 0."""
    if len(logits) > LONG_ROW:
        return _softmax_linear(logits)
    cap = iv.mpf(EXP_CAP)
    tiny = iv.exp(-cap).b
    out = []
    for lj in logits:
        terms, unbounded_below = [], None
        for lk in logits:
            if lk is lj:  # exp(l_j - l_j) = 1 exactly (interval subtraction would widen it)
                terms.append(iv.mpf(1))
                continue
            arg = lk - lj
            lo, hi = ends(arg)
            if hi > EXP_CAP:
                unbounded_below = min(lo, unbounded_below) if unbounded_below is not None else lo
            else:
                terms.append(_capped_exp(arg, lo, hi, tiny))
        if unbounded_below is not None and unbounded_below <= 0:  # a weight is always in [0, 1]
            out.append(iv.mpf([0, 1]))
        elif unbounded_below is not None:  # the sum is at least exp(lo) of that term
            floor = iv.exp(_rational(min(unbounded_below, Fraction(EXP_CAP)))).a
            out.append(iv.mpf([0, (1 / floor).b]))
        else:
            out.append(1 / iv.fsum(terms))
    return out


def _capped_exp(arg, lo: Fraction, hi: Fraction, tiny):
    """exp(arg) enclosed, an argument that may lie below -EXP_CAP bounded by monotonicity (never
    evaluated there): [0, exp(-EXP_CAP)] wholly below, [0, exp(hi)] partly."""
    if hi < -EXP_CAP:
        return iv.mpf([0, tiny])
    if lo < -EXP_CAP:
        return iv.mpf([0, iv.exp(_rational(hi)).b])
    return iv.exp(arg)


def _softmax_linear(logits: IVec) -> IVec:
    """Enclosure of softmax as e_j / sum_k e_k with e_k = exp(l_k - M), M the largest upper end: one
    exp per entry (at the working precision the shared e_j widens the quotient negligibly). An
    argument below -EXP_CAP is bounded by [0, exp(-EXP_CAP)]; none exceeds 0 by more than a
    logit's own width, and the largest term's lower end keeps the sum away from 0."""
    M = max(ends(lk)[1] for lk in logits)
    tiny = iv.exp(-iv.mpf(EXP_CAP)).b
    terms = []
    for lk in logits:
        arg = lk - _rational(M)
        terms.append(_capped_exp(arg, *ends(arg), tiny))
    total = iv.fsum(terms)
    if ends(total)[0] <= 0:  # cannot happen (the term at M is >= exp(-width)); stay sound anyway
        return [iv.mpf([0, 1]) for _ in logits]
    return [t / total for t in terms]


def _relu(x):
    lo, hi = ends(x)
    if lo >= 0:
        return x
    if hi <= 0:
        return iv.mpf(0)
    return iv.mpf([0, x.b])


def _layernorm(h: IVec) -> IVec:
    n = len(h)
    mean = iv.fsum(h) / n
    centred = [x - mean for x in h]
    var = iv.fsum(c * c for c in centred) / n
    scale = 1 / iv.sqrt(var + iv.mpf(LAYERNORM_EPS))
    return [c * scale for c in centred]


def _weights(spec: ModelSpec, weights: Mapping[str, np.ndarray], adapter: ExactAdapter) -> dict[str, IMat]:
    W = {}
    for name, w in weights.items():
        W[name] = _imat(w) if np.ndim(w) == 2 else [_iv(x) for x in np.asarray(w, dtype=np.float64)]
    for name, (B, A, *scale) in adapter.low_rank.items():
        update = _matmul(_imat(B), _imat(A))
        if scale:
            s = _iv(scale[0])
            update = [[s * u for u in row] for row in update]
        W[name] = _add(W[name], update)
    for name, D in adapter.delta.items():
        W[name] = _add(W[name], _imat(D)) if np.ndim(D) == 2 else [w + _iv(x) for w, x in zip(W[name], D)]
    for name, (first, second, s) in adapter.kron.items():
        A, B = _product(first), _product(second)
        scale = _iv(s)
        W[name] = _add(W[name], [[scale * a * b for a in row_a for b in row_b] for row_a in A for row_b in B])
    for name, m in adapter.row_norm.items():
        W[name] = [[_iv(mi) * w / iv.sqrt(iv.fsum(x * x for x in row)) for w in row]
                   for mi, row in zip(np.asarray(m, dtype=np.float64).reshape(-1), W[name])]
    for name, r in adapter.row_scale.items():
        r = np.asarray(r, dtype=np.float64).reshape(-1)
        W[name] = [[_iv(ri) * w for w in row] for ri, row in zip(r, W[name])] if isinstance(W[name][0], list) \
            else [_iv(ri) * w for ri, w in zip(r, W[name])]
    for name, c in adapter.col_scale.items():
        c = [_iv(x) for x in np.asarray(c, dtype=np.float64).reshape(-1)]
        W[name] = [[w * cj for w, cj in zip(row, c)] for row in W[name]]
    return W


def _product(factors) -> IMat:
    """The interval product of a list of matrices."""
    out = _imat(factors[0])
    for f in factors[1:]:
        out = _matmul(out, _imat(f))
    return out


def enclose_outputs(spec: ModelSpec, weights: Mapping[str, np.ndarray], X: np.ndarray,
                    adapter: ExactAdapter = ExactAdapter(), keep: int | None = None) -> list[IVec]:
    """Intervals enclosing the exact model's final states of the n input positions of X (n, d), or
    with `keep` of the last `keep` positions only (the last layer then computes no other position:
    its softmax costs the square of the tokens per position, so a long prompt stays cheap)."""
    with _precision(PRECISION):
        W = _weights(spec, weights, adapter)
        tokens = [[_iv(x) for x in row] for row in X]
        if spec.positions:
            tokens = [[a + b for a, b in zip(tok, W["positional"][i])] for i, tok in enumerate(tokens)]
        m_p = 0
        if adapter.prompt is not None:
            prompt = [[_iv(x) for x in row] for row in adapter.prompt]
            m_p = len(prompt)
            tokens = prompt + tokens
        last = len(spec.layers) - 1
        for li, layer in enumerate(spec.layers):
            first = len(tokens) - keep if keep is not None and li == last else 0  # positions computed
            heads = []
            for hi, head in enumerate(layer.heads):
                p = f"layers.{li}.heads.{hi}."
                keys = [_matvec(W[p + "Wk"], z) for z in tokens]
                values = [_matvec(W[p + "Wv"], z) for z in tokens]
                pk, pv = _prefix(adapter, W, li, hi)
                heads.append((p, head.has_wo, pk, pv, keys, values))
            new_tokens = []
            for t, query in enumerate(tokens[first:], start=first):
                att = [iv.mpf(0)] * spec.d
                for p, has_wo, pk, pv, keys, values in heads:
                    visible = slice(None) if spec.attention == "encoder" else slice(0, t + 1)
                    ks, vs = pk + keys[visible], pv + values[visible]
                    q = _matvec(W[p + "Wq"], query)
                    s = _softmax([iv.fsum(a * b for a, b in zip(k, q)) for k in ks])
                    mix = [iv.fsum(si * v[j] for si, v in zip(s, vs)) for j in range(len(vs[0]))]
                    out = _matvec(W[p + "Wo"], mix) if has_wo else mix
                    att = [a + b for a, b in zip(att, out)]
                h = [a + b for a, b in zip(query, att)]
                if spec.layernorm:
                    h = _layernorm(h)
                new_tokens.append(_mlp(spec, W, li, h))
            tokens = new_tokens
        return tokens if keep is not None else tokens[m_p:]


def _prefix(adapter: ExactAdapter, W: Mapping[str, IMat], layer: int, head: int) -> tuple[list, list]:
    """Prefix keys and values of one head: free vectors, or states through Wk and Wv."""
    p = f"layers.{layer}.heads.{head}."
    if p + "K" in adapter.prefix:
        return ([[_iv(x) for x in row] for row in adapter.prefix[p + "K"]],
                [[_iv(x) for x in row] for row in adapter.prefix[p + "V"]])
    states = adapter.prefix.get(f"layers.{layer}.states")
    if states is None:
        return [], []
    S = [[_iv(x) for x in row] for row in states]
    return [_matvec(W[p + "Wk"], s) for s in S], [_matvec(W[p + "Wv"], s) for s in S]


def _mlp(spec: ModelSpec, W: Mapping[str, IMat], layer: int, h: IVec) -> IVec:
    p = f"layers.{layer}."
    hidden = [_relu(a + b) for a, b in zip(_matvec(W[p + "W1"], h), W[p + "b1"])]
    branch = [a + b for a, b in zip(_matvec(W[p + "W2"], hidden), W[p + "b2"])]
    return [a + b for a, b in zip(h, branch)] if spec.mlp == "residual" else branch


def max_error_enclosure(spec: ModelSpec, weights: Mapping[str, np.ndarray], X: np.ndarray, Y: np.ndarray,
                        adapter: ExactAdapter = ExactAdapter()) -> tuple[float, float]:
    """(lo, hi) floats with lo <= max |out(X)[last k] - Y| <= hi for the exact model (outward rounded)."""
    with _precision(PRECISION):
        outs = enclose_outputs(spec, weights, X, adapter, keep=len(Y))
        lo = hi = Fraction(0)
        for row, target in zip(outs, Y):
            for o, y in zip(row, target):
                a, b = ends(o - _iv(y))
                lo = max(lo, Fraction(0) if a <= 0 <= b else min(abs(a), abs(b)))
                hi = max(hi, abs(a), abs(b))
    return round_down(lo), round_up(hi)


def round_up(x: Fraction) -> float:
    """The least float >= x."""
    f = float(x)
    return f if Fraction(f) >= x else float(np.nextafter(f, np.inf))


def round_down(x: Fraction) -> float:
    """The greatest float <= x."""
    f = float(x)
    return f if Fraction(f) <= x else float(np.nextafter(f, -np.inf))
