"""Each problem's matrix applied to its rows, with a vmap rule that keeps the matrix uncopied.

The search's Jacobians push P tangents (or pull R cotangents) through the model under
`torch.func.vmap`. torch's own batching rule for `A @ M` with only A batched expands M once per
tangent: for a d x d weight that is P d^2 numbers per problem, which made memory per problem grow
with d^2 P and dominated the Jacobian's time at d = 64. Here the vmapped dimension joins A's rows
instead (one matrix product, no copy of M), in the forward, the tangent (jvp) and the backward
alike. The values are those of `A @ M`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

MIN_ENTRIES = 1024  # a 32 x 32 matrix and up take the Function


class RowMap(torch.autograd.Function):
    """A (B, N, i) @ M (B, i, o) -> (B, N, o)."""

    generate_vmap_rule = False

    @staticmethod
    def forward(A: Tensor, M: Tensor) -> Tensor:
        return A @ M                                                       # (B,N,o)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        A, M = inputs
        ctx.save_for_backward(A, M)
        ctx.save_for_forward(A, M)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        A, M = ctx.saved_tensors
        need_A, need_M = ctx.needs_input_grad  # a frozen weight's gradient would cost R i o per problem
        return (rowmap(grad, M.transpose(1, 2)) if need_A else None,       # (B,N,i)
                A.transpose(1, 2) @ grad if need_M else None)              # (B,i,o)

    @staticmethod
    def jvp(ctx: Any, dA: Tensor | None, dM: Tensor | None) -> Tensor:
        A, M = ctx.saved_tensors
        out = rowmap(dA, M) if dA is not None else None                    # (B,N,o)
        if dM is not None:
            out = A @ dM if out is None else out + A @ dM                  # (B,N,o)
        return out

    @staticmethod
    def vmap(info: Any, in_dims: tuple, A: Tensor, M: Tensor) -> tuple[Tensor, int]:
        a_dim, m_dim = in_dims
        if m_dim is None:  # the common case: tangents of the tokens, one weight per problem
            A = A.movedim(a_dim, 1)                                        # (B,V,N,i)
            B, V, N, i = A.shape
            out = rowmap(A.reshape(B, V * N, i), M)                        # (B,V*N,o)
            return out.reshape(B, V, N, out.shape[-1]), 1                  # (B,V,N,o)
        V = info.batch_size
        A = A.movedim(a_dim, 0) if a_dim is not None else A.expand(V, *A.shape)  # (V,B,N,i)
        M = M.movedim(m_dim, 0)                                            # (V,B,i,o)
        out = rowmap(A.reshape(-1, *A.shape[2:]), M.reshape(-1, *M.shape[2:]))  # (V*B,N,o)
        return out.reshape(V, -1, *out.shape[1:]), 0                       # (V,B,N,o)


def rowmap(A: Tensor, M: Tensor) -> Tensor:
    """A (B, N, i) @ M (B, i, o) -> (B, N, o), cheap under the Jacobian's vmap.

    Outside torch.func's transforms (plain forwards, Adam's backward) the product is plain
    `A @ M`, which plain autograd differentiates without copies (a forward at d = 64 took 0.30 ms
    plain against 0.50 ms through the Function). So are matrices under MIN_ENTRIES: copying them
    per tangent costs less than the Function's Python dispatch at every transform level (planted
    prompts at d = 16: 6.3 s plain against 11.1 s through the Function; at d = 32: 46.9 s against
    31.9 s)."""
    if M.shape[-2] * M.shape[-1] < MIN_ENTRIES or not torch._C._are_functorch_transforms_active():
        return A @ M                                                       # (B,N,o)
    return RowMap.apply(A, M)
