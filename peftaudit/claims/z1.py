"""Claim Z1 (SPEC section 3; Zeng and Lee, ICLR 2024): the LoRA rank threshold of deep linear networks.

Certified per instance (verify/checkers/z1.py): rank R0 = threshold - 1 on every layer leaves a
spectral error above sigma_{R0 L + 1}(E), exactly; Zeng and Lee's construction attains it at R0 and
matches the target at the threshold, with its non-singularity assumption checked (an instance
that violates it is vacuous). The study adds the search: batched Levenberg-Marquardt over the LoRA
factors from random starts at every rank up to the threshold; a search result below a certified
bound would be a soundness conflict (ERROR), confirmed in exact arithmetic before it is reported.
"""

from __future__ import annotations

import numpy as np

from peftaudit.settings import Profile

from .base import Claim, register_claim
from .z1_report import rank_table

SOURCE = "Zeng and Lee, 'The Expressive Power of Low-Rank Adaptation', ICLR 2024 (linear networks)"
CONFIGS = ((4, 2, 3), (6, 2, 5), (6, 3, 6), (8, 2, 6), (8, 3, 7), (5, 2, 4))   # (D, L, rank of E)
SOLVED = 1e-8   # a spectral error at most this (relative to ||W_bar||) matches the target


def _draw(profile: Profile, seed: int):
    from peftaudit.strategies.z1_instances import z1_instance
    rng = np.random.default_rng([seed, 26])
    count = max(profile.instances, 4)
    out = [z1_instance(rng, *CONFIGS[i % len(CONFIGS)]) for i in range(count - 1)]
    return out + [z1_instance(rng, 6, 2, 5, singular=True)]   # planted: the assumption fails


def _hypotheses(inst):
    from peftaudit.verify.encoders.z1 import hypotheses
    return hypotheses(inst)


def _certify(inst, tolerance: float):
    from peftaudit.verify.encoders.z1 import certify_z1
    return certify_z1(inst, tolerance)


def _conflict(inst, factors, lower: float) -> bool:
    """Does the search's adapter err by less than the certified bound? Screened in float64, then
    proved in exact arithmetic by the checker (only a proved conflict is reported)."""
    from fractions import Fraction

    from peftaudit.linear_instance import to_dict
    from peftaudit.models.linear import adapted_error
    from peftaudit.verify.checkers.z1 import error_below
    if float(np.linalg.norm(adapted_error(list(inst.layers), inst.target, factors), 2)) >= lower * (1 + 1e-9):
        return False
    return error_below(to_dict(inst), [(B.tolist(), A.tolist()) for B, A in factors], Fraction(lower))


def _study(instances, certificates: dict, profile: Profile, seed: int, log=lambda s: None) -> dict:
    from peftaudit.search.linear import search
    from peftaudit.verify.encoders.z1 import _rank_e

    rows, violations = [], []
    for i, inst in enumerate(instances):
        cert = certificates.get(i) or {}
        facts = cert.get("established") or {}
        rank_e = _rank_e(inst)
        threshold = -(-rank_e // inst.depth)
        scale = max(1.0, float(np.linalg.norm(inst.target, 2)))
        errors, needed = {}, None
        for R in range(1, threshold + 1):
            err, factors = search(list(inst.layers), inst.target, R, restarts=profile.restarts,
                                  steps=max(40, profile.polish_steps // 2), seed=seed + 31 * i + R)
            errors[R] = err
            if needed is None and err <= SOLVED * scale:
                needed = R
            if cert.get("status") == "certified" and R == threshold - 1 and _conflict(inst, factors, facts["lower"]):
                violations.append(f"instance {i}: the search's rank-{R} LoRA errs by {err:.6g}, below the certified "
                                  f"bound {facts['lower']:.6g}")
        log(f"Z1: instance {i}: threshold {threshold}, search needed rank {needed}")
        rows.append({"instance": i, "D": inst.spec.d, "L": inst.depth, "family": inst.meta.get("family"),
                     "numerical_rank_e": rank_e, "exact_rank_e": facts.get("rank_e"),
                     "rank_certificate": facts.get("threshold"), "rank_construction": facts.get("threshold"),
                     "rank_search": needed, "lower": facts.get("lower"), "upper_below": facts.get("upper_below"),
                     "upper_at": facts.get("upper_at"), "search_errors": {str(k): v for k, v in errors.items()},
                     "status": cert.get("status"), "vacuous": cert == {}})
    return {"kind": "rank-threshold", "rows": rows, "violations": violations}


Z1 = register_claim(Claim(
    id="Z1",
    title="LoRA of rank R on every layer of a deep linear network cannot beat sigma_{RL+1}(E); the threshold is tight",
    source=SOURCE,
    formalization=(
        "f(x) = W_L ... W_1 x with D x D layers, target W_bar, E = W_bar - W_L ... W_1. Every LoRA of rank R on all "
        "L layers leaves a spectral error >= sigma_{RL+1}(E) (the product's update has rank <= RL). Certified per "
        "instance at R0 = ceil(rank(E) / L) - 1, rank(E) the numerical rank: an exact lower bound on "
        "sigma_{R0 L + 1}(E) by Courant-Fischer (Q^T (E^T E - s2 I) Q positive definite, exact LDL^T), and Zeng "
        "and Lee's construction, its non-singularity assumption checked, attaining it at R0 and matching W_bar at "
        "R0 + 1 (spectral errors bounded exactly from its binary64 factors). The exact rank of E is usually D: "
        "a binary64 target carries rounding in every direction, so the threshold is the robust one."),
    kind="cannot",
    draw=_draw,
    hypotheses=_hypotheses,
    falsifiers=(),
    certify=_certify,
    refuted_by="a LoRA found by search whose exact spectral error is below the certified bound (a soundness "
               "conflict: ERROR)",
    evidence="",
    study=_study,
    study_table=rank_table,
))


RELU_CONFIGS = ((4, 4, 2), (4, 2, 1), (3, 3, 1), (6, 4, 2), (5, 2, 1), (4, 6, 3))   # (D, L, L_target)


def _draw_relu(profile: Profile, seed: int):
    from peftaudit.strategies.z1_instances import relu_instance
    rng = np.random.default_rng([seed, 27])
    return [relu_instance(rng, *RELU_CONFIGS[i % len(RELU_CONFIGS)]) for i in range(max(profile.instances, 4))]


def _relu_hypotheses(inst):
    from peftaudit.verify.encoders.z1_relu import hypotheses
    return hypotheses(inst)


def _certify_relu(inst, tolerance: float):
    from peftaudit.verify.encoders.z1_relu import certify_z1_relu
    return certify_z1_relu(inst, tolerance)


def _certify_relu_unbounded(inst, tolerance: float):
    from peftaudit.verify.encoders.z1_relu import certify_z1_relu_unbounded
    return certify_z1_relu_unbounded(inst, tolerance)


Z1_RELU = register_claim(Claim(
    id="Z1-relu",
    title="ReLU networks: LoRA of rank ceil(D L_bar / L) with tuned biases represents a depth-L_bar target on a "
          "bounded domain",
    source=SOURCE.replace("(linear networks)", "(ReLU networks)"),
    formalization=(
        "A frozen ReLU network of width D and depth L, a target of depth L_bar dividing L, inputs in [-B, B]^D. "
        "Zeng and Lee's construction (groups of L / L_bar layers whose adapted matrices multiply to the target's, "
        "inner biases raised so those ReLUs are the identity on the domain) is a witness: the checker proves, in "
        "exact arithmetic (exact affine ranges on boxes), that every inner ReLU is the identity on the domain and "
        "that sup |f_adapted - f_bar| <= 1e-9 there (binary64 factors cannot make it exactly 0; the bound found "
        "is about 1e-14)."),
    kind="can",
    draw=_draw_relu,
    hypotheses=_relu_hypotheses,
    falsifiers=(),
    certify=_certify_relu,
    refuted_by="a constructive witness that fails its exact check",
    group="Z1",
    evidence="witness",
))

Z1_RELU_UNBOUNDED = register_claim(Claim(
    id="Z1-relu-unbounded",
    title="Without the bounded domain: the construction's LoRA matches the target on all of R^D",
    source=SOURCE.replace("(linear networks)", "(ReLU networks)"),
    formalization=(
        "Z1-relu's statement with the bounded input domain dropped, for the construction's adapter. Outside the "
        "domain an inner pre-activation turns negative and the network leaves the target: a point (found along "
        "random directions at 2x to 64x the bound) where the two networks differ by more than a margin, evaluated "
        "exactly in rationals, refutes it. (This refutes the construction on R^D, not every conceivable adapter.)"),
    kind="cannot",
    draw=_draw_relu,
    hypotheses=_relu_hypotheses,
    falsifiers=(),
    certify=_certify_relu_unbounded,
    refuted_by="a point where the adapted network and the target differ, evaluated exactly",
    group="Z1",
    expect="REFUTED",
    dropped="the bounded input domain",
    evidence="witness",
))
