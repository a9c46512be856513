"""Independent checker of LV-scale certificates (no scaling of W_v's rows fits), in exact arithmetic.

Single layer, single head without an output map, residual MLP g(h) = h + W2 relu(W1 h + b1) + b2
with branch bound kappa < 1 (max norm), one target per example (the last position). A row
scaling W_v -> diag(l) W_v (IA3 on v) keeps the attention weights, so the state before the MLP is
h_i = x_i + l * v_i with v_i = W_v u_i. Let H_i = g^{-1}(Y_i) and b_i = H_i - x_i. For the named
coordinate k and examples i, j, whatever l_k:

    |v_jk| |l_k v_ik - b_ik| + |v_ik| |l_k v_jk - b_jk| >= |v_ik b_jk - v_jk b_ik|,

so max(|h_ik - H_ik|, |h_jk - H_jk|) >= |v_ik b_jk - v_jk b_ik| / (|v_ik| + |v_jk|), and the
output's max error is at least (1 - kappa) times that. This checker encloses v_i in a box (exact
exp bounds), b_i in the box H~_i - x_i +- rho_i with rho_i = ||g(H~_i) - Y_i||_inf / (1 - kappa) >=
||H~_i - H_i||_inf, bounds the numerator's magnitude from below and the denominator from above
by interval arithmetic, and accepts a claimed margin at most the result. Shares no code with the
encoder (verify/encoders/lv_scale.py); the per-example facts are the LV checker's (example_facts).
"""

from __future__ import annotations

from fractions import Fraction

from .exact import get, vec
from .instance import Instance
from .l1 import kappa, single_layer_problem
from .lv import example_facts
from .reading import MalformedCertificate, rational
from .result import CheckResult

Interval = tuple[Fraction, Fraction]


def _product(a: Interval, b: Interval) -> Interval:
    corners = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
    return min(corners), max(corners)


def _index(x: object, key: str, below: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < below:
        raise MalformedCertificate(f"{key}: expected an integer in [0, {below})")
    return x


def check_lv_scale(cert: dict, inst: Instance) -> CheckResult:
    """Re-verify an LV-scale certificate against its (validated) embedded instance."""
    why = single_layer_problem(inst)
    if why:
        return CheckResult(False, why)
    d, layer = inst.d, inst.layers[0]
    head = layer.heads[0]
    if head.Wo is not None:
        return CheckResult(False, "LV-scale speaks about a head without an output map Wo")
    N = len(inst.dataset)
    k = _index(get(cert, "coordinate", "certificate"), "coordinate", d)
    pair = get(cert, "pair", "certificate")
    if not isinstance(pair, list) or len(pair) != 2:
        raise MalformedCertificate("pair: expected two example indices")
    i, j = (_index(x, "pair", N) for x in pair)
    if i == j:
        return CheckResult(False, "pair: the two examples must differ")
    kap = kappa(layer)
    if kap >= 1:
        return CheckResult(False, f"the MLP branch bound kappa = {float(kap):.6g} is not below 1")
    H_raw = get(cert, "H", "certificate")
    if not isinstance(H_raw, list) or len(H_raw) != N:
        raise MalformedCertificate(f"H: expected {N} points, one per example")
    H = [vec(h, f"H[{n}]", d) for n, h in enumerate(H_raw)]
    claimed = rational(get(cert, "margin", "certificate"), "margin")
    v: dict[int, Interval] = {}
    b: dict[int, Interval] = {}
    for n in (i, j):
        facts = example_facts(inst, head.Wv, kap, H[n], n, "LV-scale")
        if isinstance(facts, str):
            return CheckResult(False, facts)
        last, lo, hi, rho = facts
        v[n] = (lo[k], hi[k])
        b[n] = (H[n][k] - last[k] - rho, H[n][k] - last[k] + rho)
    first, second = _product(v[i], b[j]), _product(v[j], b[i])
    low, high = first[0] - second[1], first[1] - second[0]                            # v_ik b_jk - v_jk b_ik
    numerator = max(Fraction(0), low, -high)
    denominator = max(abs(v[i][0]), abs(v[i][1])) + max(abs(v[j][0]), abs(v[j][1]))
    if numerator <= 0 or denominator <= 0:
        return CheckResult(False, f"coordinate {k}, examples {i} and {j}: the enclosures leave no positive bound")
    margin = (1 - kap) * numerator / denominator
    if claimed > margin:
        return CheckResult(False, f"claimed margin {float(claimed):.6g} exceeds the checked {float(margin):.6g}")
    return CheckResult(True, f"every row scaling of W_v keeps a last-position max error >= {float(margin):.6g} "
                             f"(coordinate {k}, examples {i} and {j}, kappa {float(kap):.3g})",
                       margin=margin, facts={"coordinate": k, "pair": [i, j]})
