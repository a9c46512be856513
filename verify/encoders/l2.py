"""Encoder for claim L2 (robust prompt-length lower bound); the system is documented in
verify/check_l2.py, which re-verifies every certificate independently."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from peftaudit.instance import Instance, digest, to_dict

from ..checkers import CERT_FORMAT
from .cells import Budget
from .l1_sphere import cell_count, refined_margin, refinement_budget
from .l2_pair import DEFAULT_BUDGET as PAIR_BUDGET, pair_cells
from .selfcheck import checked_result
from .l1 import CertifyResult, DEFAULT_TOLERANCE
from .mlp import MLPWeights, branch_lipschitz, evaluate_exact, invert
from .rational import frac_str, matmul, matvec, positive_definite, qmat, qvec, sqrt_bounds, transpose
from .softmax_bounds import attention_enclosure


def _positions(inst: Instance) -> list[tuple[int, int]]:
    n, k = inst.n_tokens, inst.n_targets
    return [(e, p) for e in range(len(inst.dataset)) for p in range(n - k, n)]


def hypotheses(inst: Instance, lora_variant: bool = False) -> str | None:
    """L2's hypotheses; lora_variant: targets from a rank-1 LoRA, so N + 1 <= d replaces 2N <= d."""
    spec = inst.spec
    if not spec.single_head_single_layer or spec.layernorm:
        return "L2 is about a single layer with a single head and no layer norm"
    if spec.mlp != "residual" or branch_lipschitz(MLPWeights.of_layer(spec.mlp, inst.weights)) >= 1:
        return ("the MLP must be injective (residual, kappa < 1)" if lora_variant
                else "the margin needs a residual MLP with branch bound kappa < 1")
    if lora_variant:
        if len(inst.dataset) < 2 or len(inst.dataset) + 1 > spec.d:
            return "the LoRA variant needs 2 <= N target positions with N + 1 <= d"
    elif min(len(_positions(inst)), spec.d // 2) < 2:
        return "L2 needs at least two target positions and d >= 4 (2N <= d)"
    return None


def certify_l2(inst: Instance, tolerance: float = DEFAULT_TOLERANCE, *, pair_budget: Budget = PAIR_BUDGET,
               sphere: Budget | None = None) -> CertifyResult:
    """Certify that every prompt shorter than N keeps a layer-output error above a margin.

    pair_budget: the cell tree of the structured one-token radius (N = 2); sphere: the cell trees
    of the MLP's local floor (None: l1_sphere.refinement_budget's default); Budget(leaves=0) turns
    either off (the Gram radius, (1 - kappa) delta)."""
    why = hypotheses(inst)
    if why is not None:
        return CertifyResult("L2", "not-applicable", why)
    w, spec = inst.weights, inst.spec
    p_ = "layers.0.heads.0."
    Wv = qmat(w[p_ + "Wv"])
    V = matmul(qmat(w[p_ + "Wo"]), Wv) if p_ + "Wo" in w else Wv
    Wq, Wk = qmat(w[p_ + "Wq"]), qmat(w[p_ + "Wk"])
    mlp = MLPWeights.of_layer(spec.mlp, w)
    E = qmat(w["positional"]) if spec.positions else None
    positions = _positions(inst)[: spec.d // 2]
    N, d = len(positions), spec.d
    data, centres, residuals = [], [], []
    for e, p in positions:
        X = qmat(inst.dataset[e].X)
        if E is not None:
            X = [[a + b for a, b in zip(x, pe)] for x, pe in zip(X, E)]
        visible = X if spec.attention == "encoder" else X[: p + 1]
        a_lo, a_hi = attention_enclosure(V, matvec(transpose(Wk), matvec(Wq, X[p])), visible)
        y = inst.dataset[e].Y[p - (inst.n_tokens - inst.n_targets)]
        c = qvec(invert(mlp, y) - np.array([float(v) for v in X[p]]))
        centres.append([a + b for a, b in zip(X[p], c)])
        out = evaluate_exact(mlp, centres[-1])
        residuals.append(max(abs(o - t) for o, t in zip(out, qvec(y))))
        data.append({"c": c, "a_lo": a_lo, "a_hi": a_hi})
    cols = [row["c"] for row in data] + [[(l + h) / 2 for l, h in zip(row["a_lo"], row["a_hi"])] for row in data]
    width2 = sum((((h - l) / 2) ** 2 for row in data for l, h in zip(row["a_lo"], row["a_hi"])), Fraction(0))
    G = [[sum((a * b for a, b in zip(ci, cj)), Fraction(0)) for cj in cols] for ci in cols]
    lam_min = float(np.linalg.eigvalsh(np.array([[float(g) for g in row] for row in G])).min())
    mu = Fraction(lam_min * (1 - 1e-6)) if lam_min > 0 else Fraction(0)
    for _ in range(40):
        if mu > 0 and positive_definite([[g - (mu if i == j else 0) for j, g in enumerate(r)] for i, r in enumerate(G)]):
            break
        mu /= 2
    else:
        mu = Fraction(0)
    s, r = sqrt_bounds(mu)[0], sqrt_bounds(width2)[1]
    t = sqrt_bounds(Fraction(1, N * d))[0]
    delta = (s - r) * t if mu > 0 else Fraction(0)
    extra, how = {}, "sigma_min([c, a])"
    if N == 2 and pair_budget.leaves > 0:  # one-token prompts: the structured radius (checkers/l2_pair.py)
        tree, floor = pair_cells(*(np.array([[float(v) for v in row[k]] for row in data]) for k in ("c", "a_lo", "a_hi")),
                                 budget=pair_budget)
        structured = Fraction(floor * (1 - 1e-9)) if math.isfinite(floor) and floor > 0 else Fraction(0)
        if structured > delta:
            delta, extra, how = structured, {"pair_cells": tree}, "the structured one-token radius"
    kappa = branch_lipschitz(mlp)
    margin = (1 - kappa) * delta - max(residuals)
    sphere = refinement_budget(d, sphere)
    if delta > 0 and sphere.leaves > 0:
        refined, record, _ = refined_margin(mlp, centres, residuals, float(kappa), float(delta), sphere)
        if refined > float(margin):
            margin, extra = Fraction(refined), {**extra, "sphere": record}
            how += f", the MLP's local floor on the delta-spheres ({cell_count(record)} cells)"
    if delta <= 0 or float(margin) <= tolerance:
        return CertifyResult("L2", "not-certified", f"sigma_min([c, a]) gives no margin above {tolerance:g} "
                             f"(lower bound {float(s - r):.3g}, N={N})", best_error=float(max(delta, 0)))
    enc = lambda v: frac_str(v) if isinstance(v, Fraction) else [enc(x) for x in v]  # noqa: E731
    gram = {"mu": enc(mu), "s": enc(s), "r": enc(r), "t": enc(t)} if mu > 0 else {}
    cert = {"format": CERT_FORMAT, "claim": "L2", "instance": to_dict(inst),
            "instance_sha256": digest(inst), "positions": [list(p) for p in positions],
            "data": [{k: enc(v) for k, v in row.items()} for row in data], **gram,
            "delta": enc(delta), "margin": enc(margin), **extra,
            "uncertified": {"N": N, "prompt_params_needed": N * d, "gram_radius": float(max(s - r, 0) * t),
                            "radius": float(delta)}}
    return checked_result("L2", cert, f"every prompt shorter than {N} tokens ({N * d} parameters) keeps a "
                          f"layer-output error >= {float(margin):.6g} (attention radius {float(delta):.6g} from {how}); "
                          "checked", margin=margin, delta=delta)
