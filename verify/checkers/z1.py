"""Independent checker of Z1 certificates (LoRA rank threshold of deep linear networks), exactly.

Claim Z1 (SPEC section 3; Zeng and Lee, ICLR 2024). f(x) = W_L ... W_1 x, target W_bar,
E = W_bar - W_L ... W_1. A rank-R LoRA on every layer changes the product by
sum_l (W_L+D_L)...(W_{l+1}+D_{l+1}) D_l W_{l-1}...W_1, of rank <= R L, so its spectral error is at
least sigma_{RL+1}(E) (Weyl / Eckart-Young). The certificate, for R0 = threshold - 1, states:

- the lower bound: Q (D x k, k = R0 L + 1) and s2 > 0 with Q^T (E^T E - s2 I) Q positive definite
  (exact LDL^T). Then Q has rank k and the Rayleigh quotient of E^T E exceeds s2 on span(Q), so
  sigma_k(E)^2 > s2 (Courant-Fischer): every rank-R0 LoRA errs by more than `lower`, lower^2 <= s2;
- the construction at rank R0 ("below", absent when R0 = 0): binary64 factors B_l (D x R0),
  A_l (R0 x D); the checker forms M = W_bar - prod (W_l + B_l A_l) exactly and proves
  ||M||_2 <= upper by t2 I - M^T M positive definite, upper^2 >= t2: the bound is attained up to
  upper / lower;
- the construction at the threshold R0 + 1 ("at"), with the same check and upper_at <= lower / 10^6:
  rank R0 + 1 matches W_bar up to rounding, rank R0 cannot come within `lower`;
- the exact rank of E as a fact. It is usually D: a target stored in binary64 carries rounding
  in every direction, so the threshold certified is the robust one (SPEC section 4): rank R0 stays
  above `lower`, rank R0 + 1 comes within upper_at, and R0 + 1 = ceil(numerical rank / L).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from .exact import get, identity, mul, positive_definite, transpose
from .instance import _keys, _matrix, _plain, canonical_digest
from .reading import MalformedCertificate, rational
from .result import CheckResult

FORMAT = "peftaudit.linear/1"
MAX_D, MAX_LAYERS = 32, 8  # exact products of binary64 matrices grow fast


class LinearInstance:
    def __init__(self, layers, target, meta, digest):
        self.layers, self.target, self.meta, self.digest = layers, target, meta, digest
        self.d = len(target)


def parse_linear(doc: Any) -> LinearInstance:
    _keys(doc, "instance", {"format", "layers", "target", "meta"}, {"format", "layers", "target"})
    if doc["format"] != FORMAT:
        raise MalformedCertificate(f"instance.format: expected {FORMAT!r}")
    target_doc, layers_doc = doc["target"], doc["layers"]
    D = len(target_doc) if isinstance(target_doc, list) else 0
    if not 1 <= D <= MAX_D:
        raise MalformedCertificate(f"instance.target: expected 1..{MAX_D} rows")
    if not isinstance(layers_doc, list) or not 1 <= len(layers_doc) <= MAX_LAYERS:
        raise MalformedCertificate(f"instance.layers: expected 1..{MAX_LAYERS} matrices")
    target = _matrix(target_doc, "instance.target", D, D)
    layers = [_matrix(W, f"instance.layers[{i}]", D, D) for i, W in enumerate(layers_doc)]
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise MalformedCertificate("instance.meta: expected a JSON object")
    canonical = {"format": FORMAT, "layers": [_plain(W) for W in layers_doc], "target": _plain(target_doc),
                 "meta": _plain(meta, floats=False)}
    return LinearInstance(layers, target, meta, canonical_digest(canonical))


def _product(layers) -> list[list[Fraction]]:
    out = identity(len(layers[0]))
    for W in layers:
        out = mul(W, out)
    return out


def _sub(A, B):
    return [[a - b for a, b in zip(r, s)] for r, s in zip(A, B)]


def exact_rank(A) -> int:
    M = [row[:] for row in A]
    rank, cols = 0, len(M[0])
    for c in range(cols):
        pivot = next((r for r in range(rank, len(M)) if M[r][c]), None)
        if pivot is None:
            continue
        M[rank], M[pivot] = M[pivot], M[rank]
        for r in range(len(M)):
            if r != rank and M[r][c]:
                f = M[r][c] / M[rank][c]
                M[r] = [a - f * b for a, b in zip(M[r], M[rank])]
        rank += 1
    return rank


def _factors(doc: Any, where: str, L: int, D: int, R: int):
    B, A = get(doc, "B", where), get(doc, "A", where)
    if not isinstance(B, list) or not isinstance(A, list) or len(B) != L or len(A) != L:
        raise MalformedCertificate(f"{where}: expected B and A for each of the {L} layers")
    return [(_matrix(b, f"{where}.B[{l}]", D, R), _matrix(a, f"{where}.A[{l}]", R, D)) for l, (b, a) in
            enumerate(zip(B, A))]


def _construction_error(inst: LinearInstance, doc: Any, where: str, R: int) -> Fraction:
    """The certified upper bound on ||W_bar - prod (W_l + B_l A_l)||_2 (checked exactly)."""
    L, D = len(inst.layers), inst.d
    factors = _factors(doc, where, L, D, R)
    adapted = [[[w + d for w, d in zip(wr, dr)] for wr, dr in zip(W, mul(B, A))]
               for W, (B, A) in zip(inst.layers, factors)]
    M = _sub(inst.target, _product(adapted))
    t2, upper = rational(get(doc, "t2", where), f"{where}.t2"), rational(get(doc, "upper", where), f"{where}.upper")
    G = mul(transpose(M), M)
    if not (upper >= 0 and upper * upper >= t2 > 0 and
            positive_definite([[t2 * int(i == j) - g for j, g in enumerate(row)] for i, row in enumerate(G)])):
        raise _Fail(f"{where}: ||W_bar - prod(W_l + B_l A_l)||_2 <= {float(upper):.3g} is not proved")
    return upper


class _Fail(Exception):
    pass


def check_z1(cert: dict, inst: LinearInstance) -> CheckResult:
    L, D = len(inst.layers), inst.d
    R0 = get(cert, "rank", "certificate")
    if isinstance(R0, bool) or not isinstance(R0, int) or not 0 <= R0 < D:
        raise MalformedCertificate(f"rank: expected an integer in 0..{D - 1}")
    k = R0 * L + 1
    Q = get(cert, "Q", "certificate")
    if not isinstance(Q, list) or len(Q) != D or any(not isinstance(r, list) or len(r) != k for r in Q):
        raise MalformedCertificate(f"Q: expected {D} rows of {k} numbers")
    Q = [[rational(v, "Q") for v in r] for r in Q]
    s2, lower = rational(get(cert, "s2", "certificate"), "s2"), rational(get(cert, "lower", "certificate"), "lower")
    margin = rational(get(cert, "margin", "certificate"), "margin")
    E = _sub(inst.target, _product(inst.layers))
    rank_e = exact_rank(E)
    facts = {"rank_e": rank_e, "layers": L, "threshold": R0 + 1}
    if k > D:
        return CheckResult(False, f"R0 L + 1 = {k} exceeds D = {D}", facts=facts)
    G = mul(transpose(E), E)
    QtGQ, QtQ = mul(transpose(Q), mul(G, Q)), mul(transpose(Q), Q)
    if not (s2 > 0 and lower >= 0 and lower * lower <= s2 and 0 <= margin <= lower
            and positive_definite([[a - s2 * b for a, b in zip(r, s)] for r, s in zip(QtGQ, QtQ)])):
        return CheckResult(False, f"sigma_{k}(E) > {float(lower):.6g} is not proved (Q^T (E^T E - s2 I) Q is not "
                                  "positive definite, or lower^2 > s2, or the margin exceeds it)", facts=facts)
    facts["lower"] = float(lower)
    try:
        if R0 >= 1:
            facts["upper_below"] = float(_construction_error(inst, get(cert, "below", "certificate"), "below", R0))
        upper_at = _construction_error(inst, get(cert, "at", "certificate"), "at", R0 + 1)
    except _Fail as exc:
        return CheckResult(False, str(exc), facts=facts)
    facts["upper_at"] = float(upper_at)
    if upper_at * 10**6 > lower:
        return CheckResult(False, f"the construction at rank {R0 + 1} errs by up to {float(upper_at):.3g}, not "
                                  f"negligible against the bound {float(lower):.3g} at rank {R0}", facts=facts)
    return CheckResult(True, f"rank {R0} errs by > {float(lower):.6g} (sigma_{k}(E), exact)"
                             + (f"; the construction at rank {R0} attains it within {facts['upper_below']:.6g}"
                                if R0 >= 1 else "")
                             + f"; at rank {R0 + 1} it matches within {float(upper_at):.2g}", margin=margin, facts=facts)


def error_below(inst_doc: Any, factors: list[tuple[list, list]], bound: Fraction) -> bool:
    """Exactly: is ||W_bar - prod (W_l + B_l A_l)||_2 < bound for these binary64 factors? (The audit
    uses it to confirm a soundness conflict before reporting one.)"""
    import json

    from .reading import parse
    text = json.dumps({"instance": inst_doc, "B": [B for B, _ in factors], "A": [A for _, A in factors]})
    data = parse(text.encode())
    inst = parse_linear(data["instance"])
    R = len(factors[0][1]) if factors and factors[0][1] else 0
    doc = {"B": data["B"], "A": data["A"], "t2": bound * bound, "upper": bound}
    try:
        _construction_error(inst, doc, "search", R)
    except (_Fail, MalformedCertificate):
        return False
    return True
