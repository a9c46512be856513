"""The reference transformer of SPEC section 1, batched over a leading problem dimension.

Everything here is a pure function of (spec, params, inputs), so the search can optimize
thousands of problems as one tensor program and torch.func can differentiate per problem.

Shapes: B problems, E examples per problem, n input tokens, m_p prompt tokens, d model dim.
`params` maps weight names (see spec.py) to tensors with a leading B dimension.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from .rowmap import rowmap
from .spec import ModelSpec

LAYERNORM_EPS = 1e-5
LowRank = Mapping[str, tuple[Tensor, Tensor]]  # weight name -> (U (B, o, r), V (B, r, i)): W + U V


def to_torch(weights: Mapping[str, np.ndarray], batch: int = 1, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Unbatched numpy weights -> torch tensors with a leading batch dimension (a view, no copy)."""
    return {name: torch.tensor(np.asarray(w), dtype=dtype, device=device).unsqueeze(0).expand(batch, *np.shape(w))
            for name, w in weights.items()}


def stack_weights(weights: list[Mapping[str, np.ndarray]], *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Weights of several models with one spec -> tensors with a leading batch dimension."""
    return {name: torch.as_tensor(np.stack([w[name] for w in weights]), dtype=dtype, device=device)
            for name in weights[0]}


def _attention_mask(spec: ModelSpec, total: int, n_prefix: int, device: torch.device) -> Tensor | None:
    """Boolean (T, n_prefix + T) mask of allowed keys; None when every key is allowed."""
    if spec.attention == "encoder":
        return None
    causal = torch.ones(total, total, dtype=torch.bool, device=device).tril()
    visible_prefix = torch.ones(total, n_prefix, dtype=torch.bool, device=device)
    return torch.cat([visible_prefix, causal], dim=1)


def linear(Z: Tensor, W: Tensor, update: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Each problem's map W (B, o, i) on its tokens Z (B, E, T, i) -> (B, E, T, o), as one batched
    matrix product over the flattened tokens (a broadcast over E would copy W once per example;
    `rowmap` keeps the Jacobian's vmap from copying it once per tangent). With a low-rank update (U (B, o, r), V (B, r, i))
    the map is W + U V, applied as Z W^T + (Z V^T) U^T: its Jacobian in U and V costs O(r) per
    tangent where the dense W + U V costs O(i)."""
    B, E, T, i = Z.shape
    flat = Z.reshape(B, E * T, i)                                              # (B,E*T,i)
    out = rowmap(flat, W.transpose(1, 2))                                      # (B,E*T,o)
    if update is not None:
        U, V = update
        out = out + rowmap(rowmap(flat, V.transpose(1, 2)), U.transpose(1, 2))  # (B,E*T,o)
    return out.reshape(B, E, T, W.shape[1])                                    # (B,E,T,o)


def attention(spec: ModelSpec, params: Mapping[str, Tensor], layer: int, Z: Tensor,
              prefix: Mapping[str, Tensor] | None = None, low_rank: LowRank | None = None,
              queries: int | None = None) -> Tensor:
    """Sum over heads of Wo Wv [prefix, Z] softmax(logits); Z: (B, E, T, d) -> (B, E, T, d), or
    only the last `queries` positions' outputs (B, E, queries, d) (keys and values from all)."""
    lr = low_rank or {}
    B, E, T, _ = Z.shape
    Q = T if queries is None else queries
    out = None  # the sum over heads; no zero start, whose tangent the Jacobian's vmap would fill
    n_prefix = 0
    for h, head in enumerate(spec.layers[layer].heads):
        p = f"layers.{layer}.heads.{h}."
        Wq, Wk, Wv = params[p + "Wq"], params[p + "Wk"], params[p + "Wv"]  # (B,k,d) (B,k,d) (B,v,d)
        q = linear(Z[:, :, T - Q:], Wq, lr.get(p + "Wq"))                    # (B,E,Q,k)
        k = linear(Z, Wk, lr.get(p + "Wk"))                                  # (B,E,T,k)
        v = linear(Z, Wv, lr.get(p + "Wv"))                                  # (B,E,T,v)
        if prefix is not None:
            if p + "K" in prefix:  # peft style: free key and value vectors
                pk, pv = prefix[p + "K"], prefix[p + "V"]                    # (B,m,k) (B,m,v)
            else:                  # hidden-state style: prefix states pass through Wk, Wv
                states = prefix[f"layers.{layer}.states"]                    # (B,m,d)
                pk = rowmap(states, Wk.transpose(1, 2))                      # (B,m,k)
                pv = rowmap(states, Wv.transpose(1, 2))                      # (B,m,v)
            n_prefix = pk.shape[1]
            k = torch.cat([pk.unsqueeze(1).expand(B, E, *pk.shape[1:]), k], dim=2)  # (B,E,m+T,k)
            v = torch.cat([pv.unsqueeze(1).expand(B, E, *pv.shape[1:]), v], dim=2)  # (B,E,m+T,v)
        logits = q @ k.transpose(2, 3)                                       # (B,E,Q,m+T)
        mask = _attention_mask(spec, T, n_prefix, Z.device)
        if mask is not None:
            logits = logits.masked_fill(~mask[T - Q:], float("-inf"))
        weights = torch.softmax(logits, dim=-1)                              # (B,E,Q,m+T)
        head_out = weights @ v                                               # (B,E,Q,v)
        if head.has_wo:
            head_out = linear(head_out, params[p + "Wo"], lr.get(p + "Wo"))  # (B,E,Q,d)
        out = head_out if out is None else out + head_out
    return torch.zeros_like(Z[:, :, T - Q:]) if out is None else out


def mlp(spec: ModelSpec, params: Mapping[str, Tensor], layer: int, H: Tensor,
        low_rank: LowRank | None = None) -> Tensor:
    """Token-wise MLP; residual adds H. H: (B, E, T, d) -> (B, E, T, d)."""
    p = f"layers.{layer}."
    lr = low_rank or {}
    W1, b1, W2, b2 = params[p + "W1"], params[p + "b1"], params[p + "W2"], params[p + "b2"]
    hidden = torch.relu(linear(H, W1, lr.get(p + "W1")) + b1[:, None, None, :])   # (B,E,T,h)
    branch = linear(hidden, W2, lr.get(p + "W2")) + b2[:, None, None, :]          # (B,E,T,d)
    return H + branch if spec.mlp == "residual" else branch


def layer_forward(spec: ModelSpec, params: Mapping[str, Tensor], layer: int, Z: Tensor,
                  prefix: Mapping[str, Tensor] | None = None, low_rank: LowRank | None = None,
                  keep: int | None = None) -> Tensor:
    """tau(Z) = MLP(Z + Att(Z, Z)), with optional layer norm before the MLP; with `keep`, only the
    last `keep` positions' states (B, E, keep, d): each position's output needs only its own query."""
    Q = Z.shape[2] if keep is None else keep
    H = Z[:, :, Z.shape[2] - Q:] + attention(spec, params, layer, Z, prefix, low_rank, Q)  # (B,E,Q,d)
    if spec.layernorm:
        H = torch.nn.functional.layer_norm(H, H.shape[-1:], eps=LAYERNORM_EPS)
    return mlp(spec, params, layer, H, low_rank)


def forward(spec: ModelSpec, params: Mapping[str, Tensor], X: Tensor, *, prompt: Tensor | None = None,
            prefix: Mapping[str, Tensor] | None = None, low_rank: LowRank | None = None,
            keep: int | None = None) -> Tensor:
    """Final states of the input positions.

    X: (B, E, n, d) inputs; prompt: (B, m_p, d) shared by the E examples of a problem (prepended,
    never positionally encoded); prefix: per-layer extra keys/values; low_rank: weight name ->
    (U, V), the map W + U V in place of W (LoRA, applied factored). Returns (B, E, n, d), or with
    `keep` only the last `keep` positions (B, E, keep, d): the last layer then computes no other
    position (the search's residuals need only the target positions).
    """
    B, E, n, d = X.shape
    if spec.positions:
        X = X + params["positional"][:, None, :n, :]                          # (B,E,n,d)
    Z = X
    if prompt is not None:
        Z = torch.cat([prompt.unsqueeze(1).expand(B, E, *prompt.shape[1:]), X], dim=2)  # (B,E,m_p+n,d)
    last = len(spec.layers) - 1
    for layer in range(len(spec.layers)):
        Z = layer_forward(spec, params, layer, Z, prefix, low_rank, keep if layer == last else None)
    return Z[:, :, Z.shape[2] - (n if keep is None else keep):, :]
