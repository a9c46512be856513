"""Claim U: the construction is exact on the grid, its witnesses pass the independent checker, and
tampered tables, wrong prompt tokens and too-coarse grids fail it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from peftaudit.instance import digest, from_dict, make_instance, to_dict
from peftaudit.models import universal
from peftaudit.models.transformer import forward, to_torch
from peftaudit.strategies.lipschitz import evaluate, table, u_instance
from peftaudit.verify.checkers import MalformedCertificate, check_certificate
from peftaudit.verify.encoders.u import certify_u, witness


def _rebind(cert: dict, inst) -> dict:
    cert = dict(cert, instance=to_dict(inst), instance_sha256=digest(inst))
    return cert


@pytest.fixture(scope="module")
def small():
    inst = u_instance(np.random.default_rng(1), 2, 1, 1.0, 0.8, 2, "piecewise-linear")
    return inst, certify_u(inst).certificate


@pytest.mark.parametrize("d,m,K", [(1, 1, 8), (2, 1, 4), (1, 2, 4), (2, 2, 4), (1, 4, 2)])
def test_construction_reproduces_a_random_table_on_every_cell_in_float64(d, m, K):
    grid = universal.Grid(d, m, K)
    spec, weights = universal.build_transformer(grid, 2.0 ** -12, 40.0)
    values = np.random.default_rng(d * 10 + m).integers(0, K + 1, size=(grid.cells, m, d)) / K
    P = universal.build_prompt(grid, values)
    X = universal.embed(grid, universal.cell_centres(grid))
    out = forward(spec, to_torch(weights), torch.as_tensor(X)[None], prompt=torch.as_tensor(P)[None])[0].numpy()
    assert np.abs(out[..., :d] - values).max() < 1e-12
    assert np.abs(out[..., d:]).max() < 1e-12
    assert grid.prompt_length == m * K ** (d * m) == universal.sizes(grid)["counting_bound_prompt_length"]


@pytest.mark.parametrize("config", [(1, 1, 1.0, 0.25, 1, "affine"), (1, 2, 0.5, 0.8, 1, "quadratic-features"),
                                    (1, 1, 1.0, 0.3, 2, "table"), (3, 1, 0.5, 0.9, 1, "affine")])
def test_planted_and_lipschitz_witnesses_pass_the_exact_check(config):
    inst = u_instance(np.random.default_rng(0), *config)
    result = certify_u(inst)
    checked = check_certificate(result.certificate)
    assert checked.valid, checked.reason
    facts = checked.result.facts
    assert facts["dp_bound"] <= config[3]
    assert facts["cells"] == inst.meta["u"]["K"] ** (config[0] * config[1])
    if config[-1] == "table":
        assert facts["rho"] == 0 and facts["lipschitz"] == 0
    else:
        assert 0 < facts["rho"] <= 0.5 / inst.meta["u"]["K"]
        assert facts["lipschitz"] <= config[2]


def test_a_tampered_table_entry_fails(small):
    inst, cert = small
    doc = to_dict(inst)
    y = doc["dataset"][5]["Y"][0][1]
    doc["dataset"][5]["Y"][0][1] = 0.25 if y != 0.25 else 0.5
    checked = check_certificate(_rebind(cert, from_dict(doc)))
    assert not checked.valid and "cell" in checked.reason and "table says" in checked.reason


def test_a_wrong_prompt_value_fails(small):
    inst, cert = small
    bad = copy.deepcopy(cert)
    bad["prompt"][3][0] += 0.25
    checked = check_certificate(bad)
    assert not checked.valid and "table says" in checked.reason


def test_a_wrong_prompt_key_fails(small):
    inst, cert = small
    grid = universal.Grid(2, 1, inst.meta["u"]["K"])
    bad = copy.deepcopy(cert)
    key = universal.channels(grid)["key"]
    bad["prompt"][3][key] += 1.0   # token 3 now claims cell 4's key: cell 3 has no match
    assert not check_certificate(bad).valid


def test_a_too_coarse_grid_fails_the_bound():
    rng = np.random.default_rng(3)
    inst = u_instance(rng, 1, 1, 1.0, 0.25, 1, "affine")   # needs K = 8
    coarse = universal.Grid(1, 1, 2)
    spec, weights = universal.build_transformer(coarse, 2.0 ** -12, 20.0)
    target = inst.meta["u"]["target"]
    values = table(coarse, target)
    X = universal.embed(coarse, universal.cell_centres(coarse))
    meta = {"family": "U-affine", "u": dict(inst.meta["u"], K=2, gamma=2.0 ** -12, beta=20.0)}
    bad = make_instance(spec, weights, list(zip(X, universal.embed(coarse, values))), meta)
    checked = check_certificate(witness(bad, universal.build_prompt(coarse, values)))
    assert not checked.valid and "exceeds eps" in checked.reason
    assert checked.result.facts["dp_bound"] > 0.25


def test_a_stated_margin_beyond_the_slack_fails(small):
    inst, cert = small
    bad = dict(cert, margin=float(inst.meta["u"]["eps"]) * 0.99)
    assert not check_certificate(bad).valid


def test_a_missing_cell_and_a_moved_centre_fail(small):
    inst, cert = small
    doc = to_dict(inst)
    doc["dataset"] = doc["dataset"][:-1]
    checked = check_certificate(_rebind(cert, from_dict(doc)))
    assert not checked.valid and "covers" in checked.reason
    doc = to_dict(inst)
    doc["dataset"][0]["X"][0][0] += 2.0 ** -20
    checked = check_certificate(_rebind(cert, from_dict(doc)))
    assert not checked.valid and "not a cell centre" in checked.reason


def test_malformed_witnesses_are_refused(small):
    inst, cert = small
    with pytest.raises(MalformedCertificate):
        check_certificate(dict(cert, prompt=[[0.0]]))
    with pytest.raises(MalformedCertificate):
        check_certificate(dict(cert, prompt="1/2"))
    doc = to_dict(inst)
    doc["meta"]["u"]["target"]["family"] = "sine"
    with pytest.raises(MalformedCertificate):
        check_certificate(_rebind(cert, from_dict(doc)))


def test_the_exact_bound_holds_against_a_monte_carlo_estimate():
    from peftaudit.claims.u import monte_carlo
    inst = u_instance(np.random.default_rng(4), 1, 2, 0.5, 0.8, 1, "affine")
    cert = certify_u(inst).certificate
    bound = check_certificate(cert).result.facts["dp_bound"]
    mc = monte_carlo(inst, np.asarray(cert["prompt"]), 3000, 0)
    assert mc["dp_low"] <= mc["dp"] <= mc["dp_high"] <= bound


def test_the_table_rounds_f_at_the_centres_to_the_grid():
    grid = universal.Grid(1, 2, 4)
    inst = u_instance(np.random.default_rng(5), 1, 2, 0.5, 0.8, 1, "quadratic-features")
    target = inst.meta["u"]["target"]
    values = table(grid, target)
    exact = evaluate(target, universal.cell_centres(grid))
    assert np.abs(values - exact).max() <= 1 / 8 + 1e-15
    assert np.all(values * 4 == np.round(values * 4))


def test_choose_rejects_bad_parameters():
    with pytest.raises(ValueError, match="eps"):
        universal.choose(1, 1, 1.0, 0.0, 1)
    with pytest.raises(ValueError, match="p"):
        universal.choose(1, 1, 1.0, 0.5, 0)
    with pytest.raises(ValueError, match="finer"):
        universal.choose(2, 2, 1.0, 1e-6, 1)
    with pytest.raises(ValueError, match="power of two"):
        universal.Grid(1, 1, 3)


def _small_claim(certify=None):
    from dataclasses import replace

    from peftaudit.claims.u import U

    def draw(profile, seed):
        rng = np.random.default_rng(seed)
        return [u_instance(rng, 1, 1, 1.0, 0.25, 1, "affine"), u_instance(rng, 1, 1, 1.0, 0.3, 2, "table")]
    return replace(U, id="U-small", draw=draw, **({"certify": certify} if certify else {}))


def test_audit_certifies_u_and_reports_sizes_and_figures(tmp_path):
    import json

    import jsonschema

    from peftaudit.audit.api import run_audit
    from peftaudit.audit.report import SCHEMA_FILE

    result = run_audit([_small_claim()], out=tmp_path / "r", calibration=False, progress=False, quiet=True)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    claim = report["claims"][0]
    assert claim["verdict"] == "CERTIFIED", claim["reason"]
    rows = claim["study"]["rows"]
    assert [r["prompt_length"] for r in rows] == [8, 8] and all(r["dp_bound"] <= r["eps"] for r in rows)
    assert all("search" in r and "monte_carlo" in r for r in rows)
    assert {"figures/u_dp.png", "figures/u_sizes.png"} <= set(report["figures"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "counting bound" in md and "| 0 | affine | 1 | 1 | 1/8 |" in md
    assert "counting bound" in (tmp_path / "r" / "report.html").read_text()
    assert result.outcomes[0].verdict == "CERTIFIED"


def test_a_constructed_witness_that_fails_its_check_is_the_constructors_error_not_a_refutation():
    from peftaudit.audit.api import run_audit

    def tampered(inst, tolerance):
        result = certify_u(inst, tolerance)
        result.certificate["prompt"][0][0] += 0.5
        return result
    claim = _small_claim(tampered)
    from dataclasses import replace
    result = run_audit([replace(claim, study=None)], calibration=False, progress=False, quiet=True)
    outcome = result.outcomes[0]
    assert outcome.verdict == "ERROR" and "fails its exact check" in outcome.reason and "not a refutation" in outcome.reason


def test_cli_generates_certifies_and_checks_a_u_witness(tmp_path):
    from peftaudit.cli import main

    inst, cert = tmp_path / "u.json", tmp_path / "w.json"
    assert main(["generate", "--kind", "u", "--d", "1", "--m", "2", "--eps", "0.8", "--family", "affine",
                 "--out", str(inst)]) == 0
    assert main(["certify", str(inst), "--claim", "U", "--out", str(cert)]) == 0
    assert main(["check-certificate", str(cert), "--instance", str(inst)]) == 0
    assert main(["generate", "--kind", "u", "--d", "2", "--m", "2", "--eps", "0.001", "--out",
                 str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_pytest_plugin_collects_one_exact_item_for_claims_without_searches(pytester):
    result = pytester.runpytest_subprocess("--peftaudit", "--peftaudit-claims", "U,P1,Z1", "--collect-only", "-q",
                                           "-p", "no:cacheprovider")
    out = result.stdout.str()
    for item in ("U-exact", "P1-exact", "P1-encoder-exact", "Z1-exact", "Z1-relu-exact", "Z1-relu-unbounded-exact"):
        assert f"peftaudit[{item}]" in out


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), shape=st.sampled_from([(1, 1), (1, 2), (2, 1)]),
       family=st.sampled_from(["affine", "piecewise-linear", "quadratic-features", "table"]),
       p=st.integers(1, 2), lipschitz=st.sampled_from([0.25, 0.5, 1.0]))
def test_every_drawn_u_witness_passes_and_its_bound_is_below_eps(seed, shape, family, p, lipschitz):
    d, m = shape
    eps = 0.9 if d * m > 1 else 0.4
    inst = u_instance(np.random.default_rng(seed), d, m, lipschitz, eps, p, family)
    checked = check_certificate(certify_u(inst).certificate)
    assert checked.valid, checked.reason
    assert checked.result.facts["dp_bound"] <= eps
    assert checked.result.facts["lipschitz"] <= lipschitz


def test_the_checker_refuses_work_beyond_its_limit(small, monkeypatch):
    from peftaudit.verify.checkers import u as u_checker
    _, cert = small
    monkeypatch.setattr(u_checker, "MAX_WORK", 10)
    with pytest.raises(MalformedCertificate, match="limit"):
        check_certificate(cert)


@pytest.mark.parametrize("d,m,K", [(1, 1, 8), (2, 2, 4), (4, 1, 4), (1, 4, 4)])
def test_the_documented_parameter_count_matches_the_model(d, m, K):
    grid = universal.Grid(d, m, K)
    D, h = grid.width, 2 * m * d * (K - 1)
    assert universal.sizes(grid)["model_params"] == 2 * D * D + (20 + 2 * d + m + 2 * h) * D + h + 1


def test_editing_an_instance_dict_never_edits_the_instance(small):
    inst, _ = small
    doc = to_dict(inst)
    doc["meta"]["u"]["target"]["family"] = "edited"
    assert inst.meta["u"]["target"]["family"] == "piecewise-linear"
