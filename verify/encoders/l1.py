"""Encoder for claims L1 and L1+ (SPEC sections 3-4): rigorous data, linear problem, certificate.

Steps: check the hypotheses; compute exact tokens, rational enclosures of the attention outputs
a_i (and of the normalisers S_i for L1+), and approximate inverses c_i of the MLP; bisect the
radius delta with a float dual LP (HiGHS) to find the best certifiable radius; turn the float
multipliers into exact rationals (repair, else z3 solves the dual exactly); and have the
independent checker re-verify the result before anything is reported as certified.
The linear system is documented in verify/checkers/l1.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import numpy as np
from scipy.optimize import linprog

from peftaudit.instance import Instance, digest, to_dict

from ..checkers import CERT_FORMAT
from .l1_sphere import REFINE_MAX_D, SphereBudget, cell_count, refined_margin, refinement_budget
from .selfcheck import self_check
from .mlp import MLPWeights, branch_lipschitz, injectivity, invert
from .rational import Vec, frac_str, matmul, matvec, q, qmat, qvec, transpose
from .softmax_bounds import softmax_enclosure, sum_exp_enclosure

CLAIMS = ("L1", "L1+")
Piece = tuple  # (z_hi | None, z_lo | None, sigma_max | None) for the L1+ normaliser bound
DEFAULT_TOLERANCE = 1e-9
BISECTION_STEPS = 60
INJECTIVITY_TIMEOUT_MS = 5_000
LP_CONTRADICTION = 1e-9  # a float dual counts when its right-hand side is below -this * scale
CERT_SHRINK = 1e-6  # certify at delta_best * (1 - CERT_SHRINK): slack for exact rounding


@dataclass(frozen=True)
class CertifyResult:
    claim: str
    status: str  # "certified" | "not-certified" | "not-applicable" | "unknown"
    reason: str
    margin: Fraction | None = None      # layer-output margin (certified only)
    delta: Fraction | None = None       # attention-level radius the certificate proves
    best_error: float | None = None     # attention-level radius where the relaxation turns feasible
    members: tuple[int, ...] = ()
    certificate: dict | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"claim": self.claim, "status": self.status,
                "margin": float(self.margin) if self.margin is not None else None,
                "attention_margin": float(self.delta) if self.delta is not None else None,
                "best_error": self.best_error, "members": list(self.members), "reason": self.reason}


@dataclass
class _Data:
    """Exact problem data for the members of a group sharing the last token."""
    members: tuple[int, ...]
    V: list            # (d, d) value map, exact
    c: list            # per member, exact rational c_i
    a_lo: list
    a_hi: list
    S_lo: list
    S_hi: list
    shift: Fraction
    kappa: Fraction
    residual: Fraction  # max_i ||MLP(x_0 + c_i) - y_i||_inf, exact
    key: list = field(default_factory=list)  # k = Wk^T Wq x_0: the logit of a prompt token p is <p, k>
    g: list | None = None                    # V^T g = k exactly, when k is in range(V^T)
    centres: list = field(default_factory=list)    # per member P_i = x_0 + c_i, exact
    residuals: list = field(default_factory=list)  # per member ||MLP(P_i) - y_i||_inf, exact


def _group(inst: Instance) -> tuple[int, ...]:
    """The largest set of examples with the same last input token (ties: first found)."""
    groups: dict[bytes, list[int]] = {}
    for i, ex in enumerate(inst.dataset):
        groups.setdefault(np.asarray(ex.X[-1], np.float64).tobytes(), []).append(i)
    best = max(groups.values(), key=len)
    return tuple(best) if len(best) >= 2 else ()


def hypotheses(inst: Instance, decide_injectivity: bool = False) -> str | None:
    """None when L1's hypotheses hold; otherwise why the claim does not apply.

    decide_injectivity: for an MLP without a margin bound, also decide injectivity exactly (z3),
    to say whether the MLP is not injective at all (slower; the CLI does it).
    """
    spec = inst.spec
    if len(spec.layers) != 1:
        return f"the model has {len(spec.layers)} layers; L1 is about a single layer"
    if len(spec.layers[0].heads) != 1:
        return f"the layer has {len(spec.layers[0].heads)} heads; L1 is about a single head"
    if spec.layernorm:
        return "layer norm is on; L1 assumes none"
    if not _group(inst):
        return "no two examples share the last input token"
    mlp = MLPWeights.of_layer(spec.mlp, inst.weights)
    if spec.mlp == "residual" and branch_lipschitz(mlp) < 1:
        return None
    if not decide_injectivity:
        return (f"no rigorous inverse-Lipschitz bound for this {spec.mlp} MLP (the margin needs a residual MLP "
                "with branch bound kappa < 1); injectivity not decided")
    inj = injectivity(mlp, timeout_ms=INJECTIVITY_TIMEOUT_MS)
    if inj.status == "not-injective":
        return f"the MLP is not injective ({inj.method})"
    if inj.status == "unknown":
        return f"MLP injectivity undecided ({inj.method})"
    return ("the MLP is injective but no rigorous inverse-Lipschitz bound is available for it "
            "(the margin needs a residual MLP with branch bound kappa < 1)")


def _problem_data(inst: Instance, members: tuple[int, ...]) -> _Data:
    w = inst.weights
    p = "layers.0.heads.0."
    Wv = qmat(w[p + "Wv"])
    V = matmul(qmat(w[p + "Wo"]), Wv) if p + "Wo" in w else Wv
    Wq, Wk = qmat(w[p + "Wq"]), qmat(w[p + "Wk"])
    mlp = MLPWeights.of_layer(inst.spec.mlp, w)
    E = qmat(w["positional"]) if inst.spec.positions else None
    c, a_lo, a_hi, S_lo, S_hi, all_logits, centres, residuals = [], [], [], [], [], [], [], []
    x0 = None
    for i in members:
        X = qmat(inst.dataset[i].X)
        if E is not None:
            X = [[a + b for a, b in zip(x, e)] for x, e in zip(X, E)]
        x0 = X[-1]
        key_direction = matvec(transpose(Wk), matvec(Wq, x0))  # logit_j = <x_j, Wk^T Wq x_0>
        logits = [sum((a * b for a, b in zip(x, key_direction)), Fraction(0)) for x in X]
        all_logits.append(logits)
        s_lo, s_hi = softmax_enclosure(logits)
        vals = [matvec(V, x) for x in X]
        d = len(V)
        a_lo.append([sum((min(l * v[k], h * v[k]) for l, h, v in zip(s_lo, s_hi, vals)), Fraction(0)) for k in range(d)])
        a_hi.append([sum((max(l * v[k], h * v[k]) for l, h, v in zip(s_lo, s_hi, vals)), Fraction(0)) for k in range(d)])
        y = inst.dataset[i].Y[-1]
        x0_float = np.array([float(v) for v in x0])
        ci = qvec(invert(mlp, y) - x0_float)
        c.append(ci)
        centres.append([a + b for a, b in zip(x0, ci)])
        out = _mlp_exact(mlp, centres[-1])
        residuals.append(max(abs(o - t) for o, t in zip(out, qvec(y))))
    shift = Fraction(round(max(float(l) for ls in all_logits for l in ls)))
    for logits in all_logits:
        lo, hi = sum_exp_enclosure(logits, shift)
        S_lo.append(lo)
        S_hi.append(hi)
    return _Data(members, V, c, a_lo, a_hi, S_lo, S_hi, shift, branch_lipschitz(mlp), max(residuals),
                 key=key_direction, centres=centres, residuals=residuals)


def _global_margin(data: _Data, delta: Fraction) -> Fraction:
    """The layer-output margin through the MLP's global inverse-Lipschitz bound: (1 - kappa) delta - residual."""
    return (1 - data.kappa) * delta - data.residual


def _mlp_exact(mlp: MLPWeights, h: Vec) -> Vec:
    from .mlp import evaluate_exact
    return evaluate_exact(mlp, h)


# ------------------------------------------------------------------ the float dual LP

def _dual_lp(data: _Data, delta: float, shared: bool, piece: "Piece | None" = None,
             sum_zero: bool = False) -> np.ndarray | None:
    """Float multipliers (y+_i, y-_i [, mh_i, ml_i], then yZhi, yZlo, ySig) proving infeasibility
    at delta, or None. `piece` adds the L1+ normaliser bound on one piece of the z line.

    Derived from the system in verify/checkers/l1.py by eliminating the multipliers that the
    identities fix: y_E = y+ - y-, y_Whi = y_Qlo = y+, y_Wlo = y_Qhi = y-. Normalized by
    sum |y| = 1, it minimizes the combined right-hand side; a clearly negative optimum is a
    (float) certificate. Bounded multipliers keep HiGHS honest near the feasibility boundary.
    sum_zero asks for sum_i y_i = 0 instead of sum_i V^T y_i = 0: a restriction that ignores
    near-null directions of V (which float tolerances can fake), so the exact repair is clean.
    """
    K, d = len(data.members), len(data.V)
    per = 2 * d + (2 if shared else 0)
    n = K * per + 3  # + yZhi, yZlo, ySig (fixed at 0 unless the piece has that bound)
    V = np.eye(d) if sum_zero else np.array([[float(x) for x in row] for row in data.V])
    A_eq = np.zeros((d + 1, n))
    b_eq = np.zeros(d + 1)
    A_ub, b_ub = [], []
    objective = np.zeros(n)
    shared_row = np.zeros(n)
    scale = 1.0
    for i in range(K):
        o = i * per
        c = np.array([float(x) for x in data.c[i]])
        lo = np.array([float(x) for x in data.a_lo[i]])
        hi = np.array([float(x) for x in data.a_hi[i]])
        scale = max(scale, np.abs(c).max(), np.abs(hi).max(), np.abs(lo).max())
        A_eq[:d, o:o + d] = V.T
        A_eq[:d, o + d:o + 2 * d] = -V.T
        A_eq[d, o:o + 2 * d] = 1.0
        row = np.zeros(n)  # y_S_i >= 0 written as <= 0
        row[o:o + d] = c + delta - lo
        row[o + d:o + 2 * d] = hi - c + delta
        if shared:
            row[o + 2 * d] = -1.0      # -mh
            row[o + 2 * d + 1] = 1.0   # +ml
            shared_row[o + 2 * d] = float(data.S_hi[i])
            shared_row[o + 2 * d + 1] = -float(data.S_lo[i])
        A_ub.append(row)
        b_ub.append(0.0)
        objective[o:o + d] = c + delta
        objective[o + d:o + 2 * d] = -(c - delta)
    b_eq[d] = 1.0
    bounds = [(0, None)] * (n - 3) + [(0, 0)] * 3
    if piece is not None:
        key = np.array([float(x) for x in data.key])
        z_hi, z_lo, cap = piece
        for j, (bound, sign) in enumerate(((z_hi, 1.0), (z_lo, -1.0), (cap, 0.0))):
            if bound is not None:
                bounds[n - 3 + j] = (0, None)
                objective[n - 3 + j] = float(bound) * (1.0 if j != 1 else -1.0)
                if j < 2:
                    A_eq[:d, n - 3 + j] = sign * key
        shared_row[n - 1] = -1.0
    if shared:
        A_ub.append(shared_row)
        b_ub.append(0.0)
    res = linprog(objective, A_ub=np.array(A_ub), b_ub=np.array(b_ub), A_eq=A_eq, b_eq=b_eq,
                  bounds=bounds, method="highs")
    if res.status != 0 or res.fun > -LP_CONTRADICTION * scale:
        return None
    return res.x


def _bisect(data: _Data, shared: bool, sum_zero: bool = False) -> tuple[float, np.ndarray | None]:
    """Largest delta with a float dual solution (0.0 and None when even delta = 0 has none)."""
    sol0 = _dual_lp(data, 0.0, shared, sum_zero=sum_zero)
    if sol0 is None:
        return 0.0, None
    hi = max(1.0, *(abs(float(x)) for v in data.c + data.a_hi + data.a_lo for x in v))
    while _dual_lp(data, hi, shared, sum_zero=sum_zero) is not None:
        hi *= 4
    lo, best = 0.0, sol0
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        sol = _dual_lp(data, mid, shared, sum_zero=sum_zero)
        if sol is not None:
            lo, best = mid, sol
        else:
            hi = mid
        if hi - lo <= 1e-9 * hi:
            break
    return lo, best


# ------------------------------------------------------------------ exact multipliers

def _multipliers_from(data: _Data, ys: list[Vec], mh: list[Fraction], ml: list[Fraction],
                      delta: Fraction, shared: bool, extras: dict | None = None) -> dict:
    """Full multiplier families of the check.py system from y_i (mh, ml for L1+; the piece's
    Zhi, Zlo, Sig multipliers in `extras`)."""
    fam: dict[str, Any] = {k: [] for k in ("E", "Whi", "Wlo", "Qhi", "Qlo", "S")}
    if shared:
        fam["Mhi"], fam["Mlo"] = list(mh), list(ml)
    for i, y in enumerate(ys):
        yp = [v if v > 0 else Fraction(0) for v in y]
        ym = [-v if v < 0 else Fraction(0) for v in y]
        c, lo, hi = data.c[i], data.a_lo[i], data.a_hi[i]
        yS = sum(((lo[k] - c[k] - delta) * yp[k] + (c[k] - delta - hi[k]) * ym[k] for k in range(len(y))), Fraction(0))
        if shared:
            yS += mh[i] - ml[i]
        fam["E"].append(y)
        fam["Whi"].append(yp)
        fam["Wlo"].append(ym)
        fam["Qhi"].append(ym)
        fam["Qlo"].append(yp)
        fam["S"].append(yS)
    if shared:
        fam["N"] = sum((data.S_lo[i] * ml[i] - data.S_hi[i] * mh[i] for i in range(len(ys))), Fraction(0))
    if extras:
        fam.update(extras)
        fam["N"] += extras.get("Sig", Fraction(0))
    return fam


def _repair(data: _Data, sol: np.ndarray, shared: bool, piece: "Piece | None" = None
            ) -> tuple[list, list, list, dict, Fraction]:
    """Exact multipliers from a float dual solution, and the largest radius they prove.

    y_i are the exact values of the floats, with the last one reset so that sum_i y_i = 0
    exactly (hence sum_i V^T y_i = 0). For fixed multipliers every remaining condition is
    linear in delta, so the radius they certify is computed exactly instead of guessed.
    """
    K, d = len(data.members), len(data.V)
    per = 2 * d + (2 if shared else 0)
    ys = [[q(sol[i * per + k]) - q(sol[i * per + d + k]) for k in range(d)] for i in range(K)]
    extras: dict[str, Fraction] = {}
    offset = Fraction(0)  # sum_i V^T y_i = -key (yZhi - yZlo): with V^T g = key, sum_i y_i = -g (yZhi - yZlo)
    if piece is not None:
        n = K * per + 3
        for j, name in enumerate(("Zhi", "Zlo", "Sig")):
            if piece[j] is not None:
                extras[name] = max(Fraction(0), q(sol[n - 3 + j]))
        offset = extras.get("Zhi", Fraction(0)) - extras.get("Zlo", Fraction(0))
        if offset and data.g is None:
            return ys, [], [], extras, Fraction(-1)
    g = data.g if offset else [Fraction(0)] * d
    ys[-1] = [-sum((ys[i][k] for i in range(K - 1)), Fraction(0)) - g[k] * offset for k in range(d)]
    # HiGHS may return multipliers a hair below zero: inequality multipliers are clamped to >= 0
    mh = [max(Fraction(0), q(sol[i * per + 2 * d])) for i in range(K)] if shared else []
    ml = [max(Fraction(0), q(sol[i * per + 2 * d + 1])) for i in range(K)] if shared else []
    if shared:
        give = sum((data.S_hi[i] * mh[i] for i in range(K)), Fraction(0))
        take = sum((data.S_lo[i] * ml[i] for i in range(K)), Fraction(0)) + extras.get("Sig", Fraction(0))
        if take < give:  # shrink mh so that the sigma multiplier N stays >= 0 (give > take >= 0 here)
            mh = [m * take / give for m in mh]
    bound: Fraction | None = None
    total_c, total_norm = Fraction(0), Fraction(0)
    for i, y in enumerate(ys):
        c, lo, hi = data.c[i], data.a_lo[i], data.a_hi[i]
        base = sum(((lo[k] - c[k]) * y[k] if y[k] > 0 else (c[k] - hi[k]) * -y[k] for k in range(d)), Fraction(0))
        if shared:
            base += mh[i] - ml[i]
        norm = sum((abs(v) for v in y), Fraction(0))
        if norm:
            bound = base / norm if bound is None else min(bound, base / norm)
        elif base < 0:
            return ys, mh, ml, extras, Fraction(-1)
        total_c += sum((a * b for a, b in zip(c, y)), Fraction(0))
        total_norm += norm
    if piece is not None:
        z_hi, z_lo, cap = piece
        total_c += (z_hi or 0) * extras.get("Zhi", 0) - (z_lo or 0) * extras.get("Zlo", 0) + (cap or 0) * extras.get("Sig", 0)
    if total_norm == 0 or total_c >= 0:
        return ys, mh, ml, extras, Fraction(-1)
    strict = -total_c / total_norm * (1 - Fraction(1, 1 << 30))  # the right-hand side must stay < 0
    return ys, mh, ml, extras, strict if bound is None else min(bound, strict)


def _z3_multipliers(data: _Data, delta: Fraction, shared: bool, timeout_ms: int) -> dict | str | None:
    """Exact multipliers from z3 (linear real arithmetic); "unsat" when none exist, None on timeout."""
    import z3

    K, d = len(data.members), len(data.V)

    def num(x: Fraction) -> z3.ArithRef:
        return z3.Q(x.numerator, x.denominator)

    s = z3.Solver()
    s.set("timeout", timeout_ms)
    yp = [[z3.Real(f"yp_{i}_{k}") for k in range(d)] for i in range(K)]
    ym = [[z3.Real(f"ym_{i}_{k}") for k in range(d)] for i in range(K)]
    mh = [z3.Real(f"mh_{i}") for i in range(K)]
    ml = [z3.Real(f"ml_{i}") for i in range(K)]
    for i in range(K):
        s.add(*[v >= 0 for v in yp[i] + ym[i]])
    for col in range(d):
        s.add(z3.Sum([num(data.V[r][col]) * (yp[i][r] - ym[i][r]) for i in range(K) for r in range(d)
                      if data.V[r][col]] or [z3.RealVal(0)]) == 0)
    norm = []
    for i in range(K):
        c, lo, hi = data.c[i], data.a_lo[i], data.a_hi[i]
        terms = [num(lo[k] - c[k] - delta) * yp[i][k] + num(c[k] - delta - hi[k]) * ym[i][k] for k in range(d)]
        if shared:
            s.add(mh[i] >= 0, ml[i] >= 0)
            terms += [mh[i], -ml[i]]
        s.add(z3.Sum(terms) >= 0)
        norm += [num(c[k] + delta) * yp[i][k] - num(c[k] - delta) * ym[i][k] for k in range(d)]
    s.add(z3.Sum(norm) <= -1)
    if shared:
        s.add(z3.Sum([num(data.S_lo[i]) * ml[i] - num(data.S_hi[i]) * mh[i] for i in range(K)]) >= 0)
    verdict = s.check()
    if verdict == z3.unsat:
        return "unsat"
    if verdict != z3.sat:
        return None
    model = s.model()

    def val(v: z3.ArithRef) -> Fraction:
        r = model.eval(v, model_completion=True)
        return Fraction(r.numerator_as_long(), r.denominator_as_long())
    ys = [[val(yp[i][k]) - val(ym[i][k]) for k in range(d)] for i in range(K)]
    return _multipliers_from(data, ys, [val(v) for v in mh] if shared else [],
                             [val(v) for v in ml] if shared else [], delta, shared)


def _certificate(inst: Instance, claim: str, data: _Data, delta: Fraction, margin: Fraction,
                 multipliers: dict | None, tolerance: float, pieces: list | None = None) -> dict:
    def enc(x: Any) -> Any:
        if isinstance(x, Fraction):
            return frac_str(x)
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            return {k: enc(v) for k, v in x.items()}
        return x
    entries = []
    for i in range(len(data.members)):
        entry = {"c": data.c[i], "a_lo": data.a_lo[i], "a_hi": data.a_hi[i]}
        if claim == "L1+":
            entry.update(S_lo=data.S_lo[i], S_hi=data.S_hi[i])
        entries.append(entry)
    cert = {"format": CERT_FORMAT, "claim": claim, "instance": to_dict(inst),
            "instance_sha256": digest(inst), "members": list(data.members),
            "delta": delta, "margin": margin, "data": entries,
            "uncertified": {"tolerance": tolerance, "kappa": float(data.kappa), "residual": float(data.residual),
                     "margin_float": float(margin), "delta_float": float(delta)}}
    if claim == "L1+":
        cert["logit_shift"] = data.shift
    if pieces is None:
        cert["multipliers"] = multipliers
    else:
        cert["pieces"] = [{"z_lo": z_lo, "z_hi": z_hi, "sigma_max": cap, "multipliers": fam}
                          for (z_hi, z_lo, cap), fam in pieces]
    return enc(cert)


def certify(inst: Instance, claim: str = "L1", tolerance: float = DEFAULT_TOLERANCE,
            timeout_ms: int = 60_000, decide_injectivity: bool = False,
            sphere: SphereBudget | None = None, normaliser: bool | None = None) -> CertifyResult:
    """Certify that no prompt of any length memorizes the instance (L1 or L1+), with a margin.

    sphere: the branch-and-bound budget of the margin's refinement on each member's delta-sphere
    (verify/encoders/l1_sphere.py); NO_REFINEMENT keeps the global (1 - kappa) delta; None: the
    default budget up to d = REFINE_MAX_D, none beyond (see refinement_budget).
    normaliser: use the prompt's shared normaliser (the L1+ system; always for L1+). For L1, None
    tries it first up to d = REFINE_MAX_D (its relaxation is the tighter one: the same statement
    about the same model, and the certificate then says "shared_normaliser": true), the plain
    system beyond, or where the shared one ends unknown (where it is feasible, so is the plain).
    """
    if claim not in CLAIMS:
        from peftaudit.errors import UnknownNameError
        raise UnknownNameError("claim", claim, list(CLAIMS))
    why = hypotheses(inst, decide_injectivity)
    if why is not None:
        return CertifyResult(claim, "not-applicable", why)
    data = _problem_data(inst, _group(inst))
    if claim == "L1+":
        result = _certify_shared(inst, data, tolerance, timeout_ms)
    elif normaliser is False or (normaliser is None and inst.spec.d > REFINE_MAX_D):
        result = _certify_plain(inst, claim, data, tolerance, timeout_ms)
    else:  # the shared normaliser's system is the tighter relaxation: the plain one only where it fails
        result = _as_l1(_certify_plain(inst, "L1+", data, tolerance, timeout_ms))  # pieces: L1+ only (cost)
        if result.status == "unknown" and normaliser is None:  # not-certified there is not-certified here too:
            result = _certify_plain(inst, claim, data, tolerance, timeout_ms)  # the plain relaxation is looser
    sphere = refinement_budget(inst.spec.d, sphere)
    if result.status == "certified" and sphere.leaves > 0:
        result = _with_sphere(inst, data, result, sphere)
    return result


def _certify_shared(inst: Instance, data: _Data, tolerance: float, timeout_ms: int) -> CertifyResult:
    """The L1+ system: plain, then sharpened by the normaliser bound's pieces when they do better."""
    result = _certify_plain(inst, "L1+", data, tolerance, timeout_ms)
    if result.status in ("certified", "not-certified"):
        sharper = _certify_with_normaliser(inst, data, result, tolerance)
        if sharper is not None:
            return sharper
    return result


def _as_l1(result: CertifyResult) -> CertifyResult:
    """An L1+-system result restated as an L1 certificate (claim "L1", "shared_normaliser": true), re-checked."""
    if result.status != "certified":
        return replace(result, claim="L1")
    cert = dict(result.certificate, claim="L1", shared_normaliser=True)
    if not self_check(cert).valid:
        return CertifyResult("L1", "unknown", "the shared-normaliser certificate did not check as an L1 certificate")
    return replace(result, claim="L1", certificate=cert,
                   reason=result.reason.replace("; checked)", "; the prompt's shared normaliser; checked)", 1))


def _with_sphere(inst: Instance, data: _Data, result: CertifyResult, budget: SphereBudget) -> CertifyResult:
    """The certificate with cell trees on each member's delta-sphere, when they prove a larger margin."""
    delta = result.delta
    mlp = MLPWeights.of_layer(inst.spec.mlp, inst.weights)
    margin_f, record, floors = refined_margin(mlp, data.centres, data.residuals, float(data.kappa), float(delta),
                                              budget)
    if not margin_f > float(result.margin):
        return result
    margin = Fraction(margin_f)
    cert = dict(result.certificate, margin=frac_str(margin), sphere=record)
    cert["uncertified"] = dict(cert["uncertified"], margin_float=margin_f, global_margin=float(result.margin),
                               sphere_rho_over_delta=[f / float(delta) for f in floors],
                               sphere_cells=cell_count(record))
    if not self_check(cert).valid:
        return result
    old = f"below {float(result.margin):.6g} "
    reason = result.reason.replace(old, f"below {margin_f:.6g} ", 1).replace(
        "; checked)", f"; the MLP's local behaviour on the delta-sphere, {cert['uncertified']['sphere_cells']} "
        f"cells, instead of (1 - kappa) delta, which gives {float(result.margin):.6g}; checked)")
    return CertifyResult(result.claim, "certified", reason, margin=margin, delta=delta, best_error=result.best_error,
                         members=result.members, certificate=cert)


def _certify_with_normaliser(inst: Instance, data: _Data, plain: CertifyResult,
                             tolerance: float) -> CertifyResult | None:
    """L1+ with the bound sigma <= exp(-<k, v>) (verify/l1_normaliser.py), when it does better."""
    from .l1_normaliser import sharpen

    found = sharpen(data, plain.best_error or 0.0)
    if found is None:
        return None
    delta, pieces = found
    margin = _global_margin(data, delta)
    if float(margin) <= tolerance or (plain.margin is not None and margin <= plain.margin):
        return None
    cert = _certificate(inst, "L1+", data, delta, margin, None, tolerance, pieces)
    if not self_check(cert).valid:
        return None
    return CertifyResult("L1+", "certified",
                         f"no prompt of any length gets the last-token error below {float(margin):.6g} "
                         f"(attention radius {float(delta):.6g}, kappa {float(data.kappa):.3g}; with the normaliser "
                         f"bound sigma <= exp(-<k, v>) over {len(pieces)} pieces; checked)",
                         margin=margin, delta=delta, best_error=plain.best_error, members=data.members,
                         certificate=cert)


def _exact_certificate(inst: Instance, claim: str, data: _Data, sol: np.ndarray, delta: Fraction,
                       tolerance: float) -> dict | None:
    """The checked certificate that float multipliers give once made exact, or None."""
    shared = claim == "L1+"
    ys, mh, ml, _, radius = _repair(data, sol, shared)
    delta = min(delta, radius)
    margin = _global_margin(data, delta)
    if float(margin) <= tolerance:
        return None
    cert = _certificate(inst, claim, data, delta, margin, _multipliers_from(data, ys, mh, ml, delta, shared),
                        tolerance)
    return cert if self_check(cert).valid else None


def _certify_plain(inst: Instance, claim: str, data: _Data, tolerance: float, timeout_ms: int) -> CertifyResult:
    """L1, or L1+ without the normaliser bound: bisection, exact multipliers, independent check."""
    shared = claim == "L1+"
    best, sol = _bisect(data, shared)
    if sol is None or best <= 0:
        return CertifyResult(claim, "not-certified", "the relaxation is feasible at delta = 0: some prompt may "
                             "memorize the data (no certificate can exist)", best_error=0.0, members=data.members)
    delta = Fraction(best) * (1 - Fraction(CERT_SHRINK))
    margin = _global_margin(data, delta)
    if float(margin) <= tolerance:
        return CertifyResult(claim, "not-certified",
                             f"best layer-output margin {float(margin):.3g} is not above the tolerance {tolerance:g}",
                             best_error=best, members=data.members)
    how = "float LP multipliers, made exact"
    cert = _exact_certificate(inst, claim, data, sol, delta, tolerance)
    if cert is None:  # near-null directions of V may have fooled the float LP: ask for sum_i y_i = 0
        best_sum, sol_sum = _bisect(data, shared, sum_zero=True)
        if sol_sum is not None and best_sum > 0:
            how = "float LP multipliers with sum_i y_i = 0, made exact"
            cert = _exact_certificate(inst, claim, data, sol_sum, Fraction(best_sum) * (1 - Fraction(CERT_SHRINK)),
                                      tolerance)
    if cert is not None:
        delta, margin = Fraction(cert["delta"]), Fraction(cert["margin"])
    else:
        how = "z3 exact dual"
        delta = Fraction(best) * (1 - Fraction(CERT_SHRINK))
        margin = _global_margin(data, delta)
        mult = _z3_multipliers(data, delta, shared, timeout_ms)
        if mult == "unsat":
            return CertifyResult(claim, "not-certified", f"z3: no multipliers exist at attention radius "
                                 f"{float(delta):.3g}, so the relaxation is feasible there (the float LP's "
                                 f"{best:.3g} was a rounding artifact)", best_error=float(delta), members=data.members)
        if mult is None:
            return CertifyResult(claim, "unknown", "no exact multipliers: the float LP's did not survive exact "
                                 "arithmetic and z3 timed out", best_error=best, members=data.members)
        cert = _certificate(inst, claim, data, delta, margin, mult, tolerance)
        result = self_check(cert)
        if not result.valid:
            return CertifyResult(claim, "unknown", f"exact check failed: {result.reason}", best_error=best,
                                 members=data.members)
    return CertifyResult(claim, "certified",
                         f"no prompt of any length gets the last-token error below {float(margin):.6g} "
                         f"(attention radius {float(delta):.6g}, kappa {float(data.kappa):.3g}; {how}; checked)",
                         margin=margin, delta=delta, best_error=best, members=data.members, certificate=cert)
