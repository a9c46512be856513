"""The reference forward carrying V tangent directions along: outputs and their Jacobian in one pass.

Levenberg-Marquardt needs every problem's Jacobian at every step. torch.func's vmap over jvp
gets it from any method, but on this model it pays, op by op, for batching rules: copies of
the tangents between layouts, zero tangents filled in, and thousands of tiny products where a
rank-1 update or a short attention row meets a batched operand (planted LoRA at d = 64: 1.2 ms
per problem, about five times its arithmetic). Here forward mode is written out for the few
operations of `transformer.forward`: each activation (B, E, T, f) travels with its tangents
(B, E, T, V, f), the V directions beside the features, so a weight applied to them is one
(B, E*T*V, i) @ (B, i, o) product and each attention product is one product per example.

Values are those of `transformer.forward` (the same formulas, in the same order); a tangent of
None means zero. The trainable tensors enter through the same arguments as in `forward`
(prompt, prefix, low_rank), each as (value, tangent); `identity_tangents` gives the tangents
whose outputs' derivatives are the Jacobian in flat(trainable) order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from .spec import ModelSpec
from .transformer import LAYERNORM_EPS, _attention_mask

Dual = tuple[Tensor, Tensor | None]                       # value (B, ..., f), tangent (B, ..., V, f)
LowRankDual = Mapping[str, tuple[Dual, Dual]]             # name -> ((U, dU), (V, dV)): W + U V


@dataclass(frozen=True)
class Lead:
    """A tangent that is `rows` (B, m, P, f) on token rows 0..m-1 of every example and zero on the
    others: a prompt's tangent entering the first layer, before attention mixes it into the
    inputs' rows. Kept unexpanded there, a weight meets m P rows per problem instead of E T P,
    and a query row past the prompt gets no tangent at all."""
    rows: Tensor

    def dense(self, E: int, T: int) -> Tensor:
        """(B, E, T, P, f), zeros past row m."""
        B, m, P, f = self.rows.shape
        pad = self.rows.new_zeros(B, E, T - m, P, f)
        return torch.cat([self.rows.unsqueeze(1).expand(B, E, m, P, f), pad], dim=2)


def _dense(t: "Tensor | Lead | None", E: int, T: int) -> Tensor | None:
    return t.dense(E, T) if isinstance(t, Lead) else t


def _tail(t: "Tensor | Lead | None", start: int, E: int, T: int) -> Tensor | None:
    """Token rows start.. of a tangent (B, E, T, P, f); None where a Lead leaves them zero."""
    if isinstance(t, Lead):
        return None if start >= t.rows.shape[1] else t.dense(E, T)[:, :, start:]
    return None if t is None else t[:, :, start:]


def identity_tangents(trainable: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """For each trainable tensor (B, *s, f), the tangent (B, *s, P, f) of the directions e_1..e_P
    of the flat parameter vector (the tensors' entries in order): views of one identity."""
    total = sum(t[0].numel() for t in trainable.values())
    any_t = next(iter(trainable.values()))
    eye = torch.eye(total, dtype=any_t.dtype, device=any_t.device)                 # (P,P)
    out, o = {}, 0
    for name, t in trainable.items():
        shape, n = t.shape[1:], t[0].numel()
        block = eye[o:o + n].reshape(*shape, total).movedim(-1, -2)               # (*s,P,f)
        out[name] = block.unsqueeze(0).expand(t.shape[0], *block.shape)            # (B,*s,P,f)
        o += n
    return out


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else a if b is None else a + b


def _rows(A: Tensor, M: Tensor) -> Tensor:
    """A (B, *rows, i) @ M (B, i, o) -> (B, *rows, o), as one batched product over all rows."""
    B, i = A.shape[0], A.shape[-1]
    return (A.reshape(B, -1, i) @ M).reshape(*A.shape[:-1], M.shape[-1])


def linear(Z: Tensor, dZ: "Tensor | Lead | None", W: Tensor,
           update: tuple[Dual, Dual] | None = None) -> "tuple[Tensor, Tensor | Lead | None]":
    """transformer.linear with tangents: Z (B, E, T, i), dZ (B, E, T, V, i) or a Lead (which stays
    one); W (B, o, i) frozen; update ((U, dU), (V, dV)) with U (B, o, r), dU (B, o, P, r),
    V (B, r, i), dV (B, r, P, i)."""
    B, E, T, i = Z.shape
    if isinstance(dZ, Lead) and update is not None and (update[0][1] is not None or update[1][1] is not None):
        dZ = dZ.dense(E, T)  # trainable factors add tangents on every row
    flat = Z.reshape(B, E * T, i)                                                  # (B,N,i)
    out = flat @ W.transpose(1, 2)                                                 # (B,N,o)
    lead = isinstance(dZ, Lead)
    d_in = dZ.rows if lead else dZ                                                 # (B,m,V,i) or (B,E,T,V,i)
    d_out = None if d_in is None else _rows(d_in, W.transpose(1, 2))               # (B,m,V,o) or (B,E,T,V,o)
    if update is not None:
        (U, dU), (Vm, dV) = update
        zv = flat @ Vm.transpose(1, 2)                                             # (B,N,r)
        out = out + zv @ U.transpose(1, 2)                                         # (B,N,o)
        if d_in is not None:  # (dZ V^T) U^T
            d_out = d_out + _rows(_rows(d_in, Vm.transpose(1, 2)), U.transpose(1, 2))  # (B,...,V,o)
        if dV is not None:  # (Z dV^T) U^T
            r, P = dV.shape[1], dV.shape[2]
            zdv = (flat @ dV.reshape(B, r * P, i).transpose(1, 2))                 # (B,N,r*P)
            zdv = zdv.reshape(B, E * T, r, P).transpose(2, 3)                      # (B,N,P,r)
            d_out = _add(d_out, _rows(zdv, U.transpose(1, 2)).reshape(B, E, T, P, -1))  # (B,E,T,P,o)
        if dU is not None:  # (Z V^T) dU^T
            o, P, r = dU.shape[1], dU.shape[2], dU.shape[3]
            du = dU.permute(0, 3, 2, 1).reshape(B, r, P * o)                       # (B,r,P*o)
            d_out = _add(d_out, (zv @ du).reshape(B, E, T, P, o))                  # (B,E,T,P,o)
    if lead:
        d_out = Lead(d_out)
    return out.reshape(B, E, T, -1), d_out


def _expand_over_examples(t: Tensor | None, E: int) -> Tensor | None:
    """A per-problem (B, m, ...) tensor shared by the E examples -> (B, E, m, ...) (a view)."""
    return None if t is None else t.unsqueeze(1).expand(t.shape[0], E, *t.shape[1:])


def _cat_tokens(parts: list[Dual]) -> Dual:
    """Concatenate along the token axis (2); a missing tangent among present ones is zero."""
    value = torch.cat([v for v, _ in parts], dim=2)
    parts = [(v, _dense(d, v.shape[1], v.shape[2])) for v, d in parts]
    present = [d for _, d in parts if d is not None]
    if not present:
        return value, None
    like = present[0]
    tangent = torch.cat([d if d is not None else like.new_zeros(*v.shape[:3], like.shape[3], v.shape[3])
                         for v, d in parts], dim=2)
    return value, tangent


def _scores(q: Dual, k: Dual) -> Dual:
    """q (B, E, Q, c) @ k (B, E, S, c)^T -> logits (B, E, Q, S), tangents (B, E, Q, V, S)."""
    (qv, dq), (kv, dk) = q, k
    B, E, Q, c = qv.shape
    S = kv.shape[2]
    logits = qv @ kv.transpose(2, 3)                                               # (B,E,Q,S)
    d = None
    if dq is not None:
        d = (dq.reshape(B * E, -1, c) @ kv.reshape(B * E, S, c).transpose(1, 2)).reshape(B, E, Q, -1, S)
    if isinstance(dk, Lead):  # key rows 0..m-1 only, the same in every example
        m, P = dk.rows.shape[1], dk.rows.shape[2]
        dkq = dk.rows.reshape(B, m * P, c) @ qv.reshape(B, E * Q, c).transpose(1, 2)  # (B,m*P,E*Q)
        dkq = dkq.reshape(B, m, P, E, Q).permute(0, 3, 4, 2, 1)                    # (B,E,Q,P,m)
        d = _add(d, torch.cat([dkq, dkq.new_zeros(B, E, Q, P, S - m)], dim=4))     # (B,E,Q,P,S)
    elif dk is not None:
        dkq = dk.reshape(B * E, -1, c) @ qv.reshape(B * E, Q, c).transpose(1, 2)  # (B*E,S*V,Q)
        d = _add(d, dkq.reshape(B, E, S, -1, Q).permute(0, 1, 4, 3, 2))            # (B,E,Q,V,S)
    return logits, d


def _mix(w: Dual, v: Dual) -> Dual:
    """Attention weights w (B, E, Q, S) @ values v (B, E, S, c) -> (B, E, Q, c), tangents (B, E, Q, V, c)."""
    (wv, dw), (vv, dv) = w, v
    B, E, Q, S = wv.shape
    c = vv.shape[3]
    out = wv @ vv                                                                  # (B,E,Q,c)
    d = None
    if dw is not None:
        d = (dw.reshape(B * E, -1, S) @ vv.reshape(B * E, S, c)).reshape(B, E, Q, -1, c)
    if isinstance(dv, Lead):  # value rows 0..m-1 only, the same in every example
        m, P = dv.rows.shape[1], dv.rows.shape[2]
        lead = wv[..., :m].reshape(B, E * Q, m) @ dv.rows.reshape(B, m, P * c)     # (B,E*Q,P*c)
        d = _add(d, lead.reshape(B, E, Q, P, c))
    elif dv is not None:
        P = dv.shape[3]
        d = _add(d, (wv.reshape(B * E, Q, S) @ dv.reshape(B * E, S, P * c)).reshape(B, E, Q, P, c))
    return out, d


def attention(spec: ModelSpec, params: Mapping[str, Tensor], layer: int, Z: Dual,
              prefix: Mapping[str, Dual] | None = None, low_rank: LowRankDual | None = None,
              queries: int | None = None) -> Dual:
    """transformer.attention with tangents."""
    lr = low_rank or {}
    (Zv, dZ) = Z
    B, E, T, _ = Zv.shape
    Q = T if queries is None else queries
    last = (Zv[:, :, T - Q:], _tail(dZ, T - Q, E, T))
    out: Dual | None = None
    n_prefix = 0
    for h, head in enumerate(spec.layers[layer].heads):
        p = f"layers.{layer}.heads.{h}."
        Wq, Wk, Wv = params[p + "Wq"], params[p + "Wk"], params[p + "Wv"]        # (B,k,d) (B,k,d) (B,v,d)
        q = linear(*last, Wq, lr.get(p + "Wq"))                                    # (B,E,Q,k)
        k = linear(Zv, dZ, Wk, lr.get(p + "Wk"))                                   # (B,E,T,k)
        v = linear(Zv, dZ, Wv, lr.get(p + "Wv"))                                   # (B,E,T,v)
        if prefix is not None:
            if p + "K" in prefix:
                (pk, dpk), (pv, dpv) = prefix[p + "K"], prefix[p + "V"]            # (B,m,k) (B,m,P,k)
            else:
                states, d_states = prefix[f"layers.{layer}.states"]                # (B,m,d) (B,m,P,d)
                pk, pv = states @ Wk.transpose(1, 2), states @ Wv.transpose(1, 2)  # (B,m,k) (B,m,v)
                dpk = None if d_states is None else _rows(d_states, Wk.transpose(1, 2))
                dpv = None if d_states is None else _rows(d_states, Wv.transpose(1, 2))
            n_prefix = pk.shape[1]
            k = _cat_tokens([(_expand_over_examples(pk, E), _expand_over_examples(dpk, E)), k])  # (B,E,m+T,k)
            v = _cat_tokens([(_expand_over_examples(pv, E), _expand_over_examples(dpv, E)), v])  # (B,E,m+T,v)
        logits, d_logits = _scores(q, k)                                           # (B,E,Q,S) (B,E,Q,V,S)
        mask = _attention_mask(spec, T, n_prefix, Zv.device)
        if mask is not None:
            logits = logits.masked_fill(~mask[T - Q:], float("-inf"))  # tangents there meet weight 0
        weights = torch.softmax(logits, dim=-1)                                    # (B,E,Q,S)
        d_weights = None
        if d_logits is not None:  # d softmax = w * (dl - <w, dl>)
            w = weights.unsqueeze(3)                                               # (B,E,Q,1,S)
            d_weights = w * (d_logits - (w * d_logits).sum(-1, keepdim=True))     # (B,E,Q,V,S)
        head_out = _mix((weights, d_weights), v)                                   # (B,E,Q,v)
        if head.has_wo:
            head_out = linear(*head_out, params[p + "Wo"], lr.get(p + "Wo"))        # (B,E,Q,d)
        out = head_out if out is None else (out[0] + head_out[0], _add(out[1], head_out[1]))
    return (torch.zeros_like(last[0]), None) if out is None else out


def _layer_norm(H: Dual) -> Dual:
    """Layer norm without affine terms, d y = (dH - mean dH - y mean(y dH)) / sigma."""
    Hv, dH = H
    y = torch.nn.functional.layer_norm(Hv, Hv.shape[-1:], eps=LAYERNORM_EPS)      # (B,E,Q,d)
    if dH is None:
        return y, None
    sigma = (Hv.var(dim=-1, unbiased=False, keepdim=True) + LAYERNORM_EPS).sqrt()  # (B,E,Q,1)
    yv = y.unsqueeze(3)                                                            # (B,E,Q,1,d)
    dy = (dH - dH.mean(-1, keepdim=True) - yv * (yv * dH).mean(-1, keepdim=True)) / sigma.unsqueeze(3)
    return y, dy


def mlp(spec: ModelSpec, params: Mapping[str, Tensor], layer: int, H: Dual,
        low_rank: LowRankDual | None = None) -> Dual:
    """transformer.mlp with tangents."""
    p = f"layers.{layer}."
    lr = low_rank or {}
    W1, b1, W2, b2 = params[p + "W1"], params[p + "b1"], params[p + "W2"], params[p + "b2"]
    pre, d_pre = linear(*H, W1, lr.get(p + "W1"))                                  # (B,E,T,h)
    pre = pre + b1[:, None, None, :]
    hidden = torch.relu(pre)
    d_hidden = None if d_pre is None else d_pre * (pre > 0).unsqueeze(3).to(d_pre.dtype)  # (B,E,T,V,h)
    branch, d_branch = linear(hidden, d_hidden, W2, lr.get(p + "W2"))              # (B,E,T,d)
    branch = branch + b2[:, None, None, :]
    if spec.mlp == "residual":
        return H[0] + branch, _add(H[1], d_branch)
    return branch, d_branch


def forward(spec: ModelSpec, params: Mapping[str, Tensor], X: Tensor, *, prompt: Dual | None = None,
            prefix: Mapping[str, Dual] | None = None, low_rank: LowRankDual | None = None,
            keep: int | None = None) -> Dual:
    """transformer.forward with tangents: the outputs (B, E, n or keep, d) and their derivatives
    (B, E, n or keep, V, d) along the tangents given with the trainable inputs."""
    B, E, n, d = X.shape
    if spec.positions:
        X = X + params["positional"][:, None, :n, :]                               # (B,E,n,d)
    Z: tuple[Tensor, Tensor | Lead | None] = (X, None)
    if prompt is not None:
        pv, dp = prompt                                                            # (B,m,d) (B,m,P,d)
        Z = (torch.cat([_expand_over_examples(pv, E), X], dim=2), None if dp is None else Lead(dp))  # (B,E,m+n,d)
    last = len(spec.layers) - 1
    for layer in range(len(spec.layers)):
        Q = Z[0].shape[2] if keep is None or layer != last else keep
        att = attention(spec, params, layer, Z, prefix, low_rank, Q)               # (B,E,Q,d)
        T = Z[0].shape[2]
        H = (Z[0][:, :, T - Q:] + att[0], _add(_tail(Z[1], T - Q, E, T), att[1]))
        if spec.layernorm:
            H = _layer_norm(H)
        Z = mlp(spec, params, layer, H, low_rank)
    count = n if keep is None else keep
    T = Z[0].shape[2]
    return Z[0][:, :, T - count:], None if Z[1] is None else Z[1][:, :, T - count:]


def jacobian_columns(tangent: Tensor | None, outputs: Tensor, P: int) -> Tensor:
    """Output tangents (B, E, k, P, d) -> the Jacobian (B, E*k*d, P) of the flattened outputs."""
    if tangent is None:
        return outputs.new_zeros(outputs.shape[0], outputs[0].numel(), P)
    return tangent.transpose(3, 4).reshape(outputs.shape[0], -1, P)


def outputs_and_jacobian(spec: ModelSpec, params: Mapping[str, Tensor], X: Tensor,
                         trainable: Mapping[str, Tensor], place, keep: int | None = None) -> tuple[Tensor, Tensor]:
    """A built-in method's outputs (B, E, k, d) and their Jacobian (B, E*k*d, P) in flat(trainable)
    order. place(duals) -> the keyword arguments of `forward` (prompt, prefix, low_rank) built from
    {name: (tensor, tangent)}, as the method's `outputs` builds them from the tensors."""
    tangents = identity_tangents(trainable)
    P = sum(t[0].numel() for t in trainable.values())
    out, d_out = forward(spec, params, X, keep=keep, **place({n: (t, tangents[n]) for n, t in trainable.items()}))
    return out, jacobian_columns(d_out, out, P)
