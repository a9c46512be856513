"""The nn.Module view of the reference transformer computes what the functional one does."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peftaudit.models.module import TransformerModule
from peftaudit.models.transformer import forward, to_torch
from peftaudit.strategies.hyp import generic_instances, model_specs

TOL = 1e-15  # relative to the largest output (matmul and nn.Linear may round a last bit apart)


def _rounding_floor(inst, X, prompt) -> float:
    """How far the reference itself moves when its inputs move by one ulp: the two views round
    their matrix products apart by about that much (layer norm of nearly equal coordinates, e.g.
    at d = 2, amplifies a last-bit difference by 1/sqrt(variance))."""
    bumped = torch.as_tensor(np.nextafter(X.numpy(), np.inf))
    a = forward(inst.spec, to_torch(inst.weights), X[None], prompt=None if prompt is None else prompt[None])[0]
    b = forward(inst.spec, to_torch(inst.weights), bumped[None], prompt=None if prompt is None else prompt[None])[0]
    return float((a - b).abs().max())


@settings(max_examples=40)
@given(generic_instances(specs=model_specs(d=st.integers(1, 6), max_layers=3, max_heads=3)), st.integers(0, 3),
       st.integers(0, 2**32 - 1))
def test_module_forward_equals_the_functional_reference(inst, prompt_length, seed):
    module = TransformerModule.from_instance(inst)
    X = torch.as_tensor(inst.inputs(), dtype=torch.float64)                       # (E,n,d)
    prompt = None
    if prompt_length:
        prompt = torch.as_tensor(np.random.default_rng(seed).normal(size=(prompt_length, inst.spec.d)))
    reference = forward(inst.spec, to_torch(inst.weights), X[None], prompt=None if prompt is None else prompt[None])[0]
    with torch.no_grad():
        view = module(X, prompt)                                                    # (E,n,d)
        batched = module(X[None].expand(2, *X.shape), None if prompt is None else prompt[None].expand(2, *prompt.shape))
    scale = max(1.0, float(reference.abs().max()))
    bound = max(TOL * scale * 4, 4 * _rounding_floor(inst, X, prompt))
    assert view.shape == reference.shape
    assert float((view - reference).abs().max()) <= bound
    assert float((batched - view).abs().max()) <= bound  # a leading problem dimension changes nothing


def test_module_names_read_like_peft_target_modules_and_are_frozen():
    from peftaudit.models.spec import simple_spec
    from peftaudit.strategies.weights import model_weights

    spec = simple_spec(3, layers=2, heads=2, positions=4)
    module = TransformerModule(spec, model_weights(np.random.default_rng(0), spec))
    names = {name for name, _ in module.named_modules()}
    assert {"layers.0.attn.heads.1.q_proj", "layers.1.attn.heads.0.v_proj", "layers.0.mlp.fc1",
            "layers.1.mlp.fc2"} <= names
    assert all(not p.requires_grad for p in module.parameters())
    assert module.positional.shape == (4, 3)
