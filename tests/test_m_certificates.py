"""Claim M: certificates on the invertible family, the independent checker, the Lipschitz bounds
against finite differences, planted (memorizable) instances never certified, ablations refuted."""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, strategies as st

from peftaudit.models.exact import evaluate
from peftaudit.models.transformer import attention, forward, to_torch
from peftaudit.search.engine import SearchConfig, search
from peftaudit.strategies import hyp, m_instances as build
from peftaudit.strategies.instances import model_outputs
from peftaudit.instance import digest, from_dict
from peftaudit.verify.checkers import MalformedCertificate, check_certificate
from peftaudit.verify.encoders.m import (certify_m, hypotheses, input_radius, layer_bounds, layer_conditions,
                                per_layer_injective)

SHAPES = [(d, layers, att) for d in (2, 4, 8) for layers in (1, 2) for att in ("encoder", "causal")]


def _token_gap(A: np.ndarray, B: np.ndarray) -> float:
    """max over tokens of the 2-norm of the difference (the norm the certificate uses)."""
    return float(np.linalg.norm(A - B, axis=-1).max())


@pytest.mark.parametrize("d,layers,att", SHAPES)
def test_invertible_family_is_certified_and_checked(d, layers, att):
    inst = build.m_invertible_instance(np.random.default_rng([d, layers, len(att)]), d, layers=layers, attention=att)
    assert hypotheses(inst) is None
    result = certify_m(inst)
    assert result.status == "certified", result.reason
    verdict = check_certificate(result.certificate)
    assert verdict.valid and verdict.margin >= result.margin > 0


def _certificate(seed: int = 0, layers: int = 2) -> dict:
    inst = build.m_invertible_instance(np.random.default_rng(seed), 4, layers=layers, attention="encoder")
    return certify_m(inst).certificate


@pytest.mark.parametrize("tamper,expect", [
    (lambda c: c["layers"][0].__setitem__("sV", ["1/1000"]), "not proved"),
    (lambda c: c["layers"][1].__setitem__("sW1", "1/1000"), "not proved"),
    (lambda c: c["layers"][0].__setitem__("rb2", "0"), "bias"),
    (lambda c: c.__setitem__("margin", str(Fraction(c["margin"]) * 2)), "not established"),
    (lambda c: c.__setitem__("D", str(Fraction(c["D"]) * 3)), "distance"),
    (lambda c: c.__setitem__("r0", "1/100"), "r0"),
    (lambda c: c.__setitem__("t", "1"), "consistent"),
    (lambda c: c["instance"]["dataset"][1]["Y"][0].__setitem__(0, 123.0), "equal targets"),
    (lambda c: c["instance"]["model"]["layers"][0]["heads"][0].__setitem__(
        "Wv", (10 * np.array(c["instance"]["model"]["layers"][0]["heads"][0]["Wv"])).tolist()), "not proved"),
])
def test_checker_rejects_tampered_certificates(tamper, expect):
    cert = copy.deepcopy(_certificate())
    assert check_certificate(cert).valid
    tamper(cert)
    cert["instance_sha256"] = digest(from_dict(cert["instance"]))  # a tamperer rebinds the instance
    verdict = check_certificate(cert)
    assert not verdict.valid and expect in verdict.reason


def test_checker_rejects_malformed_pairs():
    cert = copy.deepcopy(_certificate())
    cert["pair"] = [0, 0]
    with pytest.raises(MalformedCertificate, match="pair"):
        check_certificate(cert)


# ------------------------------------------------------------------ the bounds against finite differences

@st.composite
def bounded_attention_cases(draw, strong: bool = True):
    """A model with drawn norms, a prompt with token norms <= B, and two sequences in the ball.
    strong=False keeps the norms where M usually certifies (so the certified bound gets tested)."""
    seed = draw(st.integers(0, 2**32 - 1))
    d, layers = draw(st.sampled_from([2, 3, 5])), draw(st.sampled_from([1, 2]))
    att = draw(st.sampled_from(["encoder", "causal"]))
    if strong:
        v_norm, a_norm = draw(st.floats(0.05, 1.5)), draw(st.floats(0.0, 2.0))
    else:
        v_norm, a_norm = draw(st.floats(0.02, 0.3)), draw(st.floats(0.0, 0.2))
    rng = np.random.default_rng(seed)
    inst = build.m_invertible_instance(rng, d, layers=layers, attention=att, v_norm=v_norm, a_norm=a_norm)
    m_p = draw(st.integers(1, 3))
    B = draw(st.sampled_from([0.25, 1.0, 2.0]))
    P = [build._tokens_in_ball(rng, m_p, d, B) for _ in range(2)]
    scale = draw(st.sampled_from([1e-4, 1e-2, 0.3]))  # small gaps probe the derivative bound
    return inst, P, B, scale, rng


@given(bounded_attention_cases())
def test_attention_lipschitz_bound_dominates_finite_differences(case):
    inst, P, B, scale, rng = case
    lb = layer_bounds(inst)[0]
    R = max(float(input_radius(inst)), B)
    W = to_torch(inst.weights)
    X = inst.inputs()[0]
    Z1 = np.vstack([P[0], X])
    Z2 = np.vstack([P[1] if scale > 0.1 else P[0] + scale * rng.normal(size=P[0].shape), X + scale * rng.normal(
        size=X.shape)])
    Z2 *= np.minimum(1.0, R / np.linalg.norm(Z2, axis=1, keepdims=True))  # stay in the ball of radius R
    att = [attention(inst.spec, W, 0, torch.as_tensor(Z, dtype=torch.float64)[None, None])[0, 0].numpy()
           for Z in (Z1, Z2)]
    alpha = float(lb.attention_lipschitz(Fraction(R)))
    assert _token_gap(att[0], att[1]) <= alpha * _token_gap(Z1, Z2) * (1 + 1e-9) + 1e-15


@given(bounded_attention_cases(strong=False))
def test_certified_lower_lipschitz_holds_for_sampled_prompts(case):
    inst, P, B, _, rng = case
    result = certify_m(inst, bound=B)
    assume(result.status == "certified")  # the bound is claimed only where certified (most draws)
    c = result.certificate
    lam = Fraction(c["margin"]) * 2 / (Fraction(c["D"]) * Fraction(c["t"]))  # = lam_{L+1}
    X = inst.inputs()
    for prompt in P:
        out = model_outputs(inst.spec, inst.weights, X, prompt)
        assert _token_gap(out[0], out[1]) >= float(lam) * _token_gap(X[0], X[1]) * (1 - 1e-9)
        assert np.abs(out - inst.targets()).max() >= float(result.margin) * (1 - 1e-9)


def test_search_never_goes_below_m_margins():
    rng = np.random.default_rng(5)
    insts = [build.m_invertible_instance(rng, d, layers=layers, attention=att) for d, layers, att in SHAPES[::2]]
    margins = [float(certify_m(i).margin) for i in insts]
    attempts = search(insts, SearchConfig(sizes=(1, 3), restarts=3, steps=80, polish_steps=30, rounds=1,
                                          norm_bound=1.0), progress=False)
    assert attempts
    for a in attempts:
        assert a.max_abs_error >= margins[a.instance], (a, margins[a.instance])


# ------------------------------------------------------------------ planted instances: never certified

PLANTED = [
    ("fold-mlp", lambda rng, d: build.m_fold_mlp_instance(rng, d)),
    ("fold-attention", lambda rng, d: build.m_fold_attention_instance(rng, d)),
    ("fold-attention-strong", lambda rng, d: build.m_fold_attention_instance(rng, d, strong=True)),
    ("naive-encoder", lambda rng, d: build.m_naive_encoder_instance(rng, d)),
]


@pytest.mark.parametrize("name,make", PLANTED)
@pytest.mark.parametrize("d", [2, 3, 6])
def test_planted_instances_memorize_and_are_never_certified(name, make, d):
    inst = make(np.random.default_rng([d, 11]), d)
    planted = np.array(inst.meta["planted"]["prompt"])
    out = model_outputs(inst.spec, inst.weights, inst.inputs(), planted)
    assert np.abs(out - inst.targets()).max() < 1e-10          # memorized by construction
    assert not np.array_equal(inst.dataset[0].X, inst.dataset[1].X)
    norm = inst.meta["planted"]["norm"]
    assert certify_m(inst, bound=norm * (1 + 1e-9)).status != "certified"
    assert certify_m(inst, bound=max(norm, 1.0) * 4).status != "certified"


def test_the_bound_is_what_separates_certified_from_memorized():
    """fold-attention: M certifies at B = 1/2, the planted prompt has norm 5 and memorizes."""
    inst = build.m_fold_attention_instance(np.random.default_rng(0), 4)
    assert certify_m(inst).status == "certified"
    assert inst.meta["planted"]["norm"] > 5 * inst.meta["prompt_norm_bound"]


def test_ablation_families_drop_exactly_one_condition():
    rng = np.random.default_rng(2)
    assert layer_conditions(build.m_fold_mlp_instance(rng, 3)) == {"mlp": False, "attention": True}
    assert layer_conditions(build.m_fold_attention_instance(rng, 3, strong=True)) == {"mlp": True,
                                                                                      "attention": False}
    assert layer_conditions(build.m_fold_attention_instance(rng, 3)) == {"mlp": True, "attention": True}


@pytest.mark.parametrize("d", [2, 3, 5])
def test_naive_encoder_counterexample_is_exact(d):
    """Per layer injective for every fixed prompt state (exactly), yet the composed map collides
    exactly in rational arithmetic (zero logits: uniform, rational softmax)."""
    inst = build.m_naive_encoder_instance(np.random.default_rng(d), d)
    assert per_layer_injective(inst) == [None, None]
    planted = np.array(inst.meta["planted"]["prompt"])
    outs = [evaluate(inst.spec, inst.weights, ex.X, planted, exact=True) for ex in inst.dataset]
    assert outs[0] == outs[1]
    other = planted + 0.25  # the collision does not depend on the prompt (of length one)
    assert evaluate(inst.spec, inst.weights, inst.dataset[0].X, other, exact=True) == \
        evaluate(inst.spec, inst.weights, inst.dataset[1].X, other, exact=True)
    assert certify_m(inst).status != "certified"  # M itself never certifies it (alpha >= 1)


def test_m_hypotheses_reject_bad_shapes():
    inst = build.m_invertible_instance(np.random.default_rng(0), 3)
    from dataclasses import replace
    assert "prompt_norm_bound" in hypotheses(replace(inst, meta={}))
    other = replace(inst, dataset=(inst.dataset[0], replace(inst.dataset[1], Y=inst.dataset[1].Y + 1)))
    assert "X_i != X_j" in hypotheses(other)
    assert certify_m(other).status == "not-applicable"


def test_torch_forward_agrees_with_the_token_loop_on_m_instances():
    inst = build.m_invertible_instance(np.random.default_rng(9), 3, layers=2, attention="causal")
    prompt = np.random.default_rng(1).normal(size=(2, 3))
    torch_out = forward(inst.spec, to_torch(inst.weights), torch.as_tensor(inst.inputs())[None],
                        prompt=torch.as_tensor(prompt)[None])[0, 0].numpy()
    loop = np.array(evaluate(inst.spec, inst.weights, inst.dataset[0].X, prompt))
    assert np.allclose(torch_out, loop, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_attention_lipschitz_bound_survives_adversarial_ascent(seed):
    """Ascend the largest singular value of a query's Jacobian block (a lower bound on the
    attention map's max-token-norm Lipschitz constant) over sequences in the ball of radius R;
    the certified alpha(R) must stay above it. The bound is conservative by construction (||x_j -
    xbar|| <= 2R and range <= 2 max each give away up to a factor 2), and the ascent reaches about
    a fifth of it: a bound several times too small fails here, a constant off by 2 may not."""
    rng = np.random.default_rng(seed)
    d = 2 + seed % 2
    inst = build.m_invertible_instance(rng, d, v_norm=0.5, a_norm=1.5)
    R = 1.5
    alpha = float(layer_bounds(inst)[0].attention_lipschitz(Fraction(R)))
    W = to_torch(inst.weights)

    def att(flat):  # (T*d,) -> (T*d,)
        Z = flat.reshape(1, 1, -1, d)
        return attention(inst.spec, W, 0, Z)[0, 0].reshape(-1)

    best = 0.0
    for start in range(3):
        Z = torch.as_tensor(build._tokens_in_ball(rng, 3, d, R), dtype=torch.float64)
        Z = Z * (R / Z.norm(dim=1, keepdim=True))
        Z.requires_grad_(True)
        opt = torch.optim.Adam([Z], lr=0.05)
        for _ in range(60):
            J = torch.autograd.functional.jacobian(att, Z.reshape(-1), create_graph=True)  # (T*d, T*d)
            sigma = max(torch.linalg.matrix_norm(J[i * d:(i + 1) * d], ord=2) for i in range(3))
            best = max(best, float(sigma.detach()))
            opt.zero_grad()
            (-sigma).backward()
            opt.step()
            with torch.no_grad():
                Z.mul_(torch.clamp(R / Z.norm(dim=1, keepdim=True), max=1.0))
    assert best <= alpha
    assert best > 0.15 * alpha  # the ascent really probes the bound


def test_m_group_runs_its_ablations_and_expected_refutations_are_not_failures():
    from peftaudit.audit import run_audit
    from peftaudit.claims import expand_claims

    assert [c.id for c in expand_claims(["M"])] == ["M", "M-unbounded", "M-drop-attention", "M-drop-mlp", "M-naive"]
    result = run_audit(["M-drop-mlp", "M-naive"], profile="quick", calibration=False, progress=False, quiet=True)
    for c in result.report["claims"]:
        assert c["verdict"] == "REFUTED" and c["expect"] == "REFUTED", c["reason"]
    assert not result.refuted  # registered to be refuted: the audit does not fail on them
    naive = result.outcomes[1]
    found = [a for att in naive.searches.values() for a in att if a.solved]
    assert found and all(naive.instances[a.instance].meta["family"] == "m-naive-encoder" for a in found)


@given(hyp.m_invertible_instances())
def test_m_certifies_its_family_at_any_depth(inst):
    result = certify_m(inst)
    if len(inst.spec.layers) < 3:
        assert result.status == "certified", result.reason
    if result.status == "certified":  # three layers may exceed the chain; never a wrong certificate
        assert check_certificate(result.certificate).valid


@given(hyp.m_planted_instances())
def test_planted_m_instances_are_never_certified_at_their_planted_norm(inst):
    planted = np.array(inst.meta["planted"]["prompt"])
    out = model_outputs(inst.spec, inst.weights, inst.inputs(), planted)
    assert np.abs(out - inst.targets()).max() < 1e-10
    assert certify_m(inst, bound=inst.meta["planted"]["norm"] * (1 + 1e-9)).status != "certified"


def test_m_certifies_with_a_positional_encoding_what_it_certifies_without():
    """r0 is bounded with the encoding added in exact arithmetic (a float sum can round below it)."""
    from peftaudit.instance import to_dict
    for seed in range(4):
        inst = build.m_invertible_instance(np.random.default_rng(seed), 4, layers=1)
        doc = to_dict(inst)
        doc["model"]["positional"] = (0.05 * np.random.default_rng(100 + seed).normal(
            size=(inst.n_tokens, 4))).tolist()
        plain, encoded = certify_m(inst), certify_m(from_dict(doc))
        assert plain.status == "certified" and encoded.status == "certified", encoded.reason
        assert check_certificate(encoded.certificate).valid
