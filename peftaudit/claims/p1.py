"""Claim P1 (SPEC section 3; Petrov, Torr, Bibi, ICLR 2024): prefix tuning only biases attention.

P1: in every attention, content attention with a prefix is the prefix-free attention scaled by
1 - prefix mass, and the output mixes the prefix-free output with the prefix values; the prefix
values do not depend on the input (prefix tuning at every layer; soft prompts under a causal mask).
Certified per instance (verify/checkers/p1.py): the identity as an exact polynomial identity at the
instance's sizes, and the input independence from the method and the mask. The study checks the
identity in float64 at every layer and head and reports the prefix mass and how far the prefix
moves the output, beside a random rank-1 LoRA on W_v of the same layer.

P1-encoder, registered to be refuted: "soft prompts contribute input-independent values at every
layer, in encoder mode"; a witness (a prompt and two inputs whose layer-2 prompt values differ by a
margin, enclosed exactly) refutes it.
"""

from __future__ import annotations

import numpy as np

from peftaudit.settings import Profile

from .base import Claim, register_claim
from .p1_report import prefix_table

SOURCE = "Petrov, Torr, Bibi, 'When Do Prompting and Prefix-Tuning Work? A Theory of Capabilities and Limitations', ICLR 2024"
SETUPS = (("prefix-kv", "encoder"), ("prefix", "encoder"), ("prompt", "causal"), ("prefix-kv", "causal"),
          ("prefix", "causal"))


def _instance(rng: np.random.Generator, d: int, layers: int, attention: str, method: str, length: int, zero_logits=False):
    from peftaudit.instance import make_instance
    from peftaudit.models.spec import simple_spec
    spec = simple_spec(d, layers=layers, attention=attention, positions=3)
    weights = {name: rng.standard_normal(shape) / np.sqrt(d) for name, shape in spec.weight_shapes()}
    if zero_logits:
        weights["layers.0.heads.0.Wq"] = np.zeros_like(weights["layers.0.heads.0.Wq"])
    dataset = [(rng.standard_normal((3, d)), rng.standard_normal((1, d))) for _ in range(3)]
    return make_instance(spec, weights, dataset, {"family": f"p1-{method}-{attention}",
                                                  "p1": {"method": method, "length": length}})


def _draw(profile: Profile, seed: int):
    rng = np.random.default_rng([seed, 16])
    out = [_instance(rng, 4, 2, attention, method, 1 + i % 2) for i, (method, attention) in
           enumerate(SETUPS * max(1, profile.instances // len(SETUPS)))]
    return out + [_instance(rng, 4, 2, "encoder", "prompt", 2)]   # planted: the hypothesis fails (vacuous)


def _hypotheses(inst):
    from peftaudit.verify.encoders.p1 import hypotheses
    return hypotheses(inst)


def _certify(inst, tolerance: float):
    from peftaudit.verify.encoders.p1 import certify_p1
    return certify_p1(inst, tolerance)


def _study(instances, certificates: dict, profile: Profile, seed: int, log=lambda s: None) -> dict:
    import torch

    from peftaudit.models.methods import get_method
    from peftaudit.models.prefix_identity import layer_parts, lora_move
    from peftaudit.models.transformer import to_torch

    rows = []
    worst = 0.0
    for i, inst in enumerate(instances):
        p1 = inst.meta["p1"]
        params = to_torch(inst.weights)
        X = torch.as_tensor(inst.inputs())[None]                                          # (1,E,n,d)
        adapter = get_method(p1["method"]).init(inst.spec, 1, int(p1["length"]), torch.Generator().manual_seed(seed + i))
        parts = layer_parts(inst.spec, params, X, p1["method"], adapter)
        lora = lora_move(inst.spec, params, X, 1, seed + i)
        for r in parts:
            worst = max(worst, r["weight_residual"], r["output_residual"])
            rows.append({"instance": i, "method": p1["method"], "mask": inst.spec.attention,
                         "status": (certificates.get(i) or {}).get("status", "vacuous"), **r,
                         "lora_move_mean": lora[r["layer"]]})
    log(f"P1: identity residuals in float64 at most {worst:.2g} over every layer and head")
    return {"kind": "prefix-identity", "rows": rows, "max_residual": worst}


P1 = register_claim(Claim(
    id="P1",
    title="Prefix tuning only biases attention: scaled prefix-free attention plus input-independent prefix values",
    source=SOURCE,
    formalization=(
        "In one attention with prefix positions p and content positions i, j: A'_ij = A_ij (1 - sum_p A'_ip), A the "
        "attention of the same layer inputs without the prefix, and out'_i = sum_p A'_ip v_p + (1 - sum_p A'_ip) t_i "
        "with t_i the prefix-free output: an identity of softmax, certified as an exact polynomial identity (each "
        "exp a positive variable) at the instance's sizes, and checked in float64 at every layer and head. The "
        "prefix values v_p do not depend on the input: at every layer for prefix tuning (free keys and values, or "
        "free states through W_k, W_v) and for soft prompts under a causal mask."),
    kind="cannot",
    draw=_draw,
    hypotheses=_hypotheses,
    falsifiers=(),
    certify=_certify,
    refuted_by="a failing identity or an input-dependent prefix value, checked exactly",
    study=_study,
    study_table=prefix_table,
))


def _draw_encoder(profile: Profile, seed: int):
    rng = np.random.default_rng([seed, 17])
    return [_instance(rng, 4, 2, "encoder", "prompt", 1 + i % 2, zero_logits=i % 2 == 0)
            for i in range(max(2, profile.instances // 2))]


def _certify_encoder(inst, tolerance: float):
    from peftaudit.verify.encoders.p1 import certify_p1_encoder
    return certify_p1_encoder(inst, tolerance)


P1_ENCODER = register_claim(Claim(
    id="P1-encoder",
    title="Over-general: soft prompts contribute input-independent values at every layer, in encoder mode",
    source=SOURCE,
    formalization=(
        "P1's input independence stated for soft prompts under a bidirectional mask. After layer 1 the prompt "
        "states have attended to the input, so their layer-2 values depend on it; a witness (a prompt and two "
        "inputs whose layer-2 prompt values are more than a margin apart, enclosed exactly: in rationals where "
        "layer 1's logits are constant, with exp enclosures otherwise) refutes the statement."),
    kind="cannot",
    draw=_draw_encoder,
    hypotheses=lambda inst: None,
    falsifiers=(),
    certify=_certify_encoder,
    refuted_by="a prompt and two inputs whose layer-2 prompt values differ, checked exactly",
    group="P1",
    expect="REFUTED",
    dropped="the causal mask (soft prompts in encoder mode)",
    evidence="witness",
))
