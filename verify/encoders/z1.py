"""Encoder for claim Z1: the exact lower bound sigma_{RL+1}(E) at rank R0 = threshold - 1 and Zeng and
Lee's construction at R0 and at the threshold (verify/checkers/z1.py documents the certificate)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from peftaudit.linear_instance import LinearInstance, digest, to_dict
from peftaudit.models.linear import adapted_error, construction, product

from ..checkers import CERT_FORMAT
from .l1 import CertifyResult
from .rational import frac_str
from .selfcheck import checked_result

SHRINK = 1 - 1e-6   # the certified bound sits this close below the float singular value


def _rank_e(inst: LinearInstance) -> int:
    E = inst.target - product(list(inst.layers))
    s = np.linalg.svd(E, compute_uv=False)
    return int((s > 1e-9 * max(1.0, s[0])).sum())


def hypotheses(inst: LinearInstance) -> str | None:
    """The construction's assumption: the partial products it inverts are non-singular."""
    threshold = -(-_rank_e(inst) // inst.depth)
    _, cond = construction(list(inst.layers), inst.target, threshold)
    if not np.isfinite(cond):
        return "a partial product W_L ... W_(l+1) or the adapted prefix is singular: the construction does not apply"
    return None


def _upper(inst: LinearInstance, factors) -> dict:
    M = adapted_error(list(inst.layers), inst.target, factors)
    err = float(np.linalg.norm(M, 2))
    upper = max(err * (1 + 1e-6), 1e-13)
    return {"B": [B.tolist() for B, _ in factors], "A": [A.tolist() for _, A in factors],
            "t2": frac_str(Fraction(upper) ** 2 * Fraction(99, 100) + Fraction(err) ** 2 / 100), "upper": upper}


def certify_z1(inst: LinearInstance, tolerance: float = 0.0) -> CertifyResult:
    why = hypotheses(inst)
    if why:
        return CertifyResult("Z1", "not-applicable", why)
    layers, L = list(inst.layers), inst.depth
    E = inst.target - product(layers)
    _, s, Vt = np.linalg.svd(E)
    threshold = -(-_rank_e(inst) // L)
    R0 = threshold - 1
    k = R0 * L + 1
    lower = float(s[k - 1]) * SHRINK
    cert = {"format": CERT_FORMAT, "claim": "Z1", "instance": to_dict(inst), "instance_sha256": digest(inst),
            "rank": R0, "Q": Vt[:k].T.tolist(), "s2": frac_str(Fraction(lower) ** 2 / Fraction(SHRINK)),
            "lower": lower, "margin": lower,
            "at": _upper(inst, construction(layers, inst.target, threshold)[0]),
            "uncertified": {"singular_values": s.tolist()}}
    if R0 >= 1:
        cert["below"] = _upper(inst, construction(layers, inst.target, R0)[0])
    return checked_result("Z1", cert, margin=Fraction(lower))
