"""A green run means what it says: "can" claims that can fail, a claim's subject never dropped,
plugin declarations checked before a verdict depends on them, stored evidence re-checked where
it is read, and witnesses bound to what their claim says."""

import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from peftaudit.audit import resume_audit, run_audit
from peftaudit.cli import main
from peftaudit.claims.user import cannot_memorize, memorizes
from peftaudit.errors import InputError
from peftaudit.models.interval import ExactAdapter

FIXTURES = Path(__file__).parent / "fixtures"
VERA = "user_methods:VeRA"


@pytest.fixture(scope="module", autouse=True)
def user_methods():
    sys.path.insert(0, str(FIXTURES))
    yield
    sys.path.remove(str(FIXTURES))


def audit(claims, methods=None, **kw):
    return run_audit(claims, profile="quick", methods=methods, calibration=False, progress=False, quiet=True,
                     cards=False, **kw)


# ------------------------------------------------------------------ "can" claims that can fail

def test_a_false_can_claim_is_not_shown_and_a_true_one_is_certified_by_witnesses():
    false = memorizes(VERA, "random", examples=4, size=2, d=4, count=3, id="vera memorizes 4")  # 6 params, 4 targets x 4
    true = memorizes(VERA, "random", examples=1, params=8, d=4, count=3, id="vera memorizes 1")
    result = audit([false, true])
    verdicts = result.verdicts
    assert verdicts == {"vera memorizes 4": "NOT-SHOWN", "vera memorizes 1": "CERTIFIED"}
    reason = result.report["claims"][0]["reason"]
    assert "instance 0" in reason and "instance 2" in reason and "0 of 3" in reason
    assert result.not_shown == ["vera memorizes 4"] and not result.refuted
    witnessed = result.outcomes[1].searches
    assert all(a.rigorously_solved for runs in witnessed.values() for a in runs if a.solved)


def test_a_method_without_an_exact_model_cannot_certify_a_can_claim():
    claim = memorizes("user_methods:GatedValues", "random", examples=1, size=1, d=4, count=2, id="gated memorizes 1")
    outcome = audit([claim]).outcomes[0]
    assert outcome.verdict == "NOT-SHOWN"
    if any(a.solved for runs in outcome.searches.values() for a in runs):  # float64 solutions are no witnesses
        assert "exact model not confirmed" in outcome.reason


def test_audit_exits_non_zero_on_a_not_shown_claim(tmp_path, capsys, monkeypatch):
    from peftaudit.claims import registered_claim

    claim = memorizes(VERA, "random", examples=4, size=2, d=4, count=2, id="VERA-4")
    with registered_claim(claim):
        assert main(["audit", "--claims", "VERA-4", "--no-calibration", "--no-cards", "--jobs", "1",
                     "--out", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    assert "NOT-SHOWN" in out and "instance 0" in out


def test_capacity_claims_in_parameters_examples_and_width():
    claim = memorizes("lora", "random", examples=6, params=16, d=4)
    assert claim.falsifiers[0].sizes == (2,)  # rank 2 on W_v at d = 4: 16 parameters
    assert "at most 16 trainable parameters" in claim.title and "6 random example" in claim.title
    cannot = cannot_memorize("prompt", "random", examples=3, params=8, d=4)
    assert cannot.falsifiers[0].sizes == (1, 2) and cannot.subject == "prompt"
    assert memorizes("lora", "random-4", size=1).falsifiers[0].sizes == (1,)  # the old names still work
    with pytest.raises(InputError, match="the width d"):
        memorizes("lora", "random", examples=2, params=16)
    with pytest.raises(InputError, match="smallest size"):
        memorizes("lora", "random", examples=2, params=3, d=4)
    with pytest.raises(InputError, match="only 'random'"):
        memorizes("lora", "l1", examples=2, size=1)
    with pytest.raises(InputError, match="exactly one of"):
        memorizes("lora", "random", examples=2, size=1, params=16, d=4)


# ------------------------------------------------------------------ the subject is never dropped

def test_methods_never_drop_the_subject_of_a_claim():
    false = cannot_memorize(VERA, "random", examples=1, sizes=(4,), d=4, count=2, id="vera cannot 1")
    result = audit([false], methods=["lora"])
    assert result.verdicts["vera cannot 1"] == "REFUTED"
    assert any(label.startswith(VERA) for label in result.outcomes[0].searches)


PLUGIN_CONFTEST = f'''
import sys
sys.path.insert(0, {str(FIXTURES)!r})
from peftaudit.claims import register_claim
from peftaudit.claims.user import cannot_memorize, memorizes
register_claim(cannot_memorize("{VERA}", "random", examples=1, sizes=(4,), d=4, count=2, id="VERA-CANNOT"))
register_claim(memorizes("{VERA}", "random", examples=4, size=2, d=4, count=2, id="VERA-CAN"))
'''


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_pytest_items_fail_on_not_shown_and_a_dropped_subject_and_skip_what_judged_nothing(pytester):
    pytester.makeconftest(PLUGIN_CONFTEST)
    result = pytester.runpytest_subprocess("--peftaudit", "--peftaudit-claims", "VERA-CANNOT,VERA-CAN,L1",
                                           "--peftaudit-methods", "prefix", "-p", "no:cacheprovider", "-rs")
    # VERA-CANNOT and VERA-CAN each fail twice (their subject item and the prefix item: the subject is
    # searched whatever --peftaudit-methods says); L1 with prefix judged nothing (prefix is only compared)
    result.assert_outcomes(failed=4, skipped=1)
    result.stdout.fnmatch_lines(["*SKIP*L1 with prefix*compared*"])
    assert "VERA-CAN is NOT-SHOWN" in result.stdout.str() and "VERA-CANNOT is REFUTED" in result.stdout.str()


# ------------------------------------------------------------------ declarations checked, not trusted

def test_a_pretender_cannot_refute_l2_lora(monkeypatch):
    from peftaudit.models.methods import registered_method
    from peftaudit.models.methods.lora import LoRA

    class Pretender(LoRA):  # rank-1 LoRA on W_v that declares itself input-space
        kind = "input-space"

    with registered_method("pretender", Pretender):
        result = audit(["L2-lora"], methods=["prompt", "pretender"])
    claim = result.report["claims"][0]
    assert claim["verdict"] == "ERROR" and not claim["counterexamples"]
    (label, error), = claim["method_errors"].items()
    assert label.startswith("pretender") and "an input-space method's exact model is a prompt" in error


def test_a_wrong_shaped_exact_model_is_refused_naming_the_shape():
    from peftaudit.conformance import check_rule
    from peftaudit.models.exact_shapes import adapter_mismatch
    from peftaudit.strategies.families import draw_family

    result = check_rule("the declared exact model agrees with the forward", "user_methods:TruncatingExact")
    assert not result.ok and "has shape (1, 4), the model needs (4, 4)" in result.detail
    inst = draw_family("l1", 1, 4, 0)[0]
    wv = "layers.0.heads.0.Wv"
    cases = [
        (ExactAdapter(prompt=np.zeros((1, 3))), "prompt has shape (1, 3)"),
        (ExactAdapter(low_rank={wv: (np.zeros((4, 1)), np.zeros((2, 4)))}), "A has shape (2, 4)"),
        (ExactAdapter(delta={"layers.0.heads.0.Wz": np.zeros((4, 4))}), "not a weight of the model"),
        (ExactAdapter(row_scale={wv: np.ones(3)}), "has shape (3,)"),
        (ExactAdapter(low_rank={"layers.0.b1": (np.zeros((4, 1)), np.zeros((1, 4)))}), "needs a matrix"),
        (ExactAdapter(kron={wv: ([np.eye(2)], [np.eye(3)], 1.0)}), "6x6 update, the weight is 4x4"),
        (ExactAdapter(prefix={"layers.0.heads.0.K": np.zeros((1, 4))}), "no matching key or value"),
        (ExactAdapter(delta={wv: np.full((4, 4), np.nan)}), "NaN or Inf"),
    ]
    for adapter, expect in cases:
        assert expect in (adapter_mismatch(inst.spec, inst.weights, adapter) or ""), expect
    assert adapter_mismatch(inst.spec, inst.weights, ExactAdapter(prompt=np.zeros((2, 4)))) is None


def test_exact_gets_the_context_on_the_prepared_method():
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import exact_model
    from peftaudit.strategies.families import draw_family

    inst = draw_family("random-1", 1, 4, 0)[0]
    method = get_method(VERA)
    adapter = {k: v[0].numpy() for k, v in method.init(inst.spec, 1, 2, __import__("torch").Generator()).items()}
    exact = exact_model(method, inst, adapter)
    (name, (factors, _, _)), = exact.kron.items()
    assert name == "layers.0.heads.0.Wv" and [f.shape for f in factors] == [(4, 4), (4, 2), (2, 2), (2, 4)]


# ------------------------------------------------------------------ evidence re-checked where it is read

def _rewrite_stored_certificate(folder: Path, change) -> None:
    """Change one stored certificate and make the store's records agree (the new file's SHA-256,
    the line's digest), as an attacker with write access would."""
    import hashlib

    from peftaudit.jobs.store import _digest

    store = folder / "store"
    lines = (store / "results.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        entry = json.loads(line)
        certs = entry["result"].get("certificates", {})
        for summary in certs.values():
            if "certificate_stored" in summary and not out_changed(out):
                path = store / summary["certificate_stored"]
                cert = json.loads(path.read_text())
                change(cert)
                data = json.dumps(cert).encode()
                path.write_bytes(data)
                summary["certificate_sha256"] = hashlib.sha256(data).hexdigest()
                out.append("changed")
                break
        entry["sha256"] = _digest(entry["result"])
        out.append(json.dumps(entry, sort_keys=True))
    (store / "results.jsonl").write_text("\n".join(x for x in out if x != "changed") + "\n")


def out_changed(out: list) -> bool:
    return "changed" in out


def _interrupted_audit(tmp_path) -> Path:
    """An unfinished L1 audit: its certificates stored, no report yet."""
    folder = tmp_path / "run"
    audit(["L1"], out=str(folder), instances=2)
    for entry in folder.iterdir():  # resume rebuilds the report from the store alone
        if entry.name != "store":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return folder


def _about_another_instance(cert: dict) -> None:
    """The certificate re-bound to a changed instance (its digest recomputed): valid on its own."""
    from peftaudit.instance import digest, from_dict
    cert["instance"]["meta"]["note"] = "changed"
    cert["instance_sha256"] = digest(from_dict(cert["instance"]))


@pytest.mark.parametrize("change, expect", [
    (_about_another_instance, "about another instance"),
    (lambda cert: cert.__setitem__("margin", "1/1"), "fails the independent re-check"),
])
def test_a_tampered_store_certificate_is_error_on_resume(tmp_path, change, expect):
    folder = _interrupted_audit(tmp_path)
    assert json.loads((folder / "store" / "plan.json").read_text())
    _rewrite_stored_certificate(folder, change)
    result = resume_audit(folder, progress=False, quiet=True)
    claim = result.report["claims"][0]
    assert claim["verdict"] == "ERROR", claim["reason"]
    assert "instance 0" in claim["reason"] and expect in claim["reason"]


def test_check_report_rechecks_every_certificate_against_its_drawn_instance(tmp_path, capsys):
    folder = tmp_path / "r"
    result = audit(["L1", "Z1-relu"], out=str(folder), instances=2)
    md = (folder / "report.md").read_text()
    assert f"peftaudit check-report {folder} --claim L1" in md and result.verdicts["L1"] == "CERTIFIED"
    assert main(["check-report", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "L1: ok (CERTIFIED; 2 certificate(s) valid" in out and "Z1-relu: ok" in out
    # a certificate of another instance put in place of instance 1's is caught
    certs = folder / "certificates"
    (certs / "L1-1.json").unlink()
    (certs / "L1-1.json").write_bytes((certs / "L1-0.json").read_bytes())
    assert main(["check-report", str(folder), "--claim", "L1"]) == 1
    assert "about another instance" in capsys.readouterr().out


# ------------------------------------------------------------------ witnesses bound to their claim

def _z1_relu_certificate():
    from peftaudit.claims import get_claim
    from peftaudit.settings import get_profile

    claim = get_claim("Z1-relu")
    inst = claim.draw(get_profile("quick"), 0)[0]
    return claim.certify(inst, 1e-9).certificate


def test_a_z1_relu_witness_of_another_rank_is_rejected(tmp_path, capsys):
    cert = _z1_relu_certificate()
    R = cert["rank"]
    D = len(cert["B"][0])
    assert R < D
    # the same update written at rank R + 1 (a zero column and row): a valid LoRA, of another rank
    cert["rank"] = R + 1
    cert["B"] = [[row + [0.0] for row in B] for B in cert["B"]]
    cert["A"] = [A + [[0.0] * D] for A in cert["A"]]
    path = tmp_path / "z1.json"
    path.write_text(json.dumps(cert))
    assert main(["check-certificate", str(path)]) == 1
    assert f"rank {R + 1} is not the claim's ceil(D L_bar / L) = {R}" in capsys.readouterr().out


def test_a_u_witness_whose_g_encodes_the_table_is_rejected(tmp_path, capsys):
    from peftaudit.claims import get_claim
    from peftaudit.settings import get_profile
    from peftaudit.verify.checkers import check_certificate

    claim = get_claim("U")
    inst = claim.draw(get_profile("quick"), 0)[0]
    cert = claim.certify(inst, 1e-9).certificate
    assert check_certificate(cert).valid
    layers = cert["instance"]["model"]["layers"]
    # g made to depend on the target: a table entry folded into the look-up's value map
    wv = layers[2]["heads"][0]["Wv"]
    wv[0][0] = wv[0][0] + 0.5
    from peftaudit.instance import digest, from_dict
    cert["instance_sha256"] = digest(from_dict(cert["instance"]))
    path = tmp_path / "u.json"
    path.write_text(json.dumps(cert))
    assert main(["check-certificate", str(path)]) == 1
    assert "not the target-independent g" in capsys.readouterr().out


def test_u_at_p16_is_certified_and_an_uncovered_p_is_refused():
    from peftaudit.models import universal
    from peftaudit.strategies.lipschitz import u_instance
    from peftaudit.verify.checkers import check_certificate
    from peftaudit.claims import get_claim

    for p in (16, 32):
        inst = u_instance(np.random.default_rng(0), 2, 1, 1.0, 0.8, p, "affine")
        result = get_claim("U").certify(inst, 1e-9)
        checked = check_certificate(result.certificate)
        assert result.status == "certified" and checked.valid, checked.reason
        assert checked.result.facts["dp_bound"] <= 0.8
    with pytest.raises(ValueError, match="p = 64 at eps = 0.8"):
        universal.choose(2, 1, 1.0, 0.8, 64)
    assert Fraction(universal.choose(2, 1, 1.0, 0.8, 16)[1]) >= Fraction(1, 2 ** 48)


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_u_report_prints_one_g_per_configuration():
    result = audit(["U"])
    rows = result.report["claims"][0]["g_per_configuration"]
    assert rows and all(len(r["g_sha256"]) == 1 for r in rows)
    assert sum(len(r["instances"]) for r in rows) == result.report["claims"][0]["instances"]
