"""Encoders for claim P1 and its over-general form P1-encoder (verify/checkers/p1.py documents both)."""

from __future__ import annotations

import numpy as np
import torch

from peftaudit.instance import Instance, digest, to_dict

from ..checkers import CERT_FORMAT
from .l1 import CertifyResult
from .selfcheck import checked_result


def hypotheses(inst: Instance) -> str | None:
    p1 = inst.meta.get("p1")
    if not isinstance(p1, dict) or p1.get("method") not in ("prompt", "prefix", "prefix-kv"):
        return "a P1 instance names its prefix method (prompt, prefix or prefix-kv) in meta.p1"
    if p1["method"] == "prompt" and inst.spec.attention != "causal":
        return "a soft prompt in encoder mode attends to the input after layer 1 (the statement P1-encoder drops this)"
    return None


def certify_p1(inst: Instance, tolerance: float = 0.0) -> CertifyResult:
    why = hypotheses(inst)
    if why:
        return CertifyResult("P1", "not-applicable", why)
    p1 = inst.meta["p1"]
    cert = {"format": CERT_FORMAT, "claim": "P1", "instance": to_dict(inst), "instance_sha256": digest(inst),
            "method": p1["method"], "prefix_length": int(p1["length"]), "margin": 0}
    return checked_result("P1", cert)


def layer2_prompt_values(inst: Instance, prompt: np.ndarray, example: int) -> np.ndarray:
    """Float64 V_2 z_p: layer 2's value map (W_o W_v of head 0) on the prompt states after layer 1."""
    from peftaudit.models.transformer import layer_forward, to_torch

    params = to_torch(inst.weights)
    X = torch.tensor(inst.dataset[example].X)[None, None]                               # (1,1,n,d)
    if inst.spec.positions:
        X = X + params["positional"][:, None, : X.shape[2], :]
    Z = torch.cat([torch.as_tensor(prompt)[None, None], X], dim=2)                       # (1,1,m+n,d)
    states = layer_forward(inst.spec, params, 0, Z)[0, 0, : prompt.shape[0]]             # (m,d)
    p = "layers.1.heads.0."
    V = params[p + "Wv"][0]
    if p + "Wo" in params:
        V = params[p + "Wo"][0] @ V
    return (states @ V.T).numpy()                                                        # (m,d)


def certify_p1_encoder(inst: Instance, tolerance: float = 0.0, seed: int = 0) -> CertifyResult:
    """A witness against the over-general statement: a random prompt whose layer-2 values differ
    between the instance's first two inputs, by a margin of half the float64 difference."""
    if inst.spec.attention != "encoder" or len(inst.spec.layers) < 2 or len(inst.dataset) < 2:
        return CertifyResult("P1-encoder", "not-applicable", "needs an encoder model of two or more layers and two "
                                                             "examples")
    prompt = np.random.default_rng(seed).standard_normal((int(inst.meta.get("p1", {}).get("length", 1)),
                                                          inst.spec.d))
    gap = float(np.abs(layer2_prompt_values(inst, prompt, 0) - layer2_prompt_values(inst, prompt, 1)).max())
    if not gap > 0:
        return CertifyResult("P1-encoder", "not-certified", "the layer-2 prompt values coincide in float64")
    cert = {"format": CERT_FORMAT, "claim": "P1-encoder", "instance": to_dict(inst), "instance_sha256": digest(inst),
            "prompt": prompt.tolist(), "inputs": [0, 1], "margin": gap / 2}
    return CertifyResult("P1-encoder", "certified", f"float64 separation {gap:.3g}; witness for the exact check",
                         best_error=gap, certificate=cert)
