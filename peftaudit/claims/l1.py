"""Claims L1 and L1+ (SPEC section 3): a single layer has datasets no prompt of any length memorizes."""

from __future__ import annotations

import numpy as np

from peftaudit.settings import Profile
from peftaudit.strategies.instances import l1_instance

from .base import Claim, MethodRun, register_claim
from .prompt_attack import reduced_attack_study

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
