"""The L1 margin from cell trees on the delta-sphere (issue 27): sound, tight where it should be,
and refused when tampered; certificates of the earlier form still check."""

import copy
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftaudit.strategies.instances import l1_instance
from peftaudit.verify.checkers import MalformedCertificate, check_certificate
from peftaudit.verify.checkers import cells
from peftaudit.verify.checkers import l1_sphere as checker_sphere
from peftaudit.verify.checkers.instance import Layer
from peftaudit.verify.encoders.l1 import certify
from peftaudit.verify.encoders.l1_sphere import NO_REFINEMENT, SphereBudget, sphere_trees
from peftaudit.verify.encoders.mlp import MLPWeights

FIXTURES = Path(__file__).parent / "fixtures" / "certificates"


def _exact_g_distance(layer: Layer, P: list[Fraction], s: list[Fraction]) -> Fraction:
    """||g(s) - g(P)||_inf in exact arithmetic (g(h) = h + W2 relu(W1 h + b1) + b2)."""
    def branch(h):
        pre = [sum((w * x for w, x in zip(row, h)), Fraction(0)) + b for row, b in zip(layer.W1, layer.b1)]
        act = [max(x, Fraction(0)) for x in pre]
        return [sum((w * a for w, a in zip(row, act)), Fraction(0)) for row in layer.W2]
    gs, gp = branch(s), branch(P)
    return max(abs(si - pi + a - b) for si, pi, a, b in zip(s, P, gs, gp))


@settings(max_examples=15)
@given(st.integers(2, 5), st.integers(0, 2**31), st.floats(0.05, 2.0), st.integers(0, 400))
def test_the_checked_sphere_floor_is_below_g_on_every_sampled_sphere_point(d, seed, delta, leaves):
    rng = np.random.default_rng(seed)
    m = 2 * d
    W1, W2 = rng.normal(size=(m, d)), rng.normal(size=(d, m))
    W2 *= 0.9 / (np.abs(W2) @ np.abs(W1).sum(axis=1)).max()  # branch bound kappa = 0.9 < 1
    b1 = rng.normal(size=m)
    P = rng.normal(size=d)
    mlp = MLPWeights("residual", W1, b1, W2, np.zeros(d))
    trees, rho_float = sphere_trees(mlp, P, delta, SphereBudget(leaves=leaves))
    q = lambda a: [Fraction(float(x)) for x in np.ravel(a)]  # noqa: E731
    layer = Layer((), [q(r) for r in W1], q(b1), [q(r) for r in W2], q(np.zeros(d)))
    rho = checker_sphere.sphere_floor(layer, q(P), Fraction(delta), trees, "trees", [checker_sphere.MAX_LEAVES])
    assert abs(float(rho) - rho_float) <= 1e-9 * max(1.0, delta)  # the encoder predicts the checker
    assert rho >= 0
    for _ in range(40):  # random points of the max-norm sphere, exactly
        e = rng.uniform(-delta, delta, size=d)
        j = rng.integers(d)
        e[j] = delta if rng.random() < 0.5 else -delta
        s = [p + Fraction(float(x)) for p, x in zip(q(P), e)]
        assert rho <= _exact_g_distance(layer, q(P), s)


@pytest.fixture(scope="module")
def deep_certificate():
    """An L1 certificate at d = 4 whose trees split (the refinement had to work for its margin)."""
    result = certify(l1_instance(np.random.default_rng(1), 4, "skew"), "L1")
    assert result.status == "certified" and "sphere" in result.certificate
    return result


def test_cell_trees_raise_the_margin_above_the_global_one(deep_certificate):
    inst = l1_instance(np.random.default_rng(1), 4, "skew")
    plain = certify(inst, "L1", sphere=NO_REFINEMENT)
    assert "sphere" not in plain.certificate
    assert deep_certificate.delta == plain.delta
    assert deep_certificate.margin > plain.margin  # measured: about 1.7x on this instance
    verdict = check_certificate(json.loads(json.dumps(deep_certificate.certificate)))
    assert verdict.valid and verdict.margin >= deep_certificate.margin


def _first_split(cert):
    for m, member in enumerate(cert["sphere"]["trees"]):
        for f, tree in enumerate(member):
            if tree[0] != cells.LEAF:
                return m, f
    raise AssertionError("no tree splits")


def _tampered(cert, how):
    cert = copy.deepcopy(cert)
    m, f = _first_split(cert)
    tree = cert["sphere"]["trees"][m][f]
    if how == "split the face's own coordinate":
        tree[0] = f // 2
    elif how == "coordinate out of range":
        tree[0] = 99
    elif how == "truncated":
        del tree[-1]
    elif how == "trailing entries":
        tree.append(-1)
    elif how == "not an integer":
        tree[0] = 0.5
    elif how == "a face missing":
        del cert["sphere"]["trees"][m][f]
    elif how == "a member missing":
        del cert["sphere"]["trees"][m]
    elif how == "not a list":
        cert["sphere"]["trees"][m][f] = "all of it"
    return cert


@pytest.mark.parametrize("how", ["split the face's own coordinate", "coordinate out of range", "truncated",
                                 "trailing entries", "not an integer", "a face missing", "a member missing",
                                 "not a list"])
def test_malformed_cell_trees_are_refused(deep_certificate, how):
    with pytest.raises(MalformedCertificate):
        check_certificate(_tampered(deep_certificate.certificate, how))


def test_a_coarser_tree_does_not_prove_the_claimed_margin(deep_certificate):
    cert = copy.deepcopy(deep_certificate.certificate)
    cert["sphere"]["trees"] = [[[cells.LEAF] for _ in member] for member in cert["sphere"]["trees"]]
    verdict = check_certificate(cert)
    assert not verdict.valid and "exceeds the verified" in verdict.reason


def test_an_inflated_margin_is_refused(deep_certificate):
    cert = copy.deepcopy(deep_certificate.certificate)
    cert["margin"] = str(Fraction(cert["margin"]) * Fraction(1001, 1000))
    assert not check_certificate(cert).valid


def test_trees_deeper_than_the_limit_or_too_many_cells_are_refused(deep_certificate, monkeypatch):
    cert = copy.deepcopy(deep_certificate.certificate)
    m, f = _first_split(cert)
    other = 0 if f // 2 != 0 else 1
    cert["sphere"]["trees"][m][f] = [other] * (cells.MAX_DEPTH + 1) + [-1] * (cells.MAX_DEPTH + 2)
    with pytest.raises(MalformedCertificate, match="deeper"):
        check_certificate(cert)
    monkeypatch.setattr(checker_sphere, "MAX_LEAVES", 3)
    with pytest.raises(MalformedCertificate, match="cells in all"):
        check_certificate(deep_certificate.certificate)


@pytest.mark.parametrize("name", ["l1_before_cell_trees.json", "l1plus_pieces_before_cell_trees.json"])
def test_certificates_of_the_earlier_form_still_check(name):
    cert = json.loads((FIXTURES / name).read_text())
    assert "sphere" not in cert and "shared_normaliser" not in cert
    verdict = check_certificate(cert)
    assert verdict.valid and verdict.margin >= Fraction(cert["margin"])


def test_certify_cli_takes_the_cell_budget(tmp_path, capsys):
    from peftaudit.cli import main
    from peftaudit.instance import save

    path = tmp_path / "l1.json"
    save(l1_instance(np.random.default_rng(0), 4), path)
    margins = {}
    for budget in ("0", "250"):
        out = tmp_path / f"c{budget}.json"
        assert main(["certify", str(path), "--json", "--cells", budget, "--out", str(out)]) == 0
        margins[budget] = json.loads(capsys.readouterr().out)["margin"]
        assert ("sphere" in json.loads(out.read_text())) == (budget != "0")
        assert main(["check-certificate", str(out)]) == 0
        capsys.readouterr()
    assert margins["250"] > margins["0"]
    capsys.readouterr()
    assert main(["certify", str(path), "--claim", "M", "--cells", "3"]) == 2
    assert "apply to --claim L1, L1+ and L2 only" in capsys.readouterr().err
