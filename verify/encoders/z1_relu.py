"""Encoders for Z1's ReLU form: the construction as a witness on the bounded domain (Z1-relu) and a
point outside it where the construction leaves the target (Z1-relu-unbounded)."""

from __future__ import annotations

import numpy as np

from peftaudit.linear_instance import ReluInstance, relu_digest, relu_to_dict
from peftaudit.models.relu_lora import adapted, construct, evaluate, outside_point

from ..checkers import CERT_FORMAT
from .l1 import CertifyResult


def _parts(inst: ReluInstance) -> dict | str:
    try:
        factors, biases, R = construct(list(inst.layers), list(inst.target), inst.bound)
    except ValueError as exc:
        return str(exc)
    return {"rank": R, "B": [B.tolist() for B, _ in factors], "A": [A.tolist() for _, A in factors],
            "biases": [b.tolist() for b in biases], "_factors": factors, "_biases": biases}


def _base(claim: str, inst: ReluInstance, parts: dict) -> dict:
    return {"format": CERT_FORMAT, "claim": claim, "instance": relu_to_dict(inst), "instance_sha256": relu_digest(inst),
            **{k: v for k, v in parts.items() if not k.startswith("_")}}


def hypotheses(inst: ReluInstance) -> str | None:
    parts = _parts(inst)
    return parts if isinstance(parts, str) else None


def certify_z1_relu(inst: ReluInstance, tolerance: float = 0.0) -> CertifyResult:
    parts = _parts(inst)
    if isinstance(parts, str):
        return CertifyResult("Z1-relu", "not-applicable", parts)
    rng = np.random.default_rng(0)
    X = rng.uniform(-inst.bound, inst.bound, size=(4096, inst.spec.d))
    sampled = float(np.abs(evaluate(adapted(list(inst.layers), parts["_factors"], parts["_biases"]), X)
                           - evaluate(list(inst.target), X)).max())
    cert = {**_base("Z1-relu", inst, parts), "epsilon": 1e-9, "margin": 1e-9,
            "uncertified": {"sampled_max_error": sampled}}
    return CertifyResult("Z1-relu", "certified", f"witness built (sampled error {sampled:.2g})", best_error=sampled,
                         certificate=cert)


def certify_z1_relu_unbounded(inst: ReluInstance, tolerance: float = 0.0) -> CertifyResult:
    parts = _parts(inst)
    if isinstance(parts, str):
        return CertifyResult("Z1-relu-unbounded", "not-applicable", parts)
    x, gap = outside_point(list(inst.layers), list(inst.target), parts["_factors"], parts["_biases"], inst.bound)
    if not gap > 1e-6:
        return CertifyResult("Z1-relu-unbounded", "not-certified", "no point found where the construction leaves "
                                                                   "the target")
    cert = {**_base("Z1-relu-unbounded", inst, parts), "point": x.tolist(), "margin": gap / 2}
    return CertifyResult("Z1-relu-unbounded", "certified", f"float64 gap {gap:.3g} at a point outside the domain",
                         best_error=gap, certificate=cert)
