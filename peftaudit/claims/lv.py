"""Claim LV: rank-r updates of W_v alone (LoRA on v, peft-lora on v, VeRA-style updates of W_v)
cannot fit some datasets, with a certified floor per instance: the weight-space side of the
paper's parameter comparison (issue 25). The certificate: verify/encoders/lv.py; its
independent checker: verify/checkers/lv.py."""

from __future__ import annotations

import numpy as np

from peftaudit.settings import Profile
from peftaudit.strategies.instances import lv_instance

from .base import Claim, MethodRun, register_claim
from .lv_report import rank_table

RANK = 1            # the claim's rank: no update of W_v of rank <= RANK fits the drawn datasets
PLANTED_RANK = 2    # every third instance: targets from a hidden rank-2 update (rank 1 is still certified)


def _draw(profile: Profile, seed: int):
    rng = np.random.default_rng([seed, 25])
    out = []
    for i in range(profile.instances):
        d = (2, 4, 8)[i % 3]
        planted = PLANTED_RANK if i % 3 == 2 and d > PLANTED_RANK else None
        out.append(lv_instance(rng, d, d + 1, planted_rank=planted, attention="causal" if i % 2 else "encoder"))
    return out


def _hypotheses(inst):
    from peftaudit.verify.encoders.lv import hypotheses
    return hypotheses(inst, RANK)


def value_rank_study(instances, certificates: dict, profile: Profile, seed: int, log=lambda s: None) -> dict:
    """Per instance, the rank an update of W_v needs as a sandwich: the largest rank LV
    certificates rule out (every rank from 0 up, each checked by the independent checker) and the
    smallest rank at which the construction memorizes, confirmed by the interval replay of the
    exact model (the parameter tables of LV, L2 and L2-lora read it)."""
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import rigorous_replay
    from peftaudit.verify.encoders.lv import certify_lv, construct_update, hypotheses, residual_matrix, value_facts

    from ..evidence.outcome import SOLVED_MAX_ERROR

    lora = get_method("lora", targets="v")
    rows, violations = [], []
    for i, inst in enumerate(instances):
        d, N = inst.spec.d, len(inst.dataset)
        below = 0
        applies = hypotheses(inst, 0) is None
        residual = residual_matrix(inst) if applies else None   # g^{-1} iterated once per instance
        facts = value_facts(inst, residual) if applies else None  # the exact enclosures, once for every rank
        for rank in range(min(d, N)):
            result = certify_lv(inst, rank, facts=facts)
            if result.status != "certified":  # "certified" only once the independent checker passed it
                break
            below = rank + 1
        witness = None
        for rank in range(max(1, below), min(d, N) + 1):
            if rigorous_replay(lora, inst, construct_update(inst, rank, residual))[1] <= SOLVED_MAX_ERROR:
                witness = rank
                break
        if witness is not None and witness < below:  # a soundness conflict: the claim is ERROR
            violations.append(f"instance {i}: the construction memorizes at rank {witness}, below the certified "
                              f"rank {below}")
        log(f"instance {i}: no update of W_v of rank < {below} fits; the construction memorizes at rank {witness}")
        rows.append({"instance": i, "d": d, "N": N, "family": inst.meta.get("family"), "certified_below": below,
                     "witness_rank": witness, "params_lower": 2 * d * below,
                     "params_upper": None if witness is None else 2 * d * witness, "tight": witness == below})
    return {"kind": "lv-sandwich", "rows": rows, "violations": violations}


def _certify(inst, tolerance: float):
    from peftaudit.verify.encoders.lv import certify_lv
    return certify_lv(inst, RANK, tolerance)


LV = register_claim(Claim(
    id="LV",
    title=f"Updates of W_v of rank <= {RANK} cannot fit these datasets (a certified floor for LoRA on v)",
    source="Eckart-Young applied to the value update of a single layer (issue 25), the weight-space side of "
           "Wang et al. (NeurIPS 2023), Section 5's comparison of prompt tuning with LoRA",
    formalization=(
        "Single layer, single head, residual MLP with kappa < 1, one last-position target per example. An update "
        "Delta of W_v keeps the attention weights, so the states before the MLP are x_i + V u_i + Wo Delta u_i; "
        "with H_i = g^{-1}(Y_i) and R = [H_i - x_i - V u_i], every Delta of rank <= r leaves a last-position max "
        "error >= (1 - kappa) sigma_{r+1}(R) / sqrt(d N). The certificate bounds sigma_{r+1} from below exactly "
        "(Courant-Fischer by an LDL^T, Weyl for the enclosure of R). Instances: N = d + 1 examples at d = 2, 4, 8 "
        "with random targets, every third planted from a hidden rank-2 update; falsifiers: rank-1 LoRA on W_v "
        "(built in and peft's); rank-2 LoRA on W_v and full fine-tuning are compared. Updates of W_q, W_k or the "
        "MLP are not covered (they change the attention or the inversion)."),
    kind="cannot",
    draw=_draw,
    hypotheses=_hypotheses,
    falsifiers=(MethodRun("lora", {"targets": "v"}, (RANK,)), MethodRun("peft-lora", {"targets": "v"}, (RANK,))),
    comparisons=(MethodRun("lora", {"targets": "v"}, (PLANTED_RANK,)), MethodRun("full", {}, (1,))),
    certify=_certify,
    study=value_rank_study,
    study_table=rank_table,
    parameter_table=True,
))
