"""Claim M (SPEC section 3): with invertible layers, prompts learn only invertible maps; plus the
statements registered to be refuted: each of M's conditions dropped in turn, and the naive
per-layer form for encoder models (group "M": `--claims M` runs them all)."""

from __future__ import annotations

import numpy as np

from peftaudit.settings import Profile
from peftaudit.strategies import m_instances as build

from .base import Claim, MethodRun, register_claim
from .l1 import SOURCE

BOUND = 1.0  # the prompt-norm bound B of the invertible family (also in each instance's meta)
SHAPES = ((1, "encoder"), (1, "causal"), (2, "encoder"), (2, "causal"))


def _draw_invertible(profile: Profile, seed: int):
    rng = np.random.default_rng([seed, 3])
    return [build.m_invertible_instance(rng, profile.dims[i % len(profile.dims)], layers=SHAPES[i % 4][0],
                                        attention=SHAPES[i % 4][1], bound=BOUND) for i in range(profile.instances)]


def _draw(family: str, stream: int):
    def draw(profile: Profile, seed: int):
        rng = np.random.default_rng([seed, stream])
        dims = [d for d in profile.dims if d >= 2]
        out = []
        for i in range(max(2, profile.instances // 2)):
            d = dims[i % len(dims)]
            if family == "fold-mlp":
                out.append(build.m_fold_mlp_instance(rng, d, bound=BOUND))
            elif family == "naive-encoder":
                out.append(build.m_naive_encoder_instance(rng, d, bound=BOUND) if i % 2 == 0 else
                           build.m_invertible_instance(rng, d, layers=2, attention="encoder", bound=BOUND))
            else:
                out.append(build.m_fold_attention_instance(rng, d, strong=family == "fold-attention-strong"))
        return out
    return draw


def _m_hypotheses(inst):
    from peftaudit.verify.encoders.m import hypotheses
    return hypotheses(inst)


def _certify(inst, tolerance: float):
    from peftaudit.verify.encoders.m import certify_m
    return certify_m(inst, tolerance)


def _drop(condition: str):
    """Hypotheses of an ablation: M's shape, the dropped condition false, the other true."""
    def hypotheses(inst):
        from peftaudit.verify.encoders.m import layer_conditions, structure_problem
        why = structure_problem(inst)
        if why is not None:
            return why
        cond = layer_conditions(inst)
        if condition == "mlp":
            from peftaudit.verify.encoders.mlp import MLPWeights, injectivity
            if not cond["attention"]:
                return "the attention condition must hold when only the MLP's is dropped"
            if all(injectivity(MLPWeights.of_layer("residual", inst.weights, li)).status == "injective"
                   for li in range(len(inst.spec.layers))):
                return "every MLP is injective (nothing dropped)"
            return None
        if not cond["mlp"]:
            return "the MLP condition must hold when only the attention's is dropped"
        return None if not cond["attention"] else "the attention condition holds at B (nothing dropped)"
    return hypotheses


def _naive_hypotheses(inst):
    from peftaudit.verify.encoders.m import per_layer_injective, structure_problem
    if inst.spec.attention != "encoder" or len(inst.spec.layers) < 2:
        return "the naive statement is about encoder models with two or more layers"
    why = structure_problem(inst)
    if why is not None:
        return why
    return next((w for w in per_layer_injective(inst) if w is not None), None)


M = register_claim(Claim(
    id="M",
    title="With invertible layers and bounded prompts, prompt tuning learns only invertible maps",
    source=SOURCE,
    formalization=(
        "Residual MLPs with ||W2||_2 ||W1||_2 = kappa < 1 and attention Lipschitz bounds alpha = sum_h ||V_h|| "
        "(1 + 4 ||Wk^T Wq|| R^2) < 1 on tokens of norm <= R, with every prompt token's norm <= B. Causal models: "
        "layer by layer the content map is (1 - kappa)(1 - alpha)-inverse-Lipschitz (the prompt never sees X). "
        "Encoder models: after layer 1 the prompt states depend on X, so the certificate tracks the joint map "
        "(content lower bound lam, prompt-state upper bound rho: lam' = (1 - kappa)(lam - alpha max(rho, lam))). "
        "Then ||out_P(X_1) - out_P(X_2)|| >= lam_{L+1} ||X_1 - X_2||, and a dataset with X_1 != X_2, Y_1 = Y_2 keeps "
        "an error >= lam_{L+1} ||X_1 - X_2|| / (2 sqrt d) in the max norm for every such prompt. Instances: one and "
        "two layers, encoder and causal, targets at the midpoint of a reference prompt's outputs. Falsifier: "
        "prompt search projected onto ||p|| <= B; unbounded prompt search is reported for comparison."),
    kind="cannot",
    draw=_draw_invertible,
    hypotheses=_m_hypotheses,
    falsifiers=(MethodRun("prompt", norm_bound=BOUND),),
    contrasts=(MethodRun("full", {}, (1,)),),
    comparisons=(MethodRun("prompt"),),
    certify=_certify,
))

M_UNBOUNDED = register_claim(Claim(
    id="M-unbounded",
    title="M without the prompt-norm bound (registered to be refuted)",
    source=SOURCE,
    formalization=(
        "As M, for prompts of any norm. Instances: every condition of M holds at B = 1/2 (M certifies them), "
        "but a prompt token of norm 5 switches the attention across a hyperplane and folds the token map "
        "(planted). Falsifier: unbounded prompt search. A refutation shows the bound B is load-bearing."),
    kind="cannot",
    draw=_draw("fold-attention", 4),
    hypotheses=_m_hypotheses,
    falsifiers=(MethodRun("prompt", {}, (1, 2)),),
    group="M", expect="REFUTED", dropped="the prompt-norm bound B",
))

M_DROP_ATTENTION = register_claim(Claim(
    id="M-drop-attention",
    title="M without the attention condition (registered to be refuted)",
    source=SOURCE,
    formalization=(
        "As M with the MLP condition kept and the attention condition (alpha < 1 at B) dropped: a strong "
        "attention (||Wk^T Wq|| = 40) folds the token map for a prompt within B = 1 (planted). Falsifier: "
        "prompt search projected onto ||p|| <= B."),
    kind="cannot",
    draw=_draw("fold-attention-strong", 5),
    hypotheses=_drop("attention"),
    falsifiers=(MethodRun("prompt", {}, (1, 2), norm_bound=BOUND),),
    group="M", expect="REFUTED", dropped="attention Lipschitz bound alpha < 1",
))

M_DROP_MLP = register_claim(Claim(
    id="M-drop-mlp",
    title="M without MLP injectivity (registered to be refuted)",
    source=SOURCE,
    formalization=(
        "As M with the attention condition kept and MLP injectivity dropped: the residual MLP z - 2 e relu(e.z) "
        "reflects a half-space (z3 finds and exact replay confirms a colliding pair); a planted prompt within "
        "B = 1 maps the two inputs onto mirror images. Falsifier: prompt search projected onto ||p|| <= B."),
    kind="cannot",
    draw=_draw("fold-mlp", 6),
    hypotheses=_drop("mlp"),
    falsifiers=(MethodRun("prompt", {}, (1, 2), norm_bound=BOUND),),
    group="M", expect="REFUTED", dropped="MLP injectivity",
))

M_NAIVE = register_claim(Claim(
    id="M-naive",
    title="Naive per-layer M for encoder models (registered to be refuted)",
    source=SOURCE,
    formalization=(
        "Encoder models, two or more layers: 'if every layer is injective in its input tokens for every fixed "
        "prompt state, no prompt with ||p|| <= B memorizes a dataset with X_1 != X_2, Y_1 = Y_2'. Per-layer "
        "injectivity is established exactly (kappa < 1 and alpha < 1, or, for zero logits, det(I + c V) != 0 for "
        "every prompt length). It ignores that after layer 1 the prompt states depend on X. Instances: zero-logit "
        "models whose composed map folds through the prompt states (planted, exactly rational), and generic "
        "small-norm models (where M's joint certificate holds). Falsifier: prompt search with ||p|| <= B."),
    kind="cannot",
    draw=_draw("naive-encoder", 7),
    hypotheses=_naive_hypotheses,
    falsifiers=(MethodRun("prompt", {}, (1, 2), norm_bound=BOUND),),
    group="M", expect="REFUTED", dropped="the joint (prompt-state) condition of encoder models",
))
