"""The audit: verdicts, reports and their schema, the planted false claim, and the pytest plugin."""

import json
from pathlib import Path

import jsonschema
import pytest

from peftaudit.audit import run_audit
from peftaudit.audit.report import SCHEMA_FILE, SCHEMA_VERSION
from peftaudit.evidence import ClaimOutcome, decide
from peftaudit.claims import claim_ids, get_claim
from peftaudit.cli import main
from peftaudit.search.engine import Attempt

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def false_claim():
    import sys
    sys.path.insert(0, str(FIXTURES))
    import false_claim as module
    yield module.FALSE_CLAIM
    sys.path.remove(str(FIXTURES))


def test_planted_false_claim_is_refuted_with_a_replayable_counterexample(tmp_path, false_claim, capsys):
    out = tmp_path / "rep"
    code = main(["audit", "--claims", "FALSE-P2", "--no-calibration", "--out", str(out), "--jobs", "1"])
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    claim = report["claims"][0]
    assert claim["verdict"] == "REFUTED" and claim["counterexamples"]
    ce = claim["counterexamples"][0]
    capsys.readouterr()
    assert main(["replay", str(out / ce["instance_file"]), str(out / ce["adapter_file"])]) == 0
    assert "memorizes" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "REFUTED" in html and "data:image/png;base64," in html
    assert "| FALSE-P2 | **REFUTED** |" in (out / "report.md").read_text()


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_l1_claims_are_certified_and_contrasts_succeed(tmp_path):
    result = run_audit(["L1+"], out=tmp_path / "r", calibration=False, progress=False, quiet=True)
    claim = result.report["claims"][0]
    assert claim["verdict"] == "CERTIFIED", claim["reason"]
    assert all(c["checked"] for c in claim["certificates"])
    assert claim["contrasts"]["lora[targets=v]@1"]["solved"] == claim["instances"]
    assert not any(r["solved"] for r in claim["search"]["prompt"])
    jsonschema.validate(result.report, json.loads(SCHEMA_FILE.read_text()))
    again = run_audit(["L1+"], calibration=False, progress=False, quiet=True)
    written = [{k: v for k, v in c.items() if k != "recheck"} for c in result.report["claims"]]  # a path's command
    assert again.report["claims"] == written  # same seed and profile: same numbers


def _outcome(kind="cannot"):
    claim = get_claim("L1")
    return ClaimOutcome(claim=claim, shapes=[{"d": 2, "family": None}] * 2)


def test_decide_flags_search_results_below_a_certified_margin_as_error():
    o = _outcome()
    o.certificates = {0: {"status": "certified", "margin": 0.5}, 1: {"status": "certified", "margin": 0.5}}
    o.searches = {"prompt": [Attempt(0, "prompt", 1, 3, 0.01, 0.1, False)]}
    decide(o)
    assert o.verdict == "ERROR" and "below the certified margin" in o.reason


def test_decide_vacuous_survived_and_certified():
    o = _outcome()
    o.vacuous = {0: "x", 1: "y"}
    decide(o)
    assert o.verdict == "VACUOUS"
    o = _outcome()
    o.certificates = {0: {"status": "certified", "margin": 0.5}, 1: {"status": "not-certified", "margin": None}}
    decide(o)
    assert o.verdict == "SURVIVED"
    o.certificates[1] = {"status": "certified", "margin": 0.2}
    decide(o)
    assert o.verdict == "CERTIFIED"


def test_unknown_claims_and_methods_are_bad_usage(capsys):
    assert main(["audit", "--claims", "NOPE"]) == 2
    assert "L1" in capsys.readouterr().err
    assert main(["audit", "--methods", "nope"]) == 2


def test_committed_reference_report_matches_the_code():
    report = json.loads((ROOT / "reports" / "latest" / "report.json").read_text())
    assert report["schema"] == SCHEMA_VERSION
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    assert [c["id"] for c in report["claims"]] == [c for c in claim_ids() if not c.startswith("FALSE")]
    assert "figures/parameters.png" in report["figures"]  # certified lower and witnessed upper per method


PLUGIN_CONFTEST = '''
import numpy as np
from peftaudit.claims import Claim, MethodRun, register_claim
from peftaudit.strategies.instances import planted_prompt_instance

def _draw(profile, seed):
    rng = np.random.default_rng([seed, 99])
    return [planted_prompt_instance(rng, 3, 2, targets="last") for _ in range(2)]

register_claim(Claim(id="FALSE-P2", title="false on purpose", source="tests", formalization="planted",
    kind="cannot", draw=_draw, hypotheses=lambda inst: None, falsifiers=(MethodRun("prompt", {}, (2,)),)))
'''

FIXTURE_TEST = '''
def test_fixture_audits_a_claim(peftaudit_audit):
    assert peftaudit_audit("FALSE-P2", methods=["prompt"]).verdicts == {"FALSE-P2": "REFUTED"}
'''


def test_pytest_plugin_collects_and_fails_a_refuted_claim(pytester):
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(test_fixture=FIXTURE_TEST)
    result = pytester.runpytest_subprocess("--peftaudit", "--peftaudit-claims", "FALSE-P2",
                                           "--junitxml", "junit.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FALSE-P2 is REFUTED*"])
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="verdict" value="REFUTED"' in junit and "peftaudit[FALSE-P2-prompt]" in junit


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_pytest_plugin_works_under_xdist(pytester):
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(test_fixture=FIXTURE_TEST)
    result = pytester.runpytest_subprocess("--peftaudit", "--peftaudit-claims", "FALSE-P2", "-n", "2",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)


def test_plugin_import_is_light():
    import subprocess
    import sys
    code = "import sys, peftaudit.pytest_plugin; print('torch' in sys.modules, 'z3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_jobs_give_the_same_verdicts_and_certificates(tmp_path):
    one = run_audit(["L1"], methods=["prompt"], calibration=False, progress=False, quiet=True)
    two = run_audit(["L1"], methods=["prompt"], jobs=2, calibration=False, progress=False, quiet=True)
    assert one.verdicts == two.verdicts == {"L1": "CERTIFIED"}
    assert one.report["claims"][0]["certificates"] == two.report["claims"][0]["certificates"]


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_interrupt_leaves_no_report_but_a_resumable_store(tmp_path, monkeypatch, capsys):
    import peftaudit.search.calibrate as calibration

    real = calibration.calibrate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(calibration, "calibrate", interrupted)
    out = tmp_path / "rep"
    # inline (--jobs 1): the patched calibrate is this process's
    assert main(["audit", "--claims", "L1", "--methods", "prompt", "--out", str(out), "--jobs", "1"]) == 130
    assert sorted(p.name for p in out.iterdir()) == ["store"] and list(tmp_path.iterdir()) == [out]
    err = capsys.readouterr().err
    assert "no report was written" in err and f"--resume {out}" in err
    assert main(["audit", "--out", str(out), "--claims", "L1"]) == 2   # not a new folder: it says --resume
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(calibration, "calibrate", real)
    assert main(["audit", "--resume", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["provenance"]["executor"]["resumed"] == 1 and set(report["calibration"]) == {"prompt", "lora"}
    assert main(["audit", "--resume", str(out)]) == 2   # finished: nothing to resume
    assert "finished" in capsys.readouterr().err


def test_pytest_plugin_passes_a_statement_registered_to_be_refuted(pytester):
    result = pytester.runpytest_subprocess("--peftaudit", "--peftaudit-claims", "M-drop-mlp", "--junitxml",
                                           "junit.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="verdict" value="REFUTED"' in junit and 'name="expected"' in junit


def test_long_per_instance_tables_show_the_worst_and_the_median_instance():
    from peftaudit.audit.report import markdown, shown_instances

    n = 30
    margins = [0.5 + i / 100 for i in range(n)]
    margins[17] = 0.01  # the worst
    claim = {"id": "X", "title": "t", "source": "s", "formalization": "f", "kind": "cannot", "verdict": "CERTIFIED",
             "reason": "r", "instances": n, "vacuous": 0, "vacuous_reasons": {str(i): "same reason" for i in range(3)},
             "instance_shapes": [{"d": 2, "family": None}] * n, "search": {}, "contrasts": {}, "comparisons": {},
             "certificates": [{"instance": i, "status": "certified", "margin": m} for i, m in enumerate(margins)],
             "counterexamples": [{"replay": f"peftaudit replay {i}", "max_abs_error": 0.0} for i in range(8)],
             "parameters": [{"instance": i, "d": 2, "family": None, "certified_prompt_params": 4,
                             "methods": {"prompt": {"solved_params": None, "tried_params": 8}}} for i in range(n)]}
    keep, note = shown_instances(claim)
    assert keep == {17, sorted(range(n), key=lambda i: margins[i])[n // 2]} and "instance 17" in note
    text = markdown({"provenance": {"profile": "thorough", "seed": 0, "device": "cpu", "git_commit": None,
                                    "versions": {}}, "claims": [claim], "calibration": {}})
    rows = [line for line in text.splitlines() if line.startswith("| 1") or line.startswith("| 2")]
    assert sorted(int(r.split("|")[1]) for r in rows) == sorted(keep)
    assert text.count("peftaudit replay") == 5 and "and 3 more counterexamples" in text
    assert "vacuous instances (3): same reason" in text


def test_sandwich_rows_pair_each_certified_floor_with_the_best_found():
    from peftaudit.audit.sandwich import sandwich_rows, sandwich_summary

    claim = {"kind": "cannot", "certificates": [
        {"instance": 0, "status": "certified", "margin": 0.5}, {"instance": 1, "status": "certified", "margin": 0.2},
        {"instance": 2, "status": "not-certified", "margin": None}],
        "search": {"prompt@1": [{"instance": 0, "max_abs_error": 2.0}, {"instance": 1, "max_abs_error": 0.4}],
                   "prompt@2": [{"instance": 0, "max_abs_error": 1.0}, {"instance": 2, "max_abs_error": 0.1}]}}
    rows = sandwich_rows(claim)
    assert [(r["instance"], r["best_found"], r["found_by"], r["ratio"]) for r in rows] == \
        [(0, 1.0, "prompt@2", 0.5), (1, 0.4, "prompt@1", 0.5)]
    assert sandwich_summary(rows) == {"instances": 2, "median_ratio": 0.5, "worst_ratio": 0.5, "best_ratio": 0.5}
    assert sandwich_rows({**claim, "kind": "can"}) == []


def test_the_reference_report_places_every_certified_instance_between_floor_and_best_found():
    report = json.loads((ROOT / "reports" / "latest" / "report.json").read_text())
    by_id = {c["id"]: c for c in report["claims"]}
    for cid in ("L1", "L1+", "L2", "LV", "LV-scale", "M"):
        rows = by_id[cid]["sandwich"]
        assert rows and all(0 < r["floor"] <= r["best_found"] for r in rows), cid  # a floor above: ERROR
        assert 0 < by_id[cid]["sandwich_summary"]["median_ratio"] <= 1
    assert "figures/sandwich.png" in report["figures"] and "figures/margins.png" not in report["figures"]
    text = (ROOT / "reports" / "latest" / "report.md").read_text()
    assert "median floor / best found" in text
