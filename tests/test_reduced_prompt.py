"""The reduced prompt attack (issue 27's upper side for L1 and L1+): exact reduction, recall on
planted instances, never below a certified floor, and the interval replay it relies on."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftaudit.claims.prompt_attack import reduced_attack_study
from peftaudit.evidence.outcome import SOLVED_MAX_ERROR
from peftaudit.models.interval import ExactAdapter, _precision, _softmax, enclose_outputs, ends, PRECISION
from peftaudit.models.interval import LONG_ROW, _iv
from peftaudit.models.methods import get_method
from peftaudit.search.engine import replay, rigorous_replay
from peftaudit.search.reduced_prompt import MAX_LENGTH, attack, one_token_attack, realize, reduced, residuals
from peftaudit.settings import get_profile
from peftaudit.strategies.hyp import l1_instances
from peftaudit.strategies.instances import l1_instance, l2_instance, planted_prompt_instance
from peftaudit.verify.encoders.l1 import certify
from peftaudit.verify.encoders.l2 import certify_l2

PROMPT = get_method("prompt")


@pytest.mark.parametrize("variant", ["skew", "exact", "parallel"])
@pytest.mark.parametrize("seed", range(3))
def test_written_back_tokens_have_the_reduced_errors(variant, seed):
    """(v, H) -> tokens is exact: the float model with the tokens errs as the reduction says."""
    inst = l1_instance(np.random.default_rng(seed), 4, variant, positional=(variant == "parallel"))
    r = reduced(inst)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        v = rng.normal(size=4) * 3
        H = math.log(rng.integers(1, 9)) if variant == "exact" else float(rng.uniform(0, math.log(MAX_LENGTH)))
        tokens = realize(r, v, H)
        assert 1 <= len(tokens) <= MAX_LENGTH
        expected = np.abs(residuals(r, v, H)).max()
        _, err = replay(PROMPT, inst, {"prompt": tokens})
        assert err == pytest.approx(expected, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("d", [2, 4, 8])
@pytest.mark.parametrize("seed", range(3))
def test_the_attack_memorizes_planted_prompt_instances(d, seed):
    inst = planted_prompt_instance(np.random.default_rng(seed), d, 2, targets="last", examples=2)
    found = attack(inst, delta=None, seed=seed)
    assert found is not None
    assert rigorous_replay(PROMPT, inst, {"prompt": found.prompt})[1] <= SOLVED_MAX_ERROR
    assert certify(inst, "L1").status != "certified"


@settings(max_examples=12, deadline=None)
@given(l1_instances(d=st.integers(2, 5), variant=st.sampled_from(["skew", "exact", "parallel"])),
       st.sampled_from(["L1", "L1+"]), st.integers(0, 2**31))
def test_the_attack_never_beats_a_certified_floor(inst, claim, seed):
    result = certify(inst, claim)
    found = attack(inst, delta=result.best_error, seed=seed)
    if result.status != "certified" or found is None:
        return
    assert rigorous_replay(PROMPT, inst, {"prompt": found.prompt})[0] >= float(result.margin)


def test_the_study_turns_an_attack_below_a_floor_into_a_violation():
    insts = [l1_instance(np.random.default_rng(s), 3, "skew") for s in range(2)]
    true = {i: certify(inst, "L1").to_json() for i, inst in enumerate(insts)}
    study = reduced_attack_study(insts, true, get_profile("quick"), 0)
    assert study["violations"] == [] and len(study["rows"]) == 2
    assert all(0 < r["ratio"] <= 1 for r in study["rows"])
    lying = {0: dict(true[0], margin=1e6)}  # a floor the attack can show false
    study = reduced_attack_study(insts[:1], lying, get_profile("quick"), 0)
    assert len(study["violations"]) == 1 and "below the certified floor" in study["violations"][0]


def test_the_reduction_declines_models_it_does_not_describe():
    two_layers = planted_prompt_instance(np.random.default_rng(0), 3, 1, layers=2, targets="last")
    assert reduced(two_layers) is None and attack(two_layers, delta=None, seed=0) is None


@pytest.mark.parametrize("attention", ["encoder", "causal"])
def test_kept_positions_equal_the_full_enclosure(attention):
    inst = planted_prompt_instance(np.random.default_rng(3), 3, 2, layers=2, attention=attention, tokens=3)
    adapter = ExactAdapter(prompt=np.random.default_rng(1).normal(size=(2, 3)))
    full = enclose_outputs(inst.spec, inst.weights, inst.dataset[0].X, adapter)
    for keep in (1, 2, 3):
        part = enclose_outputs(inst.spec, inst.weights, inst.dataset[0].X, adapter, keep=keep)
        assert [[ends(x) for x in row] for row in part] == [[ends(x) for x in row] for row in full[-keep:]]


@pytest.mark.parametrize("scale", [1.0, 30.0, 3e3, 3e4])
def test_long_softmax_rows_are_enclosed(scale):
    logits = np.random.default_rng(0).normal(size=LONG_ROW + 9) * scale
    w = np.exp(logits - logits.max())
    w /= w.sum()
    with _precision(PRECISION):
        enclosure = _softmax([_iv(x) for x in logits])
        for box, wi in zip(enclosure, w):
            lo, hi = ends(box)
            assert float(lo) <= wi * (1 + 1e-12) + 1e-300 and wi * (1 - 1e-12) <= float(hi)
            assert float(hi - lo) <= 1e-20


@pytest.mark.parametrize("attention", ["encoder", "causal"])
@pytest.mark.parametrize("seed", range(2))
def test_the_one_token_attack_memorizes_planted_one_token_instances(attention, seed):
    inst = planted_prompt_instance(np.random.default_rng(seed), 4, 1, attention=attention, tokens=2)
    found = one_token_attack(inst, seed=seed)
    assert found is not None and found.prompt.shape == (1, 4)
    assert rigorous_replay(PROMPT, inst, {"prompt": found.prompt})[1] <= SOLVED_MAX_ERROR


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([4, 6]), st.sampled_from(["encoder", "causal"]))
def test_the_one_token_attack_never_beats_a_certified_l2_floor(seed, d, attention):
    inst = l2_instance(np.random.default_rng(seed), d, 2, attention=attention)
    result = certify_l2(inst)
    found = one_token_attack(inst, seed=seed, random_starts=8)
    if result.status == "certified":
        assert rigorous_replay(PROMPT, inst, {"prompt": found.prompt})[0] >= float(result.margin)
