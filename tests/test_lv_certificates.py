"""Claim LV: no update of W_v of rank <= r fits, certified per instance and re-verified by the
independent checker; planted low-rank instances are never certified at or above their rank, and
no search result at rank r falls below a certified margin."""

import json
from fractions import Fraction

import numpy as np
import pytest

from peftaudit.cli import main
from peftaudit.strategies.instances import lv_instance
from peftaudit.verify.checkers import MalformedCertificate, check_certificate
from peftaudit.verify.encoders.lv import certify_lv


@pytest.mark.parametrize("d,examples", [(2, 3), (4, 5), (6, 4)])
@pytest.mark.parametrize("seed", range(3))
def test_generic_instances_are_certified_below_full_rank_and_checked(d, examples, seed):
    inst = lv_instance(np.random.default_rng(seed), d, examples, attention="causal" if seed % 2 else "encoder")
    for rank in range(min(d, examples)):
        result = certify_lv(inst, rank)
        assert result.status == "certified", (rank, result.reason)
        checked = check_certificate(result.certificate)
        assert checked.valid and checked.margin == result.margin > 0


@pytest.mark.parametrize("planted", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_planted_instances_are_never_certified_at_or_above_their_rank(planted, seed):
    inst = lv_instance(np.random.default_rng([seed, planted]), 4, 5, planted_rank=planted)
    statuses = {rank: certify_lv(inst, rank).status for rank in range(4)}
    assert all(statuses[r] != "certified" for r in range(planted, 4)), statuses
    assert statuses[planted - 1] == "certified", statuses  # one below the planted rank: generically certified


@pytest.fixture(scope="module")
def certificate():
    result = certify_lv(lv_instance(np.random.default_rng(7), 4, 5), 1)
    assert result.status == "certified"
    return result.certificate


def _frac(text):
    return Fraction(text)


@pytest.mark.parametrize("field,change", [
    ("s", lambda c: str(_frac(c["s"]) * 2)),                       # a larger sigma floor than the data allow
    ("e", lambda c: str(_frac(c["e"]) / 1000)),                    # a smaller enclosure error than the boxes
    ("c", lambda c: "1"),                                          # sqrt(d N) understated
    ("margin", lambda c: str(_frac(c["margin"]) * 2)),             # a claimed margin above the checked one
    ("H", lambda c: [[str(_frac(x) + 1) for x in row] for row in c["H"]]),  # preimages moved: margin shrinks
])
def test_tampered_numbers_are_rejected(certificate, field, change):
    bad = json.loads(json.dumps(certificate))
    bad[field] = change(bad)
    assert not check_certificate(bad).valid


@pytest.mark.parametrize("field,value", [("rank", 2), ("rank", -1), ("Q", []), ("H", [])])
def test_malformed_or_mismatched_shapes_are_refused(certificate, field, value):
    bad = json.loads(json.dumps(certificate))
    bad[field] = value
    try:
        assert not check_certificate(bad).valid
    except MalformedCertificate:
        pass


def test_no_rank_r_search_result_falls_below_the_certified_margin():
    from peftaudit.evidence import search_config
    from peftaudit.search.engine import search
    from dataclasses import replace
    from peftaudit.settings import get_profile

    insts = [lv_instance(np.random.default_rng(s), d, d + 1) for s, d in ((0, 2), (1, 4), (2, 4))]
    margins = [certify_lv(inst, 1).margin for inst in insts]
    config = replace(search_config(get_profile("quick"), 0, "cpu"), method="lora", options={"targets": "v"}, sizes=(1,))
    for a in search(insts, config, progress=False):
        assert a.max_abs_error >= float(margins[a.instance]), (a.instance, a.max_abs_error, margins[a.instance])


def test_cli_generates_certifies_and_checks_lv(tmp_path, capsys):
    inst = tmp_path / "plv.json"
    assert main(["generate", "--kind", "planted-lv", "--d", "4", "--length", "2", "--out", str(inst)]) == 0
    cert = tmp_path / "c.json"
    assert main(["certify", str(inst), "--claim", "LV", "--rank", "1", "--out", str(cert)]) == 0
    assert main(["certify", str(inst), "--claim", "LV", "--rank", "2"]) == 1  # the planted rank: never certified
    assert main(["check-certificate", str(cert), "--instance", str(inst)]) == 0
    assert main(["certify", str(inst), "--rank", "1"]) == 2  # --rank is LV's alone
    out = capsys.readouterr().out
    assert "LV: certified" in out and "LV: not-certified" in out


def test_audit_certifies_lv_on_its_drawn_instances_with_a_tight_sandwich_on_planted_ones():
    from peftaudit.audit import run_audit

    result = run_audit(["LV"], calibration=False, progress=False, quiet=True, instances=3)
    claim = result.report["claims"][0]
    assert claim["verdict"] == "CERTIFIED", claim["reason"]
    assert not claim["violations"] and not result.errors
    rows = claim["study"]["rows"]
    planted = [r for r in rows if r["family"] == "planted-lv"]
    assert planted and all(r["tight"] and r["witness_rank"] == r["certified_below"] == 2 for r in planted)
    assert all(r["certified_below"] >= 2 for r in rows)  # the claim's rank 1 always ruled out
    assert claim["study_table"]["rows"] and "witnessed upper" in claim["study_table"]["headers"]


def test_the_construction_memorizes_planted_instances_exactly_at_their_rank():
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import rigorous_replay
    from peftaudit.verify.encoders.lv import construct_update

    lora = get_method("lora", targets="v")
    for planted in (1, 2):
        inst = lv_instance(np.random.default_rng([3, planted]), 4, 6, planted_rank=planted)
        assert rigorous_replay(lora, inst, construct_update(inst, planted))[1] <= 1e-8
        if planted > 1:  # one rank less: the certificate says it cannot, and the construction does not
            assert rigorous_replay(lora, inst, construct_update(inst, planted - 1))[1] > 1e-3


def test_lv_applies_to_declared_value_rank_methods_and_a_false_declaration_is_caught(monkeypatch):
    """LoRA on v and peft-lora on v declare update_class 'value-rank' (conformance checks it, the
    card lists LV as applying); a method that declares it falsely fails the rule, and searched as
    LV's falsifier its exact model is refused: that method's ERROR naming the rule, never REFUTED."""
    from pathlib import Path

    from peftaudit.audit import run_audit
    from peftaudit.card.battery import impossibilities
    from peftaudit.conformance import check_rule
    from peftaudit.models.methods import get_method

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))
    rule = "a declared update class holds"
    assert check_rule(rule, "lora").ok and not check_rule(rule, "lora").skipped
    assert check_rule(rule, "peft-lora").ok
    false = check_rule(rule, "user_methods:FalseValueRank")
    assert not false.ok and "Wq" in false.detail
    lv = {x["claim"]: x for x in impossibilities(get_method("lora"))}["LV"]
    assert lv["applies"] and not {x["claim"]: x for x in impossibilities(get_method("peft-ia3"))}["LV"]["applies"]
    result = run_audit(["LV"], methods=["lora", "user_methods:FalseValueRank"], calibration=False, cards=False,
                       progress=False, quiet=True, instances=3)
    claim = result.report["claims"][0]
    assert claim["verdict"] != "REFUTED" and not claim["counterexamples"]
    assert "user_methods:FalseValueRank@1" in claim["search"]  # searched as LV's falsifier by its declaration
    errors = claim["method_errors"].get("user_methods:FalseValueRank@1", "")
    solved = any(r["solved"] for r in claim["search"]["user_methods:FalseValueRank@1"])
    assert (not solved) or "a declared update class holds" in errors
    # the refusal itself, on any adapter of the liar: the exact model touches W_q
    import torch

    from peftaudit.models.methods.module_method import MethodContractError
    from peftaudit.search.engine import exact_model

    liar, inst = get_method("user_methods:FalseValueRank"), lv_instance(np.random.default_rng(0), 4, 5)
    adapter = {k: v[0].numpy() for k, v in liar.init(inst.spec, 1, 1, torch.Generator().manual_seed(0)).items()}
    with pytest.raises(MethodContractError, match="a declared update class holds"):
        exact_model(liar, inst, adapter, update_class=("value-rank", 1))
    honest = get_method("lora")
    adapter = {k: v[0].numpy() for k, v in honest.init(inst.spec, 1, 1, torch.Generator().manual_seed(0)).items()}
    assert exact_model(honest, inst, adapter, update_class=("value-rank", 1)) is not None
