"""Claim U's transformer g, rebuilt by the checker from its documented parameters alone.

Universality says one g serves every target f: only the prompt may depend on f. A witness whose g
was built for its target (say, the table stored in g's own weights) proves an approximation, not
universality. So the checker rebuilds g from (d, m, K, gamma, beta) as docs/claims.md "Claim U"
documents it, in Fractions and without the constructor's code, and refuses a witness whose model
differs in any weight; the SHA-256 of g's canonical encoding is then one digest per configuration,
shared by every target (the report prints it).

Channels of width D = 2d + m + 5: x (d) | position one-hot (m) | code | id | key a, b, a^2 + b^2 | out (d).
    layer 0  attention off; MLP: per (position j, coordinate k, threshold i/K) the ramp pair
             relu(s x_k + g pos_j + 1 - s i/K - g) - relu(s x_k + g pos_j - s i/K - g),
             s = 1/gamma, g = s + 2, written into code with weight K^(j d + k)
    layer 1  uniform attention (W_q = W_k = 0): id += n * mean(code), n = m K^(d m) + m; MLP off
    layer 2  W_q rows (id), (sum_j (j+1) pos_j), (sum_j pos_j); W_k rows 2 beta a, 2 beta b,
             -beta (a^2 + b^2); W_v copies x, W_o writes it to out; MLP: relu(z + 1) per channel,
             then x <- out and every other channel <- 0
    positional: position j's one-hot.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction

from .instance import Instance

F0, F1 = Fraction(0), Fraction(1)


def _zeros(rows: int, cols: int) -> list[list[Fraction]]:
    return [[F0] * cols for _ in range(rows)]


def expected_model(d: int, m: int, K: int, gamma: Fraction, beta: Fraction) -> dict:
    """Every weight of g for this configuration, by its functional name."""
    D = 2 * d + m + 5
    pos, code, ident, key, out = d, d + m, d + m + 1, d + m + 2, d + m + 5
    n = m * K ** (d * m) + m
    hidden = 2 * m * d * (K - 1)
    w = {"layers.0.W1": _zeros(hidden, D), "layers.0.b1": [F0] * hidden, "layers.0.W2": _zeros(D, hidden),
         "layers.0.b2": [F0] * D}
    slope = 1 / gamma
    gate = slope + 2
    unit = 0
    for j in range(m):
        for k in range(d):
            for i in range(1, K):
                for offset, sign in ((F1, F1), (F0, -F1)):
                    w["layers.0.W1"][unit][k] = slope
                    w["layers.0.W1"][unit][pos + j] = gate
                    w["layers.0.b1"][unit] = offset - Fraction(i, K) * slope - gate
                    w["layers.0.W2"][code][unit] = sign * K ** (j * d + k)
                    unit += 1
    heads = {0: dict(Wq=_zeros(1, D), Wk=_zeros(1, D), Wv=_zeros(1, D), Wo=_zeros(D, 1)),
             1: dict(Wq=_zeros(1, D), Wk=_zeros(1, D), Wv=_zeros(1, D), Wo=_zeros(D, 1)),
             2: dict(Wq=_zeros(3, D), Wk=_zeros(3, D), Wv=_zeros(d, D), Wo=_zeros(D, d))}
    heads[1]["Wv"][0][code] = Fraction(n)
    heads[1]["Wo"][ident][0] = F1
    h = heads[2]
    h["Wq"][0][ident] = F1
    for j in range(m):
        h["Wq"][1][pos + j] = Fraction(j + 1)
        h["Wq"][2][pos + j] = F1
    h["Wk"][0][key], h["Wk"][1][key + 1], h["Wk"][2][key + 2] = 2 * beta, 2 * beta, -beta
    for k in range(d):
        h["Wv"][k][k] = F1
        h["Wo"][out + k][k] = F1
    for li, head in heads.items():
        for name, M in head.items():
            w[f"layers.{li}.heads.0.{name}"] = M
    w["layers.1.W1"], w["layers.1.b1"], w["layers.1.W2"], w["layers.1.b2"] = _zeros(1, D), [F0], _zeros(D, 1), [F0] * D
    W1 = _zeros(D, D)
    W2 = _zeros(D, D)
    for c in range(D):
        W1[c][c], W2[c][c] = F1, -F1
    b2 = [F1] * D
    for k in range(d):
        W2[k][out + k], b2[k] = F1, F0
    w["layers.2.W1"], w["layers.2.b1"], w["layers.2.W2"], w["layers.2.b2"] = W1, [F1] * D, W2, b2
    positional = _zeros(m, D)
    for j in range(m):
        positional[j][pos + j] = F1
    w["positional"] = positional
    return w


def _actual(inst: Instance) -> dict:
    w = {}
    for li, layer in enumerate(inst.layers):
        for hi, head in enumerate(layer.heads):
            for name in ("Wq", "Wk", "Wv", "Wo"):
                w[f"layers.{li}.heads.{hi}.{name}"] = getattr(head, name)
        for name in ("W1", "b1", "W2", "b2"):
            w[f"layers.{li}.{name}"] = getattr(layer, name)
    w["positional"] = inst.positional
    return w


def construction_mismatch(inst: Instance, d: int, m: int, K: int, gamma: Fraction, beta: Fraction) -> str | None:
    """None when the instance's model is exactly g for this configuration; else the first
    difference (a weight's shape or entry)."""
    if inst.attention != "encoder" or inst.layernorm or inst.mlp != "residual" or inst.d != 2 * d + m + 5:
        return "the model is not g's kind (encoder, residual MLPs, no layer norm, width 2d + m + 5)"
    if len(inst.layers) != 3 or any(len(layer.heads) != 1 for layer in inst.layers):
        return f"g has 3 layers of one head; the model has {len(inst.layers)} layer(s)"
    want, have = expected_model(d, m, K, gamma, beta), _actual(inst)
    if set(want) != set(have):
        return f"the model's weights {sorted(set(have) ^ set(want))[:3]} differ from g's"
    for name, W in want.items():
        H = have[name]
        if H is None or len(H) != len(W) or (W and isinstance(W[0], list) and any(len(r) != len(W[0]) for r in H)):
            return f"{name} does not have g's shape"
        rows = W if isinstance(W[0], list) else [W]
        got = H if isinstance(W[0], list) else [H]
        for r, (a, b) in enumerate(zip(rows, got)):
            if a != b:
                c = next(c for c, (x, y) in enumerate(zip(a, b)) if x != y)
                return f"{name}[{r}][{c}] is {float(b[c])!r}, g's is {float(a[c])!r} (the model is not the " \
                       f"target-independent g of d={d}, m={m}, K={K}, gamma={float(gamma)!r}, beta={float(beta)!r})"
    return None


def model_digest(inst: Instance) -> str:
    """SHA-256 of g alone (every weight, exact rationals as 'p/q'), shared by every target of a
    configuration."""
    doc = {name: [[f"{x.numerator}/{x.denominator}" for x in row] for row in (W if W and isinstance(W[0], list) else [W])]
           for name, W in sorted(_actual(inst).items()) if W is not None}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
