"""Bring your own method: module methods, peft's methods as guests, plugins, conformance, isolation."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from peftaudit.audit import run_audit
from peftaudit.claims import Claim, MethodRun
from peftaudit.cli import main
from peftaudit.conformance import RULES, check_method
from peftaudit.errors import InputError, UnknownNameError
from peftaudit.models.methods import base as registry
from peftaudit.models.methods import get_method, method_names
from peftaudit.models.module import linear_weight_name
from peftaudit.models.spec import simple_spec
from peftaudit.models.transformer import to_torch
from peftaudit.search.engine import SearchConfig, rigorous_replay, search
from peftaudit.strategies.instances import model_outputs, planted_lora_instance, planted_prompt_instance
from peftaudit.strategies.weights import model_weights
from peftaudit.testing import assert_conforms
from peftaudit.instance import make_instance

FIXTURES = Path(__file__).parent / "fixtures"
pytest.importorskip("peft")  # the test install carries the peft extra (README); without it these skip


@pytest.fixture(scope="module", autouse=True)
def user_methods():
    sys.path.insert(0, str(FIXTURES))
    yield
    sys.path.remove(str(FIXTURES))


SPECS = [simple_spec(3), simple_spec(4, layers=2, heads=2, attention="causal", positions=3, mlp="plain")]


@pytest.mark.parametrize("spec", SPECS, ids=["1L1H", "2L2H-causal"])
@pytest.mark.parametrize("targets", ["v", "q,k,v,o,1,2"])
def test_peft_lora_equals_the_own_lora_for_the_same_factors(spec, targets):
    """peft computes W x + s B (A x) with s = lora_alpha / r; the own LoRA W + B A takes s B."""
    if "o" in targets and not spec.layers[0].heads[0].has_wo:
        targets = "q,k,v,1,2"
    rng = np.random.default_rng(0)
    B, rank, alpha = 3, 2, 3.0
    params = to_torch(model_weights(rng, spec), batch=B)
    X = torch.as_tensor(rng.normal(size=(B, 2, 3, spec.d)))
    guest, own = get_method("peft-lora", targets=targets, alpha=alpha), get_method("lora", targets=targets)
    tensors = guest.init(spec, B, rank, torch.Generator().manual_seed(1))
    assert guest.param_count(spec, rank) == own.param_count(spec, rank)
    mine = {}
    for key, value in tensors.items():
        weight = linear_weight_name(key.split(".lora_")[0])
        mine[weight + (".A" if ".lora_A." in key else ".B")] = value * (alpha / rank if ".lora_B." in key else 1)
    a, b = guest.outputs(spec, params, tensors, X), own.outputs(spec, params, mine, X)
    assert float((a - b).abs().max()) <= 1e-12 * max(1.0, float(b.abs().max()))


def test_peft_guests_search_planted_lora_and_their_solutions_replay_exactly():
    rng = np.random.default_rng(3)
    insts = [planted_lora_instance(rng, 4, 1) for _ in range(3)]
    config = SearchConfig(method="peft-lora", sizes=(1,), restarts=4, steps=100, polish_steps=40, device="cpu")
    attempts = search(insts, config, progress=False)
    assert all(a.solved for a in attempts)
    method = get_method("peft-lora")
    for a in attempts:
        lo, hi = rigorous_replay(method, insts[a.instance], a.adapter)
        assert lo <= a.max_abs_error * 2 + 1e-15 and hi <= 1e-8
    for name in ("peft-dora", "peft-ia3", "peft-lokr"):  # they run; what they find is stated as found (method cards)
        found = search(insts[:1], SearchConfig(method=name, sizes=(1,), restarts=2, steps=20, polish_steps=20,
                                               device="cpu"), progress=False)
        assert found and np.isfinite(found[0].best_loss) and found[0].params == get_method(name).param_count(
            insts[0].spec, 1)


@pytest.mark.parametrize("claim", ["L1", "L1+", "L2"])
def test_the_weight_space_contrasts_also_succeed_with_peft_lora(claim):
    result = run_audit([claim], methods=["peft-lora"], calibration=False, progress=False, quiet=True, cards=False)
    c = result.report["claims"][0]
    rows = c["comparisons"]["peft-lora@1,2,4"]
    active = c["instances"] - c["vacuous"]
    solved = {r["instance"] for r in rows if r["solved"]}
    assert len(solved) == active, rows
    assert c["verdict"] == "CERTIFIED"


def test_registry_names_guests_and_plugins_and_refuses_bad_ones():
    assert {"peft-lora", "peft-dora", "peft-ia3", "peft-lokr"} <= set(method_names())
    with pytest.raises(UnknownNameError, match="package.module:Name"):
        get_method("no-such-method")
    with pytest.raises(InputError, match="importable"):
        get_method("no_such_package.mod:Thing")
    with pytest.raises(InputError, match="lacks"):
        get_method("user_methods:not_a_method")  # a callable, but what it returns is no method
    method = get_method("user_methods:PromptModule")
    assert method.param_count(simple_spec(3), 2) == 6
    with pytest.raises(InputError, match="has no size"):
        get_method("peft-ia3").init(simple_spec(3), 1, 2, torch.Generator())


def test_entry_point_plugins_are_registered(installed_entry_point, monkeypatch):
    installed_entry_point("peftaudit.methods", "demo-prompt = user_methods:PromptModule")
    monkeypatch.setattr(registry, "_loaded", False)
    assert "demo-prompt" in method_names()
    assert get_method("demo-prompt").kind == "input-space"
    registry.unregister_method("demo-prompt")


def test_cli_searches_and_replays_a_plugin_method(tmp_path, capsys):
    rng = np.random.default_rng(5)
    inst_file = tmp_path / "inst.json"
    from peftaudit.instance import save
    save(planted_prompt_instance(rng, 3, 1), inst_file)
    adapter = tmp_path / "a.json"
    assert main(["search", str(inst_file), "--method", "user_methods:PromptModule", "--sizes", "1",
                 "--out", str(adapter)]) == 0
    registry.unregister_method("user_methods:PromptModule")
    capsys.readouterr()
    assert main(["replay", str(inst_file), str(adapter)]) == 2  # adapter files never import code
    assert "never import code" in capsys.readouterr().err
    assert main(["replay", str(inst_file), str(adapter), "--method", "user_methods:PromptModule"]) == 0
    assert "memorizes" in capsys.readouterr().out


@pytest.mark.parametrize("name,rule", [
    ("WrongCount", "the parameter count matches the trainable tensors"),
    ("LeakyFrozen", "only the declared parameters receive gradients"),
    ("NondeterministicInit", "the same seed gives the same result"),
    ("WrongShape", "outputs have shape (B, E, n, d) and are finite"),
    ("NaNOutputs", "outputs have shape (B, E, n, d) and are finite"),
    ("SloppyJacobianLoRA", "an offered Jacobian is the outputs' own"),
])
def test_broken_plugins_are_caught_with_the_rule_they_broke(name, rule):
    results = {r.rule: r for r in check_method(f"user_methods:{name}")}
    assert not results[rule].ok
    with pytest.raises(AssertionError, match="conformance rule"):
        assert_conforms(f"user_methods:{name}")


def test_good_plugins_conform():
    for name in ("GatedValues", "PromptModule"):
        assert all(r.ok for r in assert_conforms(f"user_methods:{name}"))


def test_pytest_option_runs_one_item_per_rule(pytester):
    pytester.syspathinsert(str(FIXTURES))
    ok = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--peftaudit-conformance", "user_methods:GatedValues",
                                      "-rs")
    ok.assert_outcomes(passed=len(RULES) - 3, skipped=3)  # abilities it lacks judge nothing: skipped, not passed
    ok.stdout.fnmatch_lines(["*SKIP*no exact model declared*", "*SKIP*no Jacobian offered*"])
    bad = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--peftaudit-conformance", "user_methods:WrongCount")
    assert bad.ret != 0
    bad.stdout.fnmatch_lines(["*breaks the rule 'the parameter count matches the trainable tensors'*"])


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_a_broken_user_method_is_an_error_for_that_method_and_the_audit_goes_on(tmp_path):
    methods = ["prompt", "user_methods:Raising", "user_methods:WrongShape", "user_methods:PromptModule",
               "user_methods:GatedValues", "user_methods:WrongCount", "user_methods:NaNOutputs"]
    result = run_audit(["L1"], methods=methods, out=tmp_path / "r", calibration=False, progress=False, quiet=True,
                       cards=False)
    c = result.report["claims"][0]
    assert c["verdict"] == "CERTIFIED", c["reason"]
    assert set(c["method_errors"]) == {"user_methods:Raising@1", "user_methods:WrongShape@1",
                                       "user_methods:WrongCount@1", "user_methods:NaNOutputs@1"}
    assert "parameter count" in c["method_errors"]["user_methods:WrongCount@1"]
    assert "NaN" in c["method_errors"]["user_methods:NaNOutputs@1"]
    assert "broken on purpose" in c["method_errors"]["user_methods:Raising@1"]
    assert "outputs have shape" in c["method_errors"]["user_methods:WrongShape@1"]
    assert "user_methods:PromptModule" in c["search"]  # input-space: inherits L1, searched as a falsifier
    assert "user_methods:GatedValues@1" in c["comparisons"]  # weight-space: reported for context
    assert "**ERROR**" in (tmp_path / "r" / "report.md").read_text()


def test_an_inherited_claim_is_searched_within_its_own_terms():
    """An input-space method stands in for prompt tuning at the prompt falsifier's sizes and norm
    bound: L2 rules out prompts shorter than N only, M bounds the tokens' norms."""
    from peftaudit.evidence.gather import added_runs
    from peftaudit.claims import get_claim
    from peftaudit.settings import get_profile

    prof = get_profile("quick")
    falsifiers, comparisons = added_runs(get_claim("L2"), ["user_methods:PromptModule", "peft-lora"], prof)
    assert [(r.method, r.sizes) for r in falsifiers] == [("user_methods:PromptModule", (1,))]
    assert [r.method for r in comparisons] == ["peft-lora"]
    falsifiers, comparisons = added_runs(get_claim("M"), ["user_methods:PromptModule"], prof)
    assert not falsifiers and [r.method for r in comparisons] == ["user_methods:PromptModule"]  # cannot project


def _false_claim(method: str, planted_prompt: bool = False) -> Claim:
    """A false claim: `method` cannot reproduce the model's own outputs (its identity start can),
    or, planted_prompt, the outputs under a hidden length-1 prompt."""
    def draw(profile, seed):
        rng = np.random.default_rng(seed)
        if planted_prompt:
            return [planted_prompt_instance(rng, 3, 1, targets="last") for _ in range(2)]
        out = []
        for _ in range(2):
            spec = simple_spec(3)
            weights = model_weights(rng, spec)
            X = rng.normal(size=(2, 2, 3))
            out.append(make_instance(spec, weights, list(zip(X, model_outputs(spec, weights, X)))))
        return out
    return Claim(id=f"FALSE-OWN-{method}", title="false on purpose", source="tests", formalization="-",
                 kind="cannot", draw=draw, hypotheses=lambda inst: None, falsifiers=(MethodRun(method, {}, (1,)),))


def test_float_solutions_of_a_method_without_an_exact_model_never_refute():
    result = run_audit([_false_claim("user_methods:GatedValues")], calibration=False, progress=False, quiet=True)
    c = result.report["claims"][0]
    assert any(r["solved"] for r in c["search"]["user_methods:GatedValues@1"])
    assert c["verdict"] == "SURVIVED" and "not confirmed" in c["reason"]
    exact = run_audit([_false_claim("user_methods:PromptModule", planted_prompt=True)], calibration=False,
                      progress=False, quiet=True)
    assert exact.report["claims"][0]["verdict"] == "REFUTED"
