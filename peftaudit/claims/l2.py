"""Claim L2 (SPEC section 3): prompts need length >= N on N independent target positions."""

from __future__ import annotations

import numpy as np

from peftaudit.settings import Profile
from peftaudit.strategies.instances import l2_instance, l2_lora_instance

from .base import Claim, MethodRun, register_claim
from .l1 import SOURCE
from .lv import value_rank_study
from .prompt_attack import one_token_study

POSITIONS = 2  # N: the falsifier searches prompts of length N - 1


def _draw(profile: Profile, seed: int):
    rng = np.random.default_rng([seed, 2])
    dims = [d for d in (4, 6, 8) if 2 * POSITIONS <= d]
    return [l2_instance(rng, dims[i % len(dims)], POSITIONS, attention="causal" if i % 2 else "encoder")
            for i in range(profile.instances)]


def _hypotheses(inst):
    from peftaudit.verify.encoders.l2 import hypotheses
    return hypotheses(inst)


def _certify(inst, tolerance: float):
    from peftaudit.verify.encoders.l2 import certify_l2
    return certify_l2(inst, tolerance)


L2 = register_claim(Claim(
    id="L2",
    title="Memorizing N independent target positions needs a prompt of length >= N (N d parameters)",
    source=SOURCE,
    formalization=(
        "Single layer, single head, residual MLP with kappa < 1. For N target positions with attention outputs "
        "a_j and needed outputs c_j, every prompt shorter than N keeps, at some position, an attention error of at "
        "least sigma_min([c_1..c_N, a_1..a_N]) / sqrt(N d), certified with an exact LDL^T of the Gram matrix, or "
        "for N = 2 the larger structured radius of one-token prompts (one token's value serves both positions: "
        "a cell tree over the two attention weights' split, checked exactly); at the layer output the MLP's "
        "local floor on each position's radius sphere (cell trees, at least (1 - kappa) times the radius), minus "
        "the inverse residual. Instances: N = 2 examples with "
        "generic corrections (encoder and causal); contrasts: rank-2 LoRA on W_v and full fine-tuning; "
        "prompts of length N and 2N, which the claim allows, are reported for comparison."),
    kind="cannot",
    draw=_draw,
    hypotheses=_hypotheses,
    falsifiers=(MethodRun("prompt", {}, tuple(range(1, POSITIONS))),),
    contrasts=(MethodRun("lora", {"targets": "v"}, (POSITIONS,)), MethodRun("full", {}, (1,))),
    comparisons=(MethodRun("prompt", {}, (POSITIONS, 2 * POSITIONS)),
                 MethodRun("prefix-kv", {}, (1, POSITIONS, 2 * POSITIONS))),
    certify=_certify,
    study=one_token_study,  # LoRA on W_v's certified lower side in the parameter table; the one-token attack
    parameter_table=True,
))


def _draw_lora(profile: Profile, seed: int):
    rng = np.random.default_rng([seed, 8])
    dims = [d for d in (3, 4, 6, 8) if POSITIONS + 1 <= d]
    return [l2_lora_instance(rng, dims[i % len(dims)], POSITIONS, attention="causal" if i % 2 else "encoder")
            for i in range(max(2, profile.instances // 2))]


def _lora_hypotheses(inst):
    from peftaudit.verify.encoders.l2 import hypotheses
    return hypotheses(inst, lora_variant=True)


L2_LORA = register_claim(Claim(
    id="L2-lora",
    title="L2's LoRA-generated variant: rank-1 LoRA (2d parameters) memorizes what prompts shorter than N cannot",
    source=SOURCE,
    formalization=(
        "Targets made by W_v + alpha beta^T (rank 1) at N positions with {a_1..a_N, alpha} independent (N + 1 <= d). "
        "Exactly: w_j = c_j - (1 - lam_j) a_j = lam_j a_j + (beta^T z_j) alpha are independent for lam_j > 0, so "
        "every memorizing prompt has length >= N (N d parameters), while rank-1 LoRA on W_v needs 2d. Where the "
        "corrections c_j - a_j point the same way along alpha there is no robust margin (as lam_j -> 0 with prompt "
        "norms -> infinity the w_j turn parallel and the error tends to 0; L2's structured one-token floor "
        "certifies only the instances where they point opposite ways), so the claim certifies nothing and the "
        "verdict can only be SURVIVED: search evidence, reported with LoRA's."),
    kind="cannot",
    draw=_draw_lora,
    hypotheses=_lora_hypotheses,
    falsifiers=(MethodRun("prompt", {}, tuple(range(1, POSITIONS))),),
    contrasts=(MethodRun("lora", {"targets": "v"}, (1,)), MethodRun("full", {}, (1,))),
    comparisons=(MethodRun("prompt", {}, (POSITIONS, 2 * POSITIONS)),
                 MethodRun("prefix-kv", {}, (1, POSITIONS, 2 * POSITIONS))),
    group="L2",
    study=value_rank_study,
    parameter_table=True,
))
