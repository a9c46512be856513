"""Claim P1, numerically: in every attention with prefix positions, layer by layer, the attention over
content positions is the prefix-free attention (same layer inputs) scaled by 1 - prefix mass, and
the output mixes the prefix-free output with the prefix values (Petrov, Torr, Bibi, ICLR 2024):

    A'_ij = A_ij (1 - sum_p A'_ip),    out'_i = sum_p A'_ip v_p + (1 - sum_p A'_ip) t_i,  t_i = sum_j A_ij v_j.

Prefixes: "prefix-kv" (free keys and values per head), "prefix" (free states per layer through W_k,
W_v) and "prompt" (soft prompt tokens in the sequence, whose states are the prefix positions of
every layer). `layer_parts` returns, per layer and head, the identity's residuals, the prefix mass
and how far the prefix moves the output from the prefix-free one.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .spec import ModelSpec
from .transformer import layer_forward


def _masked_softmax(logits: Tensor, allowed: Tensor | None) -> Tensor:
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)


def layer_parts(spec: ModelSpec, params: Mapping[str, Tensor], X: Tensor, method: str,
                adapter: Mapping[str, Tensor]) -> list[dict]:
    """X: (1, E, n, d) inputs; adapter: the method's trainable tensors (leading batch 1). One dict per
    (layer, head): max identity residuals, prefix mass (mean, max) and output move (mean norm)."""
    _, E, n, d = X.shape
    if spec.positions:
        X = X + params["positional"][:, None, :n, :]                                     # (1,E,n,d)
    prompt = adapter.get("prompt") if method == "prompt" else None
    Z = X if prompt is None else torch.cat([prompt.unsqueeze(1).expand(1, E, *prompt.shape[1:]), X], dim=2)
    m_p = 0 if prompt is None else prompt.shape[1]
    prefix = None if method == "prompt" else adapter
    causal = torch.ones(n, n, dtype=torch.bool).tril() if spec.attention == "causal" else None  # (n,n)
    rows = []
    for li in range(len(spec.layers)):
        content = Z[:, :, m_p:]                                                           # (1,E,n,d)
        for hi, head in enumerate(spec.layers[li].heads):
            p = f"layers.{li}.heads.{hi}."
            Wq, Wk, Wv = params[p + "Wq"][0], params[p + "Wk"][0], params[p + "Wv"][0]
            q = content @ Wq.T                                                            # (1,E,n,k)
            kc, vc = content @ Wk.T, content @ Wv.T                                       # (1,E,n,k) (1,E,n,v)
            if method == "prompt":
                kp, vp = Z[:, :, :m_p] @ Wk.T, Z[:, :, :m_p] @ Wv.T                       # (1,E,m,k) (1,E,m,v)
            elif method == "prefix-kv":
                kp = adapter[p + "K"].unsqueeze(1).expand(1, E, -1, -1)                  # (1,E,m,k)
                vp = adapter[p + "V"].unsqueeze(1).expand(1, E, -1, -1)                  # (1,E,m,v)
            else:
                states = adapter[f"layers.{li}.states"]                                   # (1,m,d)
                kp = (states @ Wk.T).unsqueeze(1).expand(1, E, -1, -1)                    # (1,E,m,k)
                vp = (states @ Wv.T).unsqueeze(1).expand(1, E, -1, -1)                    # (1,E,m,v)
            m = kp.shape[2]
            full = torch.cat([kp, kc], dim=2)                                             # (1,E,m+n,k)
            allowed = None if causal is None else torch.cat([torch.ones(n, m, dtype=torch.bool), causal], 1)
            A_full = _masked_softmax(q @ full.transpose(2, 3), allowed)                  # (1,E,n,m+n)
            A = _masked_softmax(q @ kc.transpose(2, 3), causal)                          # (1,E,n,n)
            mass = A_full[..., :m].sum(-1, keepdim=True)                                 # (1,E,n,1)
            t = A @ vc                                                                    # (1,E,n,v)
            out = A_full @ torch.cat([vp, vc], dim=2)                                     # (1,E,n,v)
            mixed = A_full[..., :m] @ vp + (1 - mass) * t                                 # (1,E,n,v)
            scale = max(1.0, float(out.abs().max()))
            rows.append({"layer": li, "head": hi,
                         "weight_residual": float((A_full[..., m:] - A * (1 - mass)).abs().max()),
                         "output_residual": float((out - mixed).abs().max()) / scale,
                         "prefix_mass_mean": float(mass.mean()), "prefix_mass_max": float(mass.max()),
                         "move_mean": float((out - t).norm(dim=-1).mean())})
        Z = layer_forward(spec, params, li, Z, prefix)                                    # (1,E,m_p+n,d)
    return rows


def lora_move(spec: ModelSpec, params: Mapping[str, Tensor], X: Tensor, rank: int, seed: int) -> list[float]:
    """Per layer: mean norm of the change of the attention output when a random rank-r LoRA
    (factors of unit-variance entries / sqrt(d)) is added to W_v of that layer alone, same inputs."""
    gen = torch.Generator().manual_seed(seed)
    _, E, n, d = X.shape
    Z = X + params["positional"][:, None, :n, :] if spec.positions else X                # (1,E,n,d)
    moves = []
    for li in range(len(spec.layers)):
        total = torch.zeros(())
        for hi, head in enumerate(spec.layers[li].heads):
            p = f"layers.{li}.heads.{hi}."
            Wq, Wk = params[p + "Wq"][0], params[p + "Wk"][0]
            B = torch.randn(head.v, rank, generator=gen, dtype=torch.float64) / d ** 0.5
            A = torch.randn(rank, d, generator=gen, dtype=torch.float64) / d ** 0.5
            causal = torch.ones(n, n, dtype=torch.bool).tril() if spec.attention == "causal" else None
            weights = _masked_softmax((Z @ Wq.T) @ (Z @ Wk.T).transpose(2, 3), causal)    # (1,E,n,n)
            change = weights @ (Z @ (B @ A).T)                                            # (1,E,n,v)
            if head.has_wo:
                change = change @ params[p + "Wo"][0].T                                   # (1,E,n,d)
            total = total + change.norm(dim=-1).mean()
        moves.append(float(total))
        Z = layer_forward(spec, params, li, Z)
    return moves
