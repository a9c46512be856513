"""Bounds the certificates rest on: exp enclosures, MLP Lipschitz bounds, injectivity, inverses."""

import math
from fractions import Fraction

import mpmath
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from peftaudit.strategies.hyp import adversarial_matrices, contractive_mlps, non_injective_mlps, rngs
from peftaudit.verify.checkers import exact as check
from peftaudit.verify.encoders.mlp import MLPWeights, branch_lipschitz, evaluate_exact, evaluate_float, injectivity, invert
from peftaudit.verify.encoders.softmax_bounds import exp_enclosure, softmax_enclosure

rationals = st.fractions(min_value=-40, max_value=40, max_denominator=10**12)


@given(rationals)
def test_exp_enclosures_contain_exp_both_implementations(r):
    mpmath.mp.prec = 400
    true = mpmath.exp(mpmath.mpf(r.numerator) / r.denominator)
    for lo, hi in (exp_enclosure(r), check.exp_bounds(r)):
        assert lo <= hi
        assert mpmath.mpf(lo.numerator) / lo.denominator <= true <= mpmath.mpf(hi.numerator) / hi.denominator
    # the checker's enclosure is tighter than the encoder's, so it can confirm the encoder's
    (elo, ehi), (clo, chi) = exp_enclosure(r), check.exp_bounds(r)
    assert elo <= clo and chi <= ehi


@given(st.lists(rationals, min_size=1, max_size=5))
def test_softmax_enclosure_contains_softmax_and_is_exact_for_equal_logits(logits):
    lo, hi = softmax_enclosure(logits)
    vals = [math.exp(float(l) - max(map(float, logits))) for l in logits]
    s = [v / sum(vals) for v in vals]
    for l_, h_, v in zip(lo, hi, s):
        assert float(l_) <= v * (1 + 1e-12) and v <= float(h_) * (1 + 1e-12)
    if len(set(logits)) == 1:
        assert lo == hi == [Fraction(1, len(logits))] * len(logits)


def _as_mlp(w, kind="residual"):
    return MLPWeights(kind, w["W1"], w["b1"], w["W2"], w["b2"])


@given(adversarial_matrices(4, 3), adversarial_matrices(3, 4), rngs())
def test_branch_bound_never_below_finite_difference_ratios(W1, W2, rng):
    mlp = MLPWeights("residual", W1, np.zeros(4), W2, np.zeros(3))
    kappa = float(branch_lipschitz(mlp))
    for _ in range(20):
        p, q = rng.normal(size=3) * 3, rng.normal(size=3) * 3
        bp = evaluate_float(mlp, p) - p
        bq = evaluate_float(mlp, q) - q
        assert np.abs(bp - bq).max() <= kappa * np.abs(p - q).max() * (1 + 1e-9) + 1e-12


@given(contractive_mlps(), rngs())
def test_contractive_mlps_invert_and_are_injective(w, rng):
    mlp = _as_mlp(w)
    assert branch_lipschitz(mlp) < 1
    assert injectivity(mlp).status == "injective"
    y = rng.normal(size=mlp.W1.shape[1])
    np.testing.assert_allclose(evaluate_float(mlp, invert(mlp, y)), y, atol=1e-12)


@given(non_injective_mlps())
def test_non_injective_mlps_get_an_exactly_replayed_witness(w):
    mlp = _as_mlp(w, "plain")
    result = injectivity(mlp)
    assert result.status == "not-injective"
    p, q = result.witness
    assert p != q and evaluate_exact(mlp, p) == evaluate_exact(mlp, q)


def test_injective_plain_mlp_is_recognized():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    mlp = MLPWeights("plain", np.vstack([A, -A]), np.zeros(6), np.hstack([B, -B]), np.zeros(3))  # = B A z
    assert injectivity(mlp).status == "injective"
