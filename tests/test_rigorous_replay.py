"""The model is defined in exact arithmetic; float64 approximates it. The interval replay encloses
the exact model's error, decides REFUTED, and never contradicts a certificate."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peftaudit.evidence import ClaimOutcome, decide
from peftaudit.evidence.outcome import shape
from peftaudit.claims import get_claim
from peftaudit.instance import from_dict, to_dict
from peftaudit.models.methods import get_method
from peftaudit.search.engine import Attempt, SearchConfig, replay, rigorous_replay, search
from peftaudit.strategies.instances import l1_instance, model_outputs, planted_prompt_instance
from peftaudit.verify.encoders.l1 import certify


def _random_adapter(method, inst, size, seed):
    trainable = method.init(inst.spec, 1, size, torch.Generator().manual_seed(seed))
    return {k: v[0].numpy() for k, v in trainable.items()}


@pytest.mark.parametrize("name,options,size", [("prompt", {}, 2), ("prefix", {}, 2), ("prefix-kv", {}, 1),
                                               ("lora", {"targets": "v,q,2"}, 1), ("full", {}, 1)])
@pytest.mark.parametrize("variant", ["encoder", "causal", "layernorm", "positional"])
def test_the_enclosure_contains_the_float_replay(name, options, size, variant):
    rng = np.random.default_rng(3)
    inst = planted_prompt_instance(rng, 3, 1, layers=2, attention="causal" if variant == "causal" else "encoder")
    doc = to_dict(inst)
    if variant == "layernorm":
        doc["model"]["layernorm"] = True
    if variant == "positional":
        doc["model"]["positional"] = rng.normal(size=(inst.n_tokens, 3)).tolist()
    inst = from_dict(doc)
    method = get_method(name, **options)
    adapter = _random_adapter(method, inst, size, 1)
    _, err = replay(method, inst, adapter)
    lo, hi = rigorous_replay(method, inst, adapter)
    assert lo <= hi and hi - lo < 1e-9 * max(1.0, hi)
    assert lo - 1e-10 * max(1.0, err) <= err <= hi + 1e-10 * max(1.0, err)


def test_float_memorization_of_a_rounded_input_is_not_a_refutation():
    """2^60 + 1 is exact in the model and 2^60 in float64: targets computed in float64 make the
    float replay report error 0, the exact model misses them, and nothing may be REFUTED."""
    rng = np.random.default_rng(0)
    inst = planted_prompt_instance(rng, 3, 1)
    doc = to_dict(inst)
    positional = np.zeros((inst.n_tokens, 3))
    positional[-1, 0] = 1.0
    doc["model"]["positional"] = positional.tolist()
    for ex in doc["dataset"]:
        ex["X"][-1][0] = float(2**60)
    prompt = np.asarray(inst.meta["planted"]["prompt"])
    inst = from_dict(doc)
    Y = model_outputs(inst.spec, inst.weights, inst.inputs(), prompt)
    for ex, y in zip(doc["dataset"], Y):
        ex["Y"] = y.tolist()
    inst = from_dict(doc)
    method = get_method("prompt")
    loss, err = replay(method, inst, {"prompt": prompt})
    lo, hi = rigorous_replay(method, inst, {"prompt": prompt})
    assert err == 0.0 and lo >= 0.5  # float64 says "memorized"; the exact model is off by about 1
    attempt = Attempt(0, "prompt", 1, 3, loss, err, True, {"prompt": prompt}, exact_max_error=(lo, hi))
    outcome = ClaimOutcome(claim=get_claim("L1"), instances=[inst], shapes=[shape(inst)])
    outcome.searches = {"prompt": [attempt]}
    decide(outcome)
    assert outcome.verdict != "REFUTED" and "not confirmed" in outcome.reason


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["L1", "L1+"]))
def test_certificates_and_the_interval_replay_never_contradict(seed, claim):
    """For certified instances, no prompt (random, or the search's best) has an enclosure whose
    upper end is below the certified margin."""
    rng = np.random.default_rng(seed)
    inst = l1_instance(rng, 3, "skew" if claim == "L1" else "parallel", positional=claim == "L1+")
    result = certify(inst, claim)
    if result.status != "certified":
        return
    margin = float(result.margin)
    method = get_method("prompt")
    best = search([inst], SearchConfig(sizes=(1, 3), restarts=2, steps=60, polish_steps=10, rounds=1), progress=False)
    adapters = [a.adapter for a in best] + [_random_adapter(method, inst, m, seed) for m in (1, 2, 5)]
    for adapter in adapters:
        lo, hi = rigorous_replay(method, inst, adapter)
        assert hi >= margin, (lo, hi, margin)


def test_a_method_that_returns_nan_makes_its_claim_error():
    outcome = ClaimOutcome(claim=get_claim("L1"), instances=[object()])
    outcome.certificates = {0: {"status": "certified", "margin": 0.5}}
    outcome.searches = {"prompt": [Attempt(0, "prompt", 1, 3, float("inf"), float("inf"), False)]}
    decide(outcome)
    assert outcome.verdict == "ERROR" and "non-finite" in outcome.reason
