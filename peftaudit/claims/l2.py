"""Claim L2 (SPEC section 3): prompts need length >= N on N independent target positions."""

from __future__ import annotations

import numpy as np

from peftaudit.settings import Profile
from peftaudit.strategies.instances import l2_instance

from .base import Claim, MethodRun, register_claim
from .l1 import SOURCE

POSITIONS = 2  # N: the falsifier searches prompts of length N - 1


def _draw(profile: Profile, seed: int):
    rng = np.random.default_rng([seed, 2])
    dims = [d for d in (4, 6, 8) if 2 * POSITIONS <= d]
    return [l2_instance(rng, dims[i % len(dims)], POSITIONS, attention="causal" if i % 2 else "encoder")
            for i in range(profile.instances)]


def _hypotheses(inst):
    from peftaudit.verify.l2 import hypotheses
    return hypotheses(inst)


def _certify(inst, tolerance: float):
    from peftaudit.verify.l2 import certify_l2
    return certify_l2(inst, tolerance)


L2 = register_claim(Claim(
    id="L2",
    title="Memorizing N independent target positions needs a prompt of length >= N (N d parameters)",
    source=SOURCE,
    formalization=(
        "Single layer, single head, residual MLP with kappa < 1. For N target positions with attention outputs "
        "a_j and needed outputs c_j, every prompt shorter than N keeps, at some position, an attention error of at "
        "least sigma_min([c_1..c_N, a_1..a_N]) / sqrt(N d), certified with an exact LDL^T of the Gram matrix; at "
        "the layer output (1 - kappa) times that, minus the inverse residual. Instances: N = 2 examples with "
        "generic corrections (encoder and causal); contrasts: rank-2 LoRA on W_v and full fine-tuning; "
        "prompts of length N and 2N, which the claim allows, are reported for comparison."),
    kind="cannot",
    draw=_draw,
    hypotheses=_hypotheses,
    falsifiers=(MethodRun("prompt", {}, tuple(range(1, POSITIONS))),),
    contrasts=(MethodRun("lora", {"targets": "v"}, (POSITIONS,)), MethodRun("full", {}, (1,))),
    comparisons=(MethodRun("prompt", {}, (POSITIONS, 2 * POSITIONS)),),
    certify=_certify,
))
