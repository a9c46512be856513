"""The reference transformer against an independent loop, exact Fractions, and the SPEC lemma."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from peftaudit.models.exact import evaluate
from peftaudit.models.spec import simple_spec
from peftaudit.models.transformer import attention, forward, to_torch
from peftaudit.strategies.hyp import generic_instances, model_specs, rngs
from peftaudit.strategies.weights import model_weights


def torch_outputs(inst, prompt=None):
    X = torch.as_tensor(inst.inputs())[None]
    P = None if prompt is None else torch.as_tensor(prompt)[None]
    return forward(inst.spec, to_torch(inst.weights), X, prompt=P)[0].numpy()


@given(generic_instances(), st.integers(0, 3), rngs())
def test_forward_matches_plain_token_loop(inst, prompt_len, rng):
    prompt = rng.normal(size=(prompt_len, inst.spec.d)) if prompt_len else None
    out = torch_outputs(inst, prompt)
    for e, ex in enumerate(inst.dataset):
        ref = np.array(evaluate(inst.spec, inst.weights, ex.X, prompt))
        np.testing.assert_allclose(out[e], ref, rtol=0, atol=1e-12)


@given(model_specs(max_layers=2).filter(lambda s: not s.layernorm), rngs(), st.integers(0, 2))
def test_forward_matches_exact_fractions_with_zero_logits(spec, rng, prompt_len):
    weights = model_weights(rng, spec)
    for name in weights:
        if name.endswith("Wq"):
            weights[name] = np.zeros_like(weights[name])  # zero logits: uniform, rational softmax
    X = rng.normal(size=(3, spec.d))
    prompt = rng.normal(size=(prompt_len, spec.d)) if prompt_len else None
    exact = evaluate(spec, weights, X, prompt, exact=True)
    assert isinstance(exact[0][0], Fraction)
    P = None if prompt is None else torch.as_tensor(prompt)[None]
    out = forward(spec, to_torch(weights), torch.as_tensor(X)[None, None], prompt=P)[0, 0].numpy()
    np.testing.assert_allclose(out, np.array(exact, dtype=float), rtol=0, atol=1e-12)


def _att_single(weights, query, Z):
    """Att(x, Z) of head 0 of layer 0 as SPEC writes it: W_v Z softmax((W_k Z)^T W_q x)."""
    p = "layers.0.heads.0."
    logits = Z @ weights[p + "Wk"].T @ (weights[p + "Wq"] @ query)
    s = np.exp(logits - logits.max())
    return weights[p + "Wv"] @ Z.T @ (s / s.sum()), np.exp(logits).sum()


@given(rngs(), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4))
def test_lemma_prompt_attention_is_a_convex_mix(rng, d, m_p, m):
    spec = simple_spec(d)
    weights = model_weights(rng, spec)
    P, X = rng.normal(size=(m_p, d)), rng.normal(size=(m, d))
    x = X[-1]
    full, _ = _att_single(weights, x, np.vstack([P, X]))
    att_p, S_p = _att_single(weights, x, P)
    att_x, S_x = _att_single(weights, x, X)
    lam = S_p / (S_p + S_x)
    assert 0 < lam < 1
    np.testing.assert_allclose(full, lam * att_p + (1 - lam) * att_x, rtol=0, atol=1e-12)
    # the torch attention of the last position agrees with the formula
    Z = torch.as_tensor(np.vstack([P, X]))[None, None]
    torch_att = attention(spec, to_torch(weights), 0, Z)[0, 0, -1].numpy()
    np.testing.assert_allclose(torch_att, full, rtol=0, atol=1e-12)


def test_causal_prompt_never_sees_the_input():
    rng = np.random.default_rng(3)
    spec = simple_spec(3, layers=2, attention="causal")
    weights = to_torch(model_weights(rng, spec))
    P = torch.as_tensor(rng.normal(size=(1, 2, 3)))
    X1 = torch.as_tensor(rng.normal(size=(1, 1, 2, 3)))
    X2 = X1.clone()
    X2[..., 1, :] += 1.0
    out1 = forward(spec, weights, X1, prompt=P)
    out2 = forward(spec, weights, X2, prompt=P)
    assert torch.equal(out1[..., 0, :], out2[..., 0, :])  # position 0 cannot see position 1
    assert not torch.equal(out1[..., 1, :], out2[..., 1, :])


@given(generic_instances(specs=model_specs(max_layers=2, max_heads=2)), st.integers(0, 2), st.integers(1, 3), rngs())
def test_keep_and_factored_updates_compute_the_same_outputs(inst, prompt_len, keep, rng):
    """keep=k gives the last k positions of the full forward; a factored update W + U V gives what
    the dense matrix does (the search uses both; every reported number comes from a replay)."""
    W = to_torch(inst.weights)
    X = torch.as_tensor(inst.inputs())[None]
    P = torch.as_tensor(rng.normal(size=(1, prompt_len, inst.spec.d))) if prompt_len else None
    keep = min(keep, X.shape[2])
    full = forward(inst.spec, W, X, prompt=P)
    torch.testing.assert_close(forward(inst.spec, W, X, prompt=P, keep=keep), full[:, :, -keep:], rtol=0, atol=1e-13)
    name = "layers.0.heads.0.Wv"
    U = torch.as_tensor(rng.normal(size=(1, W[name].shape[1], 2)))
    V = torch.as_tensor(rng.normal(size=(1, 2, W[name].shape[2])))
    dense = forward(inst.spec, {**W, name: W[name] + U @ V}, X, prompt=P)
    factored = forward(inst.spec, W, X, prompt=P, low_rank={name: (U, V)})
    scale = max(1.0, float(dense.abs().max()))
    assert float((dense - factored).abs().max()) <= 1e-10 * scale


def test_rowmap_gives_matmul_values_and_derivatives_in_every_transform(monkeypatch):
    """`rowmap` (A @ M per problem, with its own vmap rule) against plain matmul: values, forward-
    and reverse-mode Jacobians under vmap with the weight frozen or trainable, and gradients."""
    from peftaudit.models import rowmap as module
    from peftaudit.models.rowmap import rowmap

    monkeypatch.setattr(module, "MIN_ENTRIES", 0)  # small matrices here, all through the Function

    gen = torch.Generator().manual_seed(3)
    B, N, i, o, V = 3, 5, 4, 6, 7
    A = torch.randn(B, N, i, generator=gen, dtype=torch.float64)
    M = torch.randn(B, i, o, generator=gen, dtype=torch.float64)
    M2 = torch.randn(B, o, i, generator=gen, dtype=torch.float64)
    assert torch.equal(rowmap(A, M), A @ M)

    def net(mm):  # a two-layer map of A and M through the product under test
        return lambda a, m: mm(torch.tanh(mm(a, m)), M2)                     # (B,N,i)

    plain, ours = net(torch.matmul), net(rowmap)
    tA = torch.randn(V, B, N, i, generator=gen, dtype=torch.float64)       # tangents of A
    tM = torch.randn(V, B, i, o, generator=gen, dtype=torch.float64)       # tangents of M
    for f_tangents in (lambda f: torch.func.vmap(lambda t: torch.func.jvp(lambda a: f(a, M), (A,), (t,))[1])(tA),
                       lambda f: torch.func.vmap(lambda t: torch.func.jvp(lambda m: f(A, m), (M,), (t,))[1])(tM),
                       lambda f: torch.func.vmap(lambda s, t: torch.func.jvp(f, (A, M), (s, t))[1])(tA, tM)):
        assert torch.allclose(f_tangents(ours), f_tangents(plain), rtol=1e-12, atol=1e-13)
    cot = torch.randn(V, B, N, i, generator=gen, dtype=torch.float64)
    for argnums in (0, 1, (0, 1)):
        pulled = [torch.func.vmap(torch.func.vjp(lambda a, m: f(a, m), A, M)[1])(cot) for f in (ours, plain)]
        for got, want in zip(*pulled):
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-13)
        grads = [torch.func.grad(lambda a, m, f=f: f(a, m).square().sum(), argnums=argnums)(A, M) for f in (ours, plain)]
        for got, want in zip(*(g if isinstance(g, tuple) else (g,) for g in grads)):
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-13)
    batched_M = torch.func.vmap(rowmap, in_dims=(None, 0))(A, tM)                # the weight batched, A not
    assert torch.allclose(batched_M, A @ tM, rtol=1e-13, atol=1e-14)


SPEC_VARIANTS = [  # (attention, layers, heads, layernorm, positions, mlp): each option on in some row
    ("encoder", 1, 1, False, 0, "residual"), ("causal", 1, 2, False, 0, "residual"),
    ("encoder", 2, 1, True, 0, "plain"), ("causal", 2, 2, True, 4, "residual"),
    ("encoder", 1, 2, True, 4, "plain"), ("causal", 2, 1, False, 4, "plain"),
]
METHODS_WITH_JACOBIAN = [("prompt", {}), ("prefix", {}), ("prefix-kv", {}), ("lora", {"targets": "v"}),
                         ("lora", {"targets": "q,k,v,o,1,2"})]


def _outputs_and_jacobian_against_torch_func(spec, name, options, keep):
    """A built-in method's written-out forward mode against its `outputs` and torch.func.jacfwd."""
    from peftaudit.conformance import torch_func_jacobian
    from peftaudit.models.methods import get_method
    from peftaudit.models.transformer import stack_weights

    rng = np.random.default_rng(1)
    B, E, n = 3, 2, 3
    W = stack_weights([model_weights(rng, spec) for _ in range(B)])
    X = torch.as_tensor(rng.normal(size=(B, E, n, spec.d)))
    method = get_method(name, **options)
    trainable = method.init(spec, B, 2, torch.Generator().manual_seed(2))
    out, J = method.outputs_and_jacobian(spec, W, trainable, X, keep=keep)
    want = torch_func_jacobian(method, spec, W, trainable, X, keep)                 # (B,R,P)
    return out, method.outputs(spec, W, trainable, X, keep=keep), J, want


@pytest.mark.parametrize("variant", SPEC_VARIANTS)
@pytest.mark.parametrize("name,options", METHODS_WITH_JACOBIAN)
def test_written_out_forward_mode_gives_the_outputs_and_torch_funcs_jacobian(variant, name, options):
    """models/tangents.py, which LM's Jacobians come from for the built-in methods: the values are
    `outputs`' own bit for bit, and the Jacobian is torch.func's, for every method, attention kind,
    depth, head count (with W_o), layer norm, positional code and MLP kind, all positions or the last."""
    attention_kind, layers, heads, layernorm, positions, mlp = variant
    spec = simple_spec(4, layers=layers, heads=heads, attention=attention_kind, layernorm=layernorm,
                       positions=positions, mlp=mlp)
    for keep in (None, 1):
        out, want_out, J, want = _outputs_and_jacobian_against_torch_func(spec, name, options, keep)
        assert torch.equal(out, want_out)
        assert J.shape == want.shape
        assert float((J - want).abs().max()) <= 1e-10 * max(1.0, float(want.abs().max()))
