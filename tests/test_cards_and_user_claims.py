"""Method cards, users' claims about their methods, and the example plugin installed with pip."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftaudit.audit import run_audit
from peftaudit.evidence import search_config
from peftaudit.card import run_battery, write_card
from peftaudit.card.battery import sizes_for
from peftaudit.claims.user import cannot_memorize, memorizes
from peftaudit.errors import InputError
from peftaudit.models.methods import get_method
from peftaudit.models.spec import simple_spec
from peftaudit.settings import get_profile

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module", autouse=True)
def user_methods():
    sys.path.insert(0, str(FIXTURES))
    yield
    sys.path.remove(str(FIXTURES))


def test_budgets_pick_the_largest_size_that_fits():
    spec = simple_spec(4)
    assert sizes_for(get_method("prompt"), spec, [4, 8, 16]) == {4: 1, 8: 2, 16: 4}
    assert sizes_for(get_method("lora", targets="v"), spec, [4, 8, 16]) == {4: None, 8: 1, 16: 2}
    assert set(sizes_for(get_method("full"), spec, [4, 8]).values()) == {1}  # one reference point


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_card_of_an_input_space_method(tmp_path):
    prof = get_profile("quick")
    card = run_battery("user_methods:PromptModule", {}, prof, 0, search_config(prof, 0, "cpu"), d=4, count=2,
                       families=["l1", "planted-prompt", "planted-lora", "random-1", "random-2"])
    applies = {x["claim"]: x["applies"] for x in card["impossibilities"]}
    assert applies == {"L1": True, "L1+": True, "L2": True, "M": True, "LV": False, "LV-scale": False}  # LV, LV-scale: W_v only
    assert card["declaration"]["confirmed"] and not card["conflicts"] and not card["errors"]
    mine = [r for r in card["rows"] if r["method"] == "user_methods:PromptModule"]
    assert not any(r["solved"] for r in mine if r["family"] == "l1")  # L1 applies: it must not, and it did not
    assert any(r["solved"] == r["total"] for r in mine if r["family"] == "planted-prompt")
    assert {r["method"] for r in card["rows"]} == {"user_methods:PromptModule", "prompt", "prefix", "lora", "full"}
    assert any(r["family"] == "planted-lora" and r["method"] == "lora" and r["solved"] for r in card["rows"])
    folder = write_card(card, tmp_path / "card")
    assert (folder / "card.html").read_text().count("data:image/png;base64,") == 2
    assert any(c["examples_memorized"] >= 1 for c in card["capacity"] if c["method"] == "user_methods:PromptModule")
    md = (folder / "card.md").read_text()
    assert "| L1 |" in md and "Declaration check (confirmed)" in md
    with pytest.raises(InputError, match="new or empty"):
        write_card(card, tmp_path / "card")
    write_card(card, tmp_path / "card", force=True)  # a previous card is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="previous peftaudit card"):
        write_card(card, tmp_path / "other", force=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_card_flags_a_false_input_space_declaration():
    """A weight-space method that claims to be input-space is caught memorizing a certified L1 instance."""
    from peftaudit.models.methods import registered_method
    from peftaudit.models.methods.lora import LoRA

    class Pretender(LoRA):
        kind = "input-space"

    with registered_method("pretender", Pretender):
        prof = get_profile("quick")
        card = run_battery("pretender", {"targets": "v"}, prof, 0, search_config(prof, 0, "cpu"), d=4, count=2,
                           families=["l1"])
    assert card["conflicts"] and "declaration as input-space is false" in card["conflicts"][0]


def test_user_claims_follow_the_verdict_rules():
    can_fail = memorizes("user_methods:PromptModule", "l1", size=2, count=2, d=4)
    cannot_true = cannot_memorize("user_methods:PromptModule", "l1", sizes=(1, 2), count=2, d=4)
    cannot_false = cannot_memorize("lora", "planted-lora", sizes=(1,), options={"targets": "v"}, count=2, d=4)
    can_true = memorizes("lora", "planted-lora", size=1, options={"targets": "v"}, count=2, d=4)
    result = run_audit([can_fail, cannot_true, cannot_false, can_true], calibration=False, progress=False, quiet=True)
    v = result.verdicts
    assert v[can_fail.id] == "REFUTED"  # the L1 certificate (checked) applies to an input-space method
    assert v[cannot_true.id] == "SURVIVED"  # search found nothing; no certificate is wired to "cannot" here
    assert v[cannot_false.id] == "REFUTED"  # a found adapter, replayed exactly
    assert v[can_true.id] == "CERTIFIED" and "all 2 instances carry a witness" in result.report["claims"][3]["reason"]
    unsolved = memorizes("user_methods:GatedValues", "random-8", size=1, count=2, d=4)
    claim = run_audit([unsolved], calibration=False, progress=False, quiet=True).report["claims"][0]
    assert claim["verdict"] == "NOT-SHOWN" and "without one: instance 0" in claim["reason"]  # failures listed


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def _run(args, env, cwd, timeout=900):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_example_plugin_installed_with_pip_gets_audited_carded_and_tested(tmp_path):
    import shutil
    site, source = tmp_path / "site", tmp_path / "peftaudit-mlp-prompt"
    shutil.copytree(ROOT / "examples" / "peftaudit-mlp-prompt", source)  # the build writes beside the sources
    done = _run(["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
                 str(source)], os.environ.copy(), tmp_path)
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(torch_threads())}
    audit = _run(["-m", "peftaudit.cli", "audit", "--claims", "L1,MLP-PROMPT-L1", "--methods", "mlp-prompt",
                  "--card-families", "l1,planted-prompt,random-1", "--no-calibration", "--out", str(tmp_path / "rep")],
                 env, tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    verdicts = {c["id"]: c["verdict"] for c in report["claims"]}
    assert verdicts == {"L1": "CERTIFIED", "MLP-PROMPT-L1": "SURVIVED"}
    assert "mlp-prompt" in report["claims"][0]["search"]  # it inherits L1 and is searched against it
    card_dir = tmp_path / "rep" / report["cards"]["mlp-prompt"]["folder"]
    assert (card_dir / "card.html").is_file() and "input-space" in (card_dir / "card.md").read_text()
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_nothing.py").write_text("def test_placeholder():\n    assert 1 + 1 == 2\n")
    tests = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--peftaudit", "--peftaudit-claims", "L1",
                  "--peftaudit-methods", "mlp-prompt", "--peftaudit-conformance", "mlp-prompt"], env, project)
    assert tests.returncode == 0, tests.stdout[-3000:]
    # the placeholder, the L1 audit item and 8 conformance rules; 3 rules skipped (no identity, no Jacobian, no update class)
    assert "10 passed, 3 skipped" in tests.stdout  # no exact model, no Jacobian, no update class: skipped


def test_card_command_works_without_profile(tmp_path, capsys):
    """`peftaudit card METHOD` as the README writes it: the quick profile by default (was exit 2)."""
    from peftaudit.cli import main

    out = tmp_path / "card"
    assert main(["card", "lora", "--families", "random-1", "--count", "1", "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["profile"] == "quick" and "card:" in capsys.readouterr().out
