"""Independent checkers of Z1's ReLU form, exactly: the construction is within epsilon of the target on
the whole bounded domain (Z1-relu), and it leaves the target outside it (Z1-relu-unbounded).

Networks: ReLU after every layer but the last; the adapted layer l is (W_l + B_l A_l, b'_l) with the
witness's factors and tuned biases. The model's L layers are read in L_bar groups of M = L / L_bar.

Z1-relu: with the adapted group input h in a box H (and the target's hidden state h_bar within
delta of it), the checker composes each group's inner layers exactly (N h + c) and requires every
inner pre-activation's minimum over H to be positive, so those ReLUs are the identity on H; the
group's last pre-activations then differ from the target's W_bar h_bar + b_bar by at most
|A_g - W_bar| max|H| + |W_bar| delta + |a_g - b_bar| (componentwise, exact), and ReLU does not
increase the difference. Boxes of the target's states come from exact interval arithmetic. The
final difference bounds sup |f_adapted - f_bar| on [-B, B]^D; it must be <= epsilon.

Z1-relu-unbounded: the same adapted network at one binary64 point, evaluated exactly, differs from
the target by more than the margin.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from .exact import get, identity, interval_matvec, matvec, mul
from .instance import _keys, _matrix, _plain, _vector, canonical_digest
from .reading import MalformedCertificate, binary64, rational
from .result import CheckResult

FORMAT = "peftaudit.relu/1"
MAX_D, MAX_LAYERS = 32, 16  # exact products of binary64 matrices grow fast
F0 = Fraction(0)


class ReluInstance:
    def __init__(self, layers, target, bound, meta, digest):
        self.layers, self.target, self.bound, self.meta, self.digest = layers, target, bound, meta, digest
        self.d = len(target[0][0])


def parse_relu(doc: Any) -> ReluInstance:
    _keys(doc, "instance", {"format", "layers", "target", "bound", "meta"}, {"format", "layers", "target", "bound"})
    if doc["format"] != FORMAT:
        raise MalformedCertificate(f"instance.format: expected {FORMAT!r}")
    nets = []
    for key in ("layers", "target"):
        items = doc[key]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_LAYERS:
            raise MalformedCertificate(f"instance.{key}: expected 1..{MAX_LAYERS} layers")
        first = items[0].get("W") if isinstance(items[0], dict) else None
        D = len(first) if isinstance(first, list) else 0
        if not 1 <= D <= MAX_D:
            raise MalformedCertificate(f"instance.{key}[0].W: expected 1..{MAX_D} rows")
        nets.append([(_matrix(_keys(x, f"instance.{key}[{i}]", {"W", "b"}, {"W", "b"})["W"], f"instance.{key}[{i}].W", D, D),
                      _vector(x["b"], f"instance.{key}[{i}].b", D)) for i, x in enumerate(items)])
    if len(nets[0][0][0]) != len(nets[1][0][0]):
        raise MalformedCertificate("instance: the model and the target must have one width")
    bound = binary64(doc["bound"], "instance.bound")
    if bound <= 0:
        raise MalformedCertificate("instance.bound: expected a positive number")
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise MalformedCertificate("instance.meta: expected a JSON object")
    canonical = {"format": FORMAT, "bound": float(bound), "meta": _plain(meta, floats=False),
                 **{k: [{"W": _plain(x["W"]), "b": _plain(x["b"])} for x in doc[k]] for k in ("layers", "target")}}
    return ReluInstance(nets[0], nets[1], bound, meta, canonical_digest(canonical))


def _adapted(cert: dict, inst: ReluInstance):
    L, D = len(inst.layers), inst.d
    R = get(cert, "rank", "certificate")
    if isinstance(R, bool) or not isinstance(R, int) or not 1 <= R <= D:
        raise MalformedCertificate(f"rank: expected an integer in 1..{D}")
    B, A, biases = (get(cert, k, "certificate") for k in ("B", "A", "biases"))
    if not all(isinstance(x, list) and len(x) == L for x in (B, A, biases)):
        raise MalformedCertificate(f"B, A, biases: expected one entry per layer ({L})")
    out = []
    for l, ((W, _), b_, a_, c_) in enumerate(zip(inst.layers, B, A, biases)):
        delta = mul(_matrix(b_, f"B[{l}]", D, R), _matrix(a_, f"A[{l}]", R, D))
        out.append(([[w + x for w, x in zip(wr, xr)] for wr, xr in zip(W, delta)], _vector(c_, f"biases[{l}]", D)))
    return out, R


def _evaluate(layers, x):
    h = list(x)
    for i, (W, b) in enumerate(layers):
        h = [v + c for v, c in zip(matvec(W, h), b)]
        if i < len(layers) - 1:
            h = [max(v, F0) for v in h]
    return h


def check_z1_relu(cert: dict, inst: ReluInstance) -> CheckResult:
    adapted, R = _adapted(cert, inst)
    L, Lbar, D = len(inst.layers), len(inst.target), inst.d
    epsilon = rational(get(cert, "epsilon", "certificate"), "epsilon")
    if L % Lbar:
        return CheckResult(False, f"the model's depth {L} is not a multiple of the target's {Lbar}")
    M = L // Lbar
    lo, hi = [-inst.bound] * D, [inst.bound] * D      # the target's state box
    delta = [F0] * D                                   # |h - h_bar| bound
    for g, (Wbar, bbar) in enumerate(inst.target):
        a_lo, a_hi = [x - e for x, e in zip(lo, delta)], [x + e for x, e in zip(hi, delta)]  # adapted state box
        G = identity(D)
        c = [F0] * D
        for j in range(M):
            W, b = adapted[g * M + j]
            N, o = mul(W, G), [v + x for v, x in zip(matvec(W, c), b)]
            if j < M - 1:
                pre_lo, _ = interval_matvec(N, a_lo, a_hi)
                low = min(p + q for p, q in zip(pre_lo, o))
                if low <= 0:
                    return CheckResult(False, f"group {g}, layer {g * M + j}: an inner pre-activation reaches "
                                              f"{float(low):.3g} <= 0 on the domain (its ReLU is not the identity)")
            G, c = N, o
        size = [max(abs(x), abs(y)) for x, y in zip(a_lo, a_hi)]
        diff = [sum((abs(a - w) * s for a, w, s in zip(ar, wr, size)), F0)
                + sum((abs(w) * e for w, e in zip(wr, delta)), F0) + abs(ci - bi)
                for ar, wr, ci, bi in zip(G, Wbar, c, bbar)]
        t_lo, t_hi = interval_matvec(Wbar, lo, hi)
        lo, hi = [x + b for x, b in zip(t_lo, bbar)], [x + b for x, b in zip(t_hi, bbar)]
        if g < Lbar - 1:
            lo, hi = [max(x, F0) for x in lo], [max(x, F0) for x in hi]
        delta = diff
    bound = max(delta)
    facts = {"rank": R, "rank_needed": -(-D * Lbar // L), "sup_error": float(bound), "groups": Lbar,
             "layers_per_group": M}
    if R != facts["rank_needed"]:  # the claim is about this rank: a witness of another proves another statement
        return CheckResult(False, f"rank {R} is not the claim's ceil(D L_bar / L) = {facts['rank_needed']}", facts=facts)
    if bound > epsilon:
        return CheckResult(False, f"sup over the domain of |f_adapted - f_bar| <= {float(bound):.3g} exceeds "
                                  f"epsilon = {float(epsilon):.3g}", facts=facts)
    return CheckResult(True, f"rank {R} = ceil(D L_bar / L) LoRA with tuned biases is within {float(bound):.3g} of the "
                             f"target on all of [-{float(inst.bound):g}, {float(inst.bound):g}]^{D}", margin=epsilon,
                       facts=facts)


def check_z1_relu_unbounded(cert: dict, inst: ReluInstance) -> CheckResult:
    adapted, R = _adapted(cert, inst)
    point = get(cert, "point", "certificate")
    if not isinstance(point, list) or len(point) != inst.d:
        raise MalformedCertificate(f"point: expected {inst.d} numbers")
    x = [binary64(v, f"point[{i}]") for i, v in enumerate(point)]
    margin = rational(get(cert, "margin", "certificate"), "margin")
    if margin <= 0:
        raise MalformedCertificate("margin: expected a positive number")
    gap = max(abs(a - b) for a, b in zip(_evaluate(adapted, x), _evaluate(inst.target, x)))
    outside = max(abs(v) for v in x) > inst.bound
    needed = -(-inst.d * len(inst.target) // len(inst.layers))
    facts = {"gap": float(gap), "point_norm_inf": float(max(abs(v) for v in x)), "outside": outside,
             "rank": R, "rank_needed": needed}
    if R != needed:
        return CheckResult(False, f"rank {R} is not the claim's ceil(D L_bar / L) = {needed}", facts=facts)
    if gap <= margin:
        return CheckResult(False, f"at the point the networks differ by {float(gap):.3g}, not more than the margin",
                           facts=facts)
    return CheckResult(True, f"at a point with max-norm {facts['point_norm_inf']:.3g} (domain bound "
                             f"{float(inst.bound):g}) the adapted network differs from the target by {float(gap):.3g}, "
                             "exactly", margin=margin, facts=facts)
