"""Claim LV-scale: no scaling of W_v's rows (IA3 on v) fits, certified per instance by one
coordinate and one pair of examples and re-verified by the independent checker; instances planted
from a hidden scaling are never certified, and no IA3 search result falls below a certified margin."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from peftaudit.cli import main
from peftaudit.strategies.instances import lv_instance
from peftaudit.verify.checkers import MalformedCertificate, check_certificate
from peftaudit.verify.encoders.lv_scale import certify_lv_scale, construct_scaling

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("d", [2, 4, 6])
@pytest.mark.parametrize("seed", range(3))
def test_generic_instances_are_certified_and_checked(d, seed):
    inst = lv_instance(np.random.default_rng([seed, d]), d, d + 1, attention="causal" if seed % 2 else "encoder")
    result = certify_lv_scale(inst)
    assert result.status == "certified", result.reason
    checked = check_certificate(result.certificate)
    assert checked.valid and checked.margin >= result.margin > 0  # the checker's own enclosures, never looser


@pytest.mark.parametrize("d", [2, 4, 8])
@pytest.mark.parametrize("seed", range(4))
def test_planted_scalings_are_never_certified_and_the_construction_memorizes_them(d, seed):
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import rigorous_replay

    inst = lv_instance(np.random.default_rng([seed, d, 5]), d, d + 1, planted_scale=True,
                       attention="causal" if seed % 2 else "encoder")
    assert certify_lv_scale(inst).status == "not-certified"
    assert rigorous_replay(get_method("ia3"), inst, construct_scaling(inst))[1] <= 1e-8


@pytest.fixture(scope="module")
def certificate():
    result = certify_lv_scale(lv_instance(np.random.default_rng(7), 4, 5))
    assert result.status == "certified"
    return result.certificate


@pytest.mark.parametrize("field,change", [
    ("margin", lambda c: str(Fraction(c["margin"]) * 2)),                       # above the checked bound
    ("H", lambda c: [[str(Fraction(x) + Fraction(1, 10)) for x in row] for row in c["H"]]),  # preimages moved
    ("coordinate", lambda c: (c["coordinate"] + 1) % 4),                       # another coordinate's weaker bound
    ("pair", lambda c: [c["pair"][0], c["pair"][0]]),                          # one example twice
])
def test_tampered_certificates_are_rejected(certificate, field, change):
    bad = json.loads(json.dumps(certificate))
    bad[field] = change(bad)
    assert not check_certificate(bad).valid


@pytest.mark.parametrize("field,value", [("coordinate", 4), ("coordinate", -1), ("coordinate", True), ("pair", [0]),
                                         ("pair", [0, 99]), ("H", []), ("H", [["1"]] * 5)])
def test_malformed_fields_are_refused(certificate, field, value):
    bad = json.loads(json.dumps(certificate))
    bad[field] = value
    with pytest.raises(MalformedCertificate):
        check_certificate(bad)


def test_no_ia3_search_result_falls_below_the_certified_margin():
    from dataclasses import replace

    from peftaudit.evidence import search_config
    from peftaudit.search.engine import search
    from peftaudit.settings import get_profile

    insts = [lv_instance(np.random.default_rng(s), d, d + 1) for s, d in ((0, 2), (1, 4), (2, 8))]
    margins = [float(certify_lv_scale(inst).margin) for inst in insts]
    for method in ("ia3", "peft-ia3"):
        config = replace(search_config(get_profile("quick"), 0, "cpu"), method=method, options={"targets": "v"},
                         sizes=(1,))
        for a in search(insts, config, progress=False):
            assert a.max_abs_error >= margins[a.instance], (method, a.instance, a.max_abs_error)


def test_cli_generates_certifies_and_checks_lv_scale(tmp_path, capsys):
    generic, planted, cert = tmp_path / "g.json", tmp_path / "p.json", tmp_path / "c.json"
    assert main(["generate", "--kind", "lv", "--d", "4", "--out", str(generic)]) == 0
    assert main(["generate", "--kind", "planted-lv-scale", "--d", "4", "--out", str(planted)]) == 0
    assert main(["certify", str(generic), "--claim", "LV-scale", "--out", str(cert)]) == 0
    assert main(["certify", str(planted), "--claim", "LV-scale"]) == 1
    assert main(["check-certificate", str(cert), "--instance", str(generic)]) == 0
    assert main(["certify", str(generic), "--claim", "LV-scale", "--rank", "1"]) == 2  # --rank is LV's alone
    out = capsys.readouterr().out
    assert "LV-scale: certified" in out and "LV-scale: not-certified" in out


def test_audit_certifies_lv_scale_with_planted_controls_and_a_sandwich():
    from peftaudit.audit import run_audit

    result = run_audit(["LV-scale"], calibration=False, progress=False, quiet=True, instances=3)
    claim = result.report["claims"][0]
    assert claim["verdict"] == "CERTIFIED", claim["reason"]
    assert not claim["violations"] and not result.errors
    rows = claim["study"]["rows"]
    controls = [r for r in rows if r["instance"].startswith("control")]
    assert len(controls) == 3 and all(r["floor"] is None and r["construction"] <= 1e-8 for r in controls)
    drawn = [r for r in rows if not r["instance"].startswith("control")]
    assert all(0 < r["floor"] < r["construction"] for r in drawn)  # the best scaling's error lies between


def test_update_classes_reach_search_conformance_and_cards(monkeypatch, tmp_path):
    """IA3 on v declares 'value-scale' (LV-scale applies, LV does not), IA3 on q and v declares
    nothing; a VeRA-style plugin declaring 'value-rank' is searched as LV's falsifier through a
    whole audit, passes the conformance rule, and its card brings an LV certificate that checks."""
    from peftaudit.audit import run_audit
    from peftaudit.card.battery import impossibilities
    from peftaudit.conformance import check_rule
    from peftaudit.models.methods import get_method

    monkeypatch.syspath_prepend(str(FIXTURES))
    applies = lambda name, **o: {x["claim"]: x["applies"] for x in impossibilities(get_method(name, **o))}  # noqa
    assert applies("ia3") == {**applies("ia3"), "LV": False, "LV-scale": True}
    assert not applies("ia3", targets="q,v")["LV-scale"] and not applies("peft-ia3")["LV-scale"]  # default: v and fc1
    assert applies("peft-ia3", targets="v")["LV-scale"] and applies("user_methods:VeRA")["LV"]
    rule = "a declared update class holds"
    assert check_rule(rule, "ia3").ok and check_rule(rule, "user_methods:VeRA").ok
    assert check_rule(rule, "ia3", {"targets": "q,v"}).skipped

    out = tmp_path / "audit"
    result = run_audit(["LV"], methods=["user_methods:VeRA"], calibration=False, progress=False, quiet=True,
                       instances=3, card_families=["l1"], out=out)
    claim = result.report["claims"][0]
    assert claim["verdict"] == "CERTIFIED" and not claim["method_errors"] and not result.errors
    assert "user_methods:VeRA@1" in claim["search"]  # inherited: searched as LV's falsifier at rank 1
    card = json.loads((out / "cards" / "user_methods_VeRA" / "card.json").read_text())
    by_class = card["class_certificate"]
    assert by_class["claim"] == "LV" and by_class["status"] == "certified" and not by_class["below_margin"]
    assert by_class["method_best_error"] >= by_class["margin"] > 0 and not card["conflicts"]
    assert main(["check-certificate", str(out / "cards" / "user_methods_VeRA" / by_class["certificate_file"])]) == 0
