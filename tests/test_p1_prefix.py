"""Claim P1: the prefix identity (exact polynomial identity, float64 at every layer), input independence
of prefix values, and the over-general encoder statement refuted by exactly checked witnesses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peftaudit.claims.p1 import _instance
from peftaudit.models.methods import get_method
from peftaudit.models.prefix_identity import layer_parts
from peftaudit.models.transformer import to_torch
from peftaudit.verify.checkers import MalformedCertificate, check_certificate
from peftaudit.verify.checkers.p1 import _poly_add, _poly_mul, _sum, identity_holds
from peftaudit.verify.encoders.p1 import certify_p1, certify_p1_encoder


def test_the_identity_expands_to_zero_and_a_wrong_one_does_not():
    assert all(identity_holds(m, t) for m in range(1, 5) for t in range(1, 7))
    P, S = _sum(["e0", "e1"]), _sum(["f0", "f1"])
    wrong = _poly_add(_poly_mul({("f0",): 1}, S), _poly_mul({("f0",): 1}, _poly_add(P, S)), sign=-1)
    assert wrong   # f_j S != f_j S': forgetting the prefix mass is caught


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 3), heads=st.integers(1, 2), length=st.integers(1, 3),
       method=st.sampled_from(["prompt", "prefix", "prefix-kv"]), mask=st.sampled_from(["encoder", "causal"]))
@example(seed=1, layers=3, heads=1, length=3, method="prefix-kv", mask="encoder")  # a mass of 1 + ulp
def test_identity_holds_in_float64_at_every_layer_and_head(seed, layers, heads, length, method, mask):
    from peftaudit.models.spec import simple_spec
    rng = np.random.default_rng(seed)
    spec = simple_spec(4, layers=layers, heads=heads, attention=mask, positions=3)
    weights = {n: rng.standard_normal(s) for n, s in spec.weight_shapes()}
    X = torch.as_tensor(rng.standard_normal((1, 3, 3, 4)))
    adapter = get_method(method).init(spec, 1, length, torch.Generator().manual_seed(seed))
    rows = layer_parts(spec, to_torch(weights), X, method, adapter)
    assert len(rows) == layers * heads
    for r in rows:
        assert r["weight_residual"] < 1e-12 and r["output_residual"] < 1e-12
        # a sum of softmax weights: may underflow to 0 at large logits, or round to 1 + ulp
        assert 0 <= r["prefix_mass_mean"] <= r["prefix_mass_max"] <= 1 + 1e-12


@pytest.mark.parametrize("method,mask", [("prefix-kv", "encoder"), ("prefix", "encoder"), ("prompt", "causal")])
def test_p1_certificates_check(method, mask):
    inst = _instance(np.random.default_rng(0), 4, 2, mask, method, 2)
    result = certify_p1(inst)
    assert result.status == "certified"
    checked = check_certificate(result.certificate)
    assert checked.valid and checked.result.facts["method"] == method


def test_a_soft_prompt_in_encoder_mode_is_never_certified():
    inst = _instance(np.random.default_rng(1), 4, 2, "encoder", "prompt", 1)
    assert certify_p1(inst).status == "not-applicable"
    causal = _instance(np.random.default_rng(1), 4, 2, "causal", "prompt", 1)
    cert = certify_p1(causal).certificate
    # the same certificate bound to the encoder instance (rebound honestly) must fail the checker
    from peftaudit.instance import digest, to_dict
    bad = dict(cert, instance=to_dict(inst), instance_sha256=digest(inst))
    checked = check_certificate(bad)
    assert not checked.valid and "encoder" in checked.reason


def test_malformed_p1_certificates_are_refused():
    inst = _instance(np.random.default_rng(0), 4, 2, "encoder", "prefix-kv", 1)
    cert = certify_p1(inst).certificate
    with pytest.raises(MalformedCertificate):
        check_certificate(dict(cert, method="lora"))
    with pytest.raises(MalformedCertificate):
        check_certificate(dict(cert, prefix_length=0))


@pytest.mark.parametrize("zero_logits", [True, False])
def test_encoder_witnesses_refute_the_over_general_statement(zero_logits):
    inst = _instance(np.random.default_rng(3), 4, 2, "encoder", "prompt", 2, zero_logits=zero_logits)
    cert = certify_p1_encoder(inst).certificate
    checked = check_certificate(cert)
    assert checked.valid, checked.reason
    assert checked.result.facts["separation"] > cert["margin"]


def test_tampered_encoder_witnesses_fail():
    inst = _instance(np.random.default_rng(3), 4, 2, "encoder", "prompt", 1, zero_logits=True)
    cert = certify_p1_encoder(inst).certificate
    same = dict(cert, inputs=[0, 0])
    assert not check_certificate(same).valid
    too_much = dict(cert, margin=cert["margin"] * 4)
    assert not check_certificate(too_much).valid
    causal = _instance(np.random.default_rng(3), 4, 2, "causal", "prompt", 1)
    from peftaudit.instance import digest, to_dict
    assert not check_certificate(dict(cert, instance=to_dict(causal), instance_sha256=digest(causal))).valid


def test_audit_p1_group_verdicts():
    from peftaudit.audit.api import run_audit
    result = run_audit(["P1"], calibration=False, progress=False, quiet=True)
    verdicts = result.verdicts
    assert verdicts["P1"] == "CERTIFIED" and verdicts["P1-encoder"] == "REFUTED"
    p1 = result.report["claims"][0]
    assert p1["vacuous"] == 1 and p1["study"]["max_residual"] < 1e-12
