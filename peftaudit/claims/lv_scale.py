"""Claim LV-scale: scalings of W_v's rows (IA3 on v, W_v -> diag(l) W_v) cannot fit some datasets,
with a certified floor per instance and the best scaling's error above it: the row-scaling
companion of claim LV (issue 25). The certificate: verify/encoders/lv_scale.py; its independent
checker: verify/checkers/lv_scale.py."""

from __future__ import annotations

import numpy as np

from peftaudit.settings import Profile
from peftaudit.strategies.instances import lv_instance

from .base import Claim, MethodRun, register_claim
from .lv_report import scale_table


def _draw(profile: Profile, seed: int):
    """N = d + 1 examples at d = 2, 4, 8 with random targets (planted controls: in the study)."""
    rng = np.random.default_rng([seed, 26])
    return [lv_instance(rng, (2, 4, 8)[i % 3], (2, 4, 8)[i % 3] + 1, attention="causal" if i % 2 else "encoder")
            for i in range(profile.instances)]


def planted_controls(seed: int) -> list:
    """Instances whose targets come from a hidden scaling of W_v's rows: a scaling fits them, so a
    certificate on any of them is a soundness failure (the study checks this on every audit)."""
    rng = np.random.default_rng([seed, 27])
    return [lv_instance(rng, d, d + 1, planted_scale=True, attention=attention)
            for d, attention in ((2, "encoder"), (4, "causal"), (8, "encoder"))]


def _hypotheses(inst):
    from peftaudit.verify.encoders.lv_scale import hypotheses
    return hypotheses(inst)


def _certify(inst, tolerance: float):
    from peftaudit.verify.encoders.lv_scale import certify_lv_scale
    return certify_lv_scale(inst, tolerance)


def _study(instances, certificates: dict, profile: Profile, seed: int, log=lambda s: None) -> dict:
    """Per instance, the sandwich of the best row scaling's error: the certified floor below, and
    above it the Chebyshev construction's error as the interval replay of the exact model encloses
    it (the construction solves the float64 problem at the states, so the two meet up to the
    (1 - kappa) of the MLP's inversion and the enclosures)."""
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import rigorous_replay
    from peftaudit.verify.encoders.lv_scale import construct_scaling

    from peftaudit.verify.encoders.lv_scale import certify_lv_scale
    from ..evidence.outcome import SOLVED_MAX_ERROR, TOLERANCE

    ia3 = get_method("ia3", targets="v")
    rows, violations = [], []
    controls = [(f"control {c}", inst, certify_lv_scale(inst, TOLERANCE).to_json())
                for c, inst in enumerate(planted_controls(seed))]
    for i, inst, cert in [(str(i), inst, certificates.get(i, {})) for i, inst in enumerate(instances)] + controls:
        floor = cert.get("margin") if cert.get("status") == "certified" else None
        upper = rigorous_replay(ia3, inst, construct_scaling(inst))[1]
        if floor is not None and upper < floor:  # a soundness conflict: the claim is ERROR
            violations.append(f"instance {i}: the construction reaches {upper:.3g}, below the certified floor "
                              f"{floor:.3g}")
        if i.startswith("control") and (floor is not None or upper > SOLVED_MAX_ERROR):
            violations.append(f"planted {i}: " + ("certified although a scaling fits it" if floor is not None else
                                                  f"the construction does not memorize it ({upper:.3g})"))
        log(f"LV-scale: instance {i}: floor {floor}, construction {upper:.3g}")
        rows.append({"instance": i, "d": inst.spec.d, "N": len(inst.dataset), "family": inst.meta.get("family"),
                     "floor": floor, "construction": upper,
                     "ratio": None if floor is None or upper <= 0 else floor / upper})
    return {"kind": "lv-scale-sandwich", "rows": rows, "violations": violations}


LV_SCALE = register_claim(Claim(
    id="LV-scale",
    title="Scalings of W_v's rows (IA3 on v) cannot fit these datasets: a certified floor per instance",
    source="The row-scaling companion of claim LV (issue 25): IA3 (Liu et al. 2022) against Wang et al. (NeurIPS "
           "2023), Section 5's comparison of prompt tuning with weight-space methods",
    formalization=(
        "Single layer, single head without an output map, residual MLP with kappa < 1, one last-position target per "
        "example. A scaling W_v -> diag(l) W_v keeps the attention weights, so the state's coordinate k is "
        "x_ik + l_k v_ik with v_i = W_v u_i: fitting needs l_k v_ik ~ b_ik = H_ik - x_ik (H_i = g^{-1}(Y_i)) for "
        "every example, a one-variable Chebyshev problem per coordinate. Two examples i, j give, whatever l_k, an "
        "error >= |v_ik b_jk - v_jk b_ik| / (|v_ik| + |v_jk|) at the states, (1 - kappa) times that at the output "
        "(the LP dual; intervals carry the enclosures). Instances: N = d + 1 examples at d = 2, 4, 8 with random "
        "targets, and three planted controls from hidden row scalings that must never be certified; falsifiers: IA3 on W_v (built in and peft's); "
        "LoRA on W_v and full fine-tuning are compared. IA3 on keys or the MLP (peft-ia3's default also scales "
        "fc1) is not covered."),
    kind="cannot",
    draw=_draw,
    hypotheses=_hypotheses,
    falsifiers=(MethodRun("ia3", {"targets": "v"}, (1,)), MethodRun("peft-ia3", {"targets": "v"}, (1,))),
    comparisons=(MethodRun("lora", {"targets": "v"}, (1,)), MethodRun("full", {}, (1,))),
    certify=_certify,
    study=_study,
    study_table=scale_table,
    group="LV",
))
