"""Claims L1 and L1+ (SPEC section 3): a single layer has datasets no prompt of any length memorizes."""

from __future__ import annotations

import numpy as np

from peftaudit.settings import Profile
from peftaudit.strategies.instances import l1_instance

from .base import Claim, MethodRun, register_claim

SOURCE = "Wang, Chauhan, Wang, Hsieh, 'Universality and Limitations of Prompt Tuning', NeurIPS 2023 (limitations)"


def _draw(variants: tuple[str, ...]):
    def draw(profile: Profile, seed: int):
        rng = np.random.default_rng([seed, 1])
        out = []
        for i in range(profile.instances):
            d = profile.dims[i % len(profile.dims)]
            variant = variants[i % len(variants)]
            out.append(l1_instance(rng, d, variant, positional=(variant == "parallel")))
        return out
    return draw


def _hypotheses(inst):
    from peftaudit.verify.encoders.l1 import hypotheses
    return hypotheses(inst)


def reduced_attack_study(instances, certificates: dict, profile: Profile, seed: int, log=lambda s: None) -> dict:
    """Per instance, the upper side from the exact reduction of prompts of any length to (v, H)
    (search/reduced_prompt.py), started also from the relaxation's optimal point: the prompt found
    is replayed in interval arithmetic, and a replayed error below the certified floor is a
    violation (the claim's ERROR). The sandwich reads the rows as one more falsifier."""
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import rigorous_replay
    from peftaudit.search.reduced_prompt import attack

    prompt = get_method("prompt")
    rows, violations = [], []
    for i, inst in enumerate(instances):
        cert = certificates.get(i, {})
        floor = cert.get("margin") if cert.get("status") == "certified" else None
        found = attack(inst, delta=cert.get("best_error"), seed=[seed, 27, i])
        if found is None:
            continue
        upper = rigorous_replay(prompt, inst, {"prompt": found.prompt})[1]
        if floor is not None and upper < floor:
            violations.append(f"instance {i}: the reduced attack's prompt (length {len(found.prompt)}) reaches "
                              f"{upper:.3g}, below the certified floor {floor:.3g}")
        log(f"instance {i}: reduced attack {upper:.4g} (length {len(found.prompt)}, from a {found.start} start), "
            f"floor {floor}")
        rows.append({"instance": i, "floor": floor, "attack": upper, "length": len(found.prompt), "start": found.start,
                     "ratio": None if floor is None or upper <= 0 else floor / upper})
    return {"kind": "reduced-prompt-attack", "rows": rows, "violations": violations}


def _certifier(claim_id: str):
    def certify(inst, tolerance: float):
        from peftaudit.verify.encoders.l1 import certify as run
        return run(inst, claim_id, tolerance)
    return certify


L1 = register_claim(Claim(
    id="L1",
    title="A single-layer transformer has two-example datasets that no prompt of any length memorizes",
    source=SOURCE,
    formalization=(
        "Single layer, single head, residual MLP with branch bound kappa < 1 (injective, inverse-Lipschitz "
        "1 - kappa). Examples [x_i, x_0] share the last token; memorizing needs one u = Att(x_0, P) in "
        "range(W_v) on every ray a_i + t (c_i - a_i), t >= 1. Certified robustly: no prompt of any length "
        "brings the last-token error below the certified margin. Instances: skew/diverging rays and the exact "
        "zero-logit variant; rank-1 LoRA on W_v cannot fix two non-parallel corrections, so the contrast is "
        "rank-2 LoRA on W_v and full fine-tuning."),
    kind="cannot",
    draw=_draw(("skew", "exact")),
    hypotheses=_hypotheses,
    falsifiers=(MethodRun("prompt"),),
    contrasts=(MethodRun("lora", {"targets": "v"}, (2,)), MethodRun("full", {}, (1,))),
    certify=_certifier("L1"),
    study=reduced_attack_study,
))

L1_PLUS = register_claim(Claim(
    id="L1+",
    title="With the prompt's shared normaliser, even parallel-ray datasets are unmemorizable",
    source=SOURCE,
    formalization=(
        "As L1, plus the prompt's normaliser S_P is shared by the examples: u = c_i + sigma S_i (c_i - a_i) "
        "with one sigma = 1/S_P > 0. Instances: parallel rays (c_i - a_i = e for both examples) with positional "
        "encoding, so the normalisers S_i differ; plain L1 has no robust margin on them. Rank-1 LoRA on W_v "
        "memorizes them exactly (delta = e w^T with w^T z_i = 1)."),
    kind="cannot",
    draw=_draw(("parallel",)),
    hypotheses=_hypotheses,
    falsifiers=(MethodRun("prompt"),),
    contrasts=(MethodRun("lora", {"targets": "v"}, (1,)), MethodRun("full", {}, (1,))),
    certify=_certifier("L1+"),
    study=reduced_attack_study,
))
