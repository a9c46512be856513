"""One contract over every PEFT method: shapes, counts, batching, and agreement with the model."""

import math

import numpy as np
import pytest
import torch

from peftaudit.errors import InputError, UnknownNameError
from peftaudit.models.methods import get_method, method_names
from peftaudit.models.spec import simple_spec
from peftaudit.models.transformer import forward, to_torch
from peftaudit.strategies.weights import model_weights

SPECS = [simple_spec(3), simple_spec(4, layers=2, heads=2, attention="causal", positions=3, mlp="plain")]
METHODS = [("prompt", {}), ("prefix", {}), ("prefix-kv", {}), ("lora", {"targets": "v"}),
           ("lora", {"targets": "q,k,v,o,1,2"}), ("full", {})]


def test_registry_lists_every_method_and_rejects_unknown():
    assert {"prompt", "prefix", "prefix-kv", "lora", "full"} <= set(method_names())
    with pytest.raises(UnknownNameError, match="prefix-kv"):
        get_method("adapter-xyz")


@pytest.mark.parametrize("spec", SPECS, ids=["1L1H", "2L2H-causal"])
@pytest.mark.parametrize("name,options", METHODS, ids=[f"{n}-{o}" for n, o in METHODS])
def test_method_contract(spec, name, options):
    method = get_method(name, **options)
    rng = np.random.default_rng(0)
    B, E, n, size = 5, 2, 3, 2
    params = to_torch(model_weights(rng, spec), batch=B)
    gen = torch.Generator().manual_seed(0)
    trainable = method.init(spec, B, size, gen)
    per_problem = sum(math.prod(t.shape[1:]) for t in trainable.values())
    assert all(t.shape[0] == B for t in trainable.values())
    assert per_problem == method.param_count(spec, size)
    X = torch.as_tensor(rng.normal(size=(B, E, n, spec.d)))
    out = method.outputs(spec, params, trainable, X)
    assert out.shape == (B, E, n, spec.d)
    # batching: problem 3 alone gives the same outputs
    single = method.outputs(spec, {k: v[3:4] for k, v in params.items()},
                            {k: v[3:4] for k, v in trainable.items()}, X[3:4])
    torch.testing.assert_close(single[0], out[3], rtol=0, atol=1e-12)
    # gradients reach every trainable tensor
    for t in trainable.values():
        t.requires_grad_(True)
    method.outputs(spec, params, trainable, X).square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in trainable.values())


def test_prompt_method_is_forward_with_prompt():
    spec = SPECS[1]
    rng = np.random.default_rng(1)
    params = to_torch(model_weights(rng, spec))
    P = torch.as_tensor(rng.normal(size=(1, 2, spec.d)))
    X = torch.as_tensor(rng.normal(size=(1, 2, 3, spec.d)))
    out = get_method("prompt").outputs(spec, params, {"prompt": P}, X)
    assert torch.equal(out, forward(spec, params, X, prompt=P))


def test_zero_updates_leave_the_model_unchanged():
    spec = SPECS[0]
    rng = np.random.default_rng(2)
    params = to_torch(model_weights(rng, spec))
    X = torch.as_tensor(rng.normal(size=(1, 2, 3, spec.d)))
    base = forward(spec, params, X)
    lora = get_method("lora", targets="v,1")
    tr = lora.init(spec, 1, 1, torch.Generator().manual_seed(0))
    tr = {k: (torch.zeros_like(v) if k.endswith(".B") else v) for k, v in tr.items()}
    assert torch.equal(lora.outputs(spec, params, tr, X), base)
    full = get_method("full")
    zero = {k: torch.zeros_like(v) for k, v in full.init(spec, 1, 1, torch.Generator()).items()}
    assert torch.equal(full.outputs(spec, params, zero, X), base)


def test_prefix_styles_agree_when_keys_are_projected_states():
    spec = SPECS[0]
    rng = np.random.default_rng(4)
    w = model_weights(rng, spec)
    params = to_torch(w)
    states = torch.as_tensor(rng.normal(size=(1, 2, spec.d)))
    p = "layers.0.heads.0."
    kv = {p + "K": states @ params[p + "Wk"].transpose(1, 2), p + "V": states @ params[p + "Wv"].transpose(1, 2)}
    X = torch.as_tensor(rng.normal(size=(1, 2, 3, spec.d)))
    a = get_method("prefix").outputs(spec, params, {"layers.0.states": states}, X)
    b = get_method("prefix-kv").outputs(spec, params, kv, X)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_bad_sizes_and_targets():
    spec = SPECS[0]
    with pytest.raises(InputError, match="positive integer"):
        get_method("prompt").init(spec, 1, 0, torch.Generator())
    with pytest.raises(InputError, match="q, k, v, o, 1, 2"):
        get_method("lora", targets="x")
    with pytest.raises(InputError, match="matrices this model has"):
        get_method("lora", targets="o").init(spec, 1, 1, torch.Generator())


def test_every_optional_ability_is_declared_once_and_documented():
    """The optional part of the contract is a table (models/methods/abilities.py), read through
    ability(); docs/methods.md lists each one, and an undeclared name is an error, not a default."""
    from pathlib import Path

    from peftaudit.models.methods import get_method
    from peftaudit.models.methods.abilities import ABILITIES, ability

    docs = (Path(__file__).resolve().parent.parent / "docs" / "methods.md").read_text()
    for name in ABILITIES:
        assert f"| `{name}` |" in docs
    assert ability(get_method("prompt"), "kind") == "input-space" and ability(get_method("prompt"), "projectable")
    assert ability(get_method("lora"), "kind") == "weight-space" and ability(get_method("prefix"), "kind") == ""
    assert ability(object(), "sized") is True and ability(object(), "identity_adapter") is None
    with pytest.raises(KeyError):
        ability(object(), "no-such-ability")
