"""Independent checkers of claim P1 (prefix tuning only biases attention) and its over-general form.

P1 certificates. (1) The identity, for every size the instance uses: with positive variables e_p
(prefix exps), f_j (content exps), values u_p, w_j (one coordinate; the identity is linear in
values), P = sum e_p, S = sum f_j, S' = P + S:

    f_j / S'  =  (f_j / S)(1 - P / S')                 i.e.  f_j S  ==  f_j (S' - P)
    (sum e u + sum f w) / S'  =  sum e u / S' + (1 - P / S') sum f w / S
                                 i.e.  (sum e u + sum f w) S  ==  (sum e u) S + (S' - P) sum f w

as polynomial identities, checked by expanding both sides exactly (denominators are positive).
The checker expands them for m prefix positions and every content count t = 1..n (a causal query
sees t <= n content positions). (2) The limitation: prefix values do not depend on the input —
by definition for "prefix-kv" (free keys and values) and "prefix" (free states through W_k, W_v),
and for "prompt" only under a causal mask (prompt positions never attend to inputs), which the
checker reads from the instance; a soft prompt in encoder mode is refused.

P1-encoder witnesses (the over-general statement "soft prompts contribute input-independent values
at every layer, in encoder mode"): a prompt, two inputs and a margin; the checker encloses the
layer-2 prompt values V_2 z_p for both inputs (exact where layer 1's logits are constant, else
with the exp enclosures of exact.py) and requires two enclosures to be more than the margin apart.
"""

from __future__ import annotations

from fractions import Fraction
from .exact import attention_box, get, head_logits, interval_matvec
from .instance import Instance, Layer
from .reading import MalformedCertificate, binary64, rational
from .result import CheckResult

METHODS = ("prompt", "prefix", "prefix-kv")
MAX_SIZE = 64


def _poly_mul(a: dict, b: dict) -> dict:
    out: dict = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = tuple(sorted(ma + mb))
            out[m] = out.get(m, 0) + ca * cb
    return {m: c for m, c in out.items() if c}


def _poly_add(*ps: dict, sign: int = 1) -> dict:
    out: dict = {}
    for i, p in enumerate(ps):
        for m, c in p.items():
            out[m] = out.get(m, 0) + (c if i == 0 or sign > 0 else -c)
    return {m: c for m, c in out.items() if c}


def _sum(names) -> dict:
    return {(n,): 1 for n in names}


def identity_holds(m: int, t: int) -> bool:
    """Both P1 identities as polynomial identities for m prefix and t content positions."""
    e, f = [f"e{i}" for i in range(m)], [f"f{j}" for j in range(t)]
    P, S = _sum(e), _sum(f)
    S_full = _poly_add(P, S)
    S_full_minus_P = _poly_add(S_full, P, sign=-1)
    eu = {tuple(sorted((ei, f"u{i}"))): 1 for i, ei in enumerate(e)}
    fw = {tuple(sorted((fj, f"w{j}"))): 1 for j, fj in enumerate(f)}
    for fj in f:
        if _poly_add(_poly_mul({(fj,): 1}, S), _poly_mul({(fj,): 1}, S_full_minus_P), sign=-1):
            return False
    lhs = _poly_mul(_poly_add(eu, fw), S)
    rhs = _poly_add(_poly_mul(eu, S), _poly_mul(S_full_minus_P, fw))
    return not _poly_add(lhs, rhs, sign=-1)


def check_p1(cert: dict, inst: Instance) -> CheckResult:
    method, m = get(cert, "method", "certificate"), get(cert, "prefix_length", "certificate")
    if method not in METHODS:
        raise MalformedCertificate(f"method: expected one of {', '.join(METHODS)}")
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_SIZE:
        raise MalformedCertificate(f"prefix_length: expected an integer in 1..{MAX_SIZE}")
    n = len(inst.dataset[0][0])
    if n > MAX_SIZE:
        return CheckResult(False, f"{n} content positions exceed the identity check's limit {MAX_SIZE}")
    for t in range(1, n + 1):
        if not identity_holds(m, t):
            return CheckResult(False, f"the identity fails to expand to zero at m = {m}, t = {t}")
    if method == "prompt" and inst.attention != "causal":
        return CheckResult(False, "a soft prompt in encoder mode: after layer 1 its states attend to the input, so "
                                  "its values are not input-independent (the over-general statement P1-encoder)")
    why = {"prompt": "the causal mask: prompt positions never attend to inputs",
           "prefix": "prefix states are free per layer and pass through W_k, W_v only",
           "prefix-kv": "prefix keys and values are free per layer"}[method]
    return CheckResult(True, f"identity expanded exactly for {m} prefix and 1..{n} content positions; prefix values "
                             f"input-independent at all {len(inst.layers)} layers ({why})", margin=Fraction(0),
                       facts={"identity_sizes": [m, n], "layers": len(inst.layers), "method": method})


# ----------------------------------------------------------------------------- P1-encoder witnesses

def _layer_box(inst: Instance, layer: Layer, tokens, rows: range):
    """Enclosures of the layer's output at `rows` for exact input tokens (encoder mask)."""
    out = []
    for r in rows:
        lo, hi = list(tokens[r]), list(tokens[r])
        for head in layer.heads:
            a_lo, a_hi = attention_box(head.V, head_logits(head, tokens[r], tokens), tokens)
            lo = [x + y for x, y in zip(lo, a_lo)]
            hi = [x + y for x, y in zip(hi, a_hi)]
        h_lo, h_hi = interval_matvec(layer.W1, lo, hi)
        h_lo = [max(x + b, Fraction(0)) for x, b in zip(h_lo, layer.b1)]
        h_hi = [max(x + b, Fraction(0)) for x, b in zip(h_hi, layer.b1)]
        o_lo, o_hi = interval_matvec(layer.W2, h_lo, h_hi)
        base_lo, base_hi = (lo, hi) if inst.mlp == "residual" else ([Fraction(0)] * len(lo), [Fraction(0)] * len(lo))
        out.append(([a + b + c for a, b, c in zip(base_lo, o_lo, layer.b2)],
                    [a + b + c for a, b, c in zip(base_hi, o_hi, layer.b2)]))
    return out


def check_p1_encoder(cert: dict, inst: Instance) -> CheckResult:
    if inst.attention != "encoder" or inst.layernorm or len(inst.layers) < 2:
        return CheckResult(False, "the over-general statement is about encoder models of two or more layers, "
                                  "without layer norm")
    d = inst.d
    prompt = get(cert, "prompt", "certificate")
    inputs = get(cert, "inputs", "certificate")
    if not isinstance(prompt, list) or not 1 <= len(prompt) <= MAX_SIZE:
        raise MalformedCertificate(f"prompt: expected 1..{MAX_SIZE} tokens")
    if not isinstance(inputs, list) or len(inputs) != 2:
        raise MalformedCertificate("inputs: expected two example indices")
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(inst.dataset) for i in inputs):
        raise MalformedCertificate("inputs: expected indices of the instance's examples")
    P = [[binary64(v, f"prompt[{t}]") for v in row] if isinstance(row, list) and len(row) == d else None
         for t, row in enumerate(prompt)]
    if any(row is None for row in P):
        raise MalformedCertificate(f"prompt: expected tokens of {d} numbers")
    margin = rational(get(cert, "margin", "certificate"), "margin")
    if margin <= 0:
        raise MalformedCertificate("margin: expected a positive number")
    X1, X2 = (inst.encoded(inst.dataset[i][0]) for i in inputs)
    if X1 == X2:
        return CheckResult(False, "the two inputs are the same")
    m_p = len(P)
    values = []
    for X in (X1, X2):
        boxes = _layer_box(inst, inst.layers[0], P + X, range(m_p))
        V = inst.layers[1].heads[0].V
        values.append([interval_matvec(V, lo, hi) for lo, hi in boxes])
    best = Fraction(-1)
    where = None
    for t in range(m_p):
        (lo1, hi1), (lo2, hi2) = values[0][t], values[1][t]
        for c in range(len(lo1)):
            gap = max(lo1[c] - hi2[c], lo2[c] - hi1[c])
            if gap > best:
                best, where = gap, (t, c)
    if best <= margin:
        return CheckResult(False, f"the layer-2 prompt values of the two inputs are not proved more than "
                                  f"{float(margin):.3g} apart (best separation {float(best):.3g})")
    return CheckResult(True, f"prompt token {where[0]}'s layer-2 value (coordinate {where[1]}) differs by more than "
                             f"{float(best):.3g} between inputs {inputs[0]} and {inputs[1]}", margin=margin,
                       facts={"separation": float(best), "token": where[0], "coordinate": where[1]})
