"""L2's structured one-token radius (issue 27): below every one-token prompt's attention error,
refused when its cell tree is tampered with; certificates of the earlier form still check."""

import copy
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftaudit.strategies.instances import l2_instance
from peftaudit.verify.checkers import MalformedCertificate, check_certificate
from peftaudit.verify.checkers.l2_pair import pair_floor
from peftaudit.verify.encoders.cells import Budget
from peftaudit.verify.encoders.l2 import certify_l2

FIXTURES = Path(__file__).parent / "fixtures" / "certificates"


def _attention_errors(inst, cert, prompt):
    """Per certified position, ||z_j - c_j||_inf with the one-token prompt prepended (float64)."""
    w = inst.weights
    p = "layers.0.heads.0."
    V = w[p + "Wo"] @ w[p + "Wv"] if p + "Wo" in w else w[p + "Wv"]
    out = []
    for (e, pos), row in zip(cert["positions"], cert["data"]):
        X = np.asarray(inst.dataset[e].X, float)
        if inst.spec.positions:
            X = X + w["positional"][:len(X)]
        visible = X if inst.spec.attention == "encoder" else X[:pos + 1]
        Z = visible if prompt is None else np.vstack([prompt, visible])
        logits = Z @ (w[p + "Wk"].T @ (w[p + "Wq"] @ X[pos]))
        s = np.exp(logits - logits.max())
        z = V @ (s @ Z) / s.sum()
        out.append(np.abs(z - np.array([float(Fraction(c)) for c in row["c"]])).max())
    return max(out)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([4, 6, 8]), st.sampled_from(["encoder", "causal"]))
def test_the_structured_radius_is_below_every_one_token_prompts_error(seed, d, attention):
    inst = l2_instance(np.random.default_rng(seed), d, 2, attention=attention)
    result = certify_l2(inst)
    if result.status != "certified" or "pair_cells" not in result.certificate:
        return
    cert = result.certificate
    radius = Fraction(cert["delta"])
    assert _attention_errors(inst, cert, None) >= float(radius) * (1 - 1e-9)
    rng = np.random.default_rng(seed)
    for _ in range(200):
        prompt = rng.normal(size=(1, d)) * 10 ** rng.uniform(-1, 2)
        assert _attention_errors(inst, cert, prompt) >= float(radius) * (1 - 1e-9)


@pytest.fixture(scope="module")
def structured():
    result = certify_l2(l2_instance(np.random.default_rng(1), 6, 2))
    assert result.status == "certified" and "pair_cells" in result.certificate
    return result


def test_the_structured_radius_beats_the_gram_one(structured):
    inst = l2_instance(np.random.default_rng(1), 6, 2)
    gram = certify_l2(inst, pair_budget=Budget(leaves=0), sphere=Budget(leaves=0))
    assert "pair_cells" not in gram.certificate and "sphere" not in gram.certificate
    assert structured.delta > 2 * gram.delta and structured.margin > 2 * gram.margin
    assert check_certificate(gram.certificate).valid


@pytest.mark.parametrize("how", ["coordinate out of range", "truncated", "trailing", "not an integer", "not a list"])
def test_malformed_pair_cells_are_refused(structured, how):
    cert = copy.deepcopy(structured.certificate)
    tree = cert["pair_cells"]
    if how == "coordinate out of range":
        tree[0] = 2
    elif how == "truncated":
        del tree[-1]
    elif how == "trailing":
        tree.append(-1)
    elif how == "not an integer":
        tree[0] = "0"
    else:
        cert["pair_cells"] = {"tree": tree}
    with pytest.raises(MalformedCertificate):
        check_certificate(cert)


def test_a_coarser_tree_does_not_prove_the_claimed_radius(structured):
    cert = copy.deepcopy(structured.certificate)
    cert["pair_cells"] = [-1]
    verdict = check_certificate(cert)
    assert not verdict.valid and "delta exceeds" in verdict.reason


def test_pair_cells_need_two_positions():
    result = certify_l2(l2_instance(np.random.default_rng(0), 6, 3))
    assert result.status == "certified" and "pair_cells" not in result.certificate
    cert = copy.deepcopy(result.certificate)
    cert["pair_cells"] = [-1]
    with pytest.raises(MalformedCertificate, match="N = 2"):
        check_certificate(cert)


def test_the_empty_prompt_caps_the_floor():
    c = [[Fraction(1), Fraction(0)], [Fraction(0), Fraction(1)]]
    boxes = [([Fraction(1), Fraction(0)], [Fraction(1), Fraction(0)]),
             ([Fraction(0), Fraction(1, 2)], [Fraction(0), Fraction(1, 2)])]
    assert pair_floor(c, boxes, [-1], "t") <= Fraction(1, 2)  # the empty prompt errs by exactly 1/2


def test_l2_certificates_of_the_earlier_form_still_check():
    cert = json.loads((FIXTURES / "l2_before_cell_trees.json").read_text())
    assert "pair_cells" not in cert and "sphere" not in cert
    verdict = check_certificate(cert)
    assert verdict.valid and verdict.margin >= Fraction(cert["margin"])
