"""Any peft config as a guest (`peft:XConfig`, its fields as options): LoHa memorizes a planted
rank-1 LoRA instance; OFT, BOFT, FourierFT, HRA and AdaLoRA on v run with no traceback (their
modules, which torch.func refuses, run problem by problem with Jacobians by plain autograd);
VeRA is refused naming why; AdaLoRA's ranknum stays frozen."""

import json

import numpy as np
import pytest
import torch

from peftaudit.cli import main
from peftaudit.errors import InputError
from peftaudit.instance import save
from peftaudit.models.methods import get_method
from peftaudit.models.spec import simple_spec
from peftaudit.strategies.instances import planted_lora_instance

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("peft") / "planted.json"
    save(planted_lora_instance(np.random.default_rng(1), 4, 1), path)
    return path


def test_loha_memorizes_a_planted_rank_one_lora_instance(planted, capsys):
    code = main(["search", str(planted), "--method", "peft:LoHaConfig", "--option", "r=2", "--option",
                 "target_modules=v_proj", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and any(r["solved"] for r in out["results"])


@pytest.mark.parametrize("config,options", [("OFTConfig", ["--sizes", "1,2"]), ("BOFTConfig", ["--sizes", "1,2"]),
                                            ("FourierFTConfig", ["--sizes", "2"]), ("AdaLoraConfig", ["--sizes", "1"]),
                                            ("HRAConfig", ["--sizes", "2"])])
def test_configs_torch_func_refuses_or_not_run_without_a_traceback(planted, config, options, capsys):
    code = main(["search", str(planted), "--method", f"peft:{config}", "--option", "target_modules=v", *options,
                 "--restarts", "1", "--steps", "20", "--polish-steps", "20"])
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err[-500:]
    assert "Traceback" not in captured.err and "internal error" not in captured.err


def test_refusals_are_detected_once_when_prepared_and_named():
    spec = simple_spec(4)
    assert get_method("peft:LoraConfig").refusal(spec, 1) == ""  # vmap runs it: the fast path
    assert "setup_context" in get_method("peft:LoHaConfig").refusal(spec, 1)
    assert "index_put_" in get_method("peft:OFTConfig").refusal(spec, 1)


def test_the_loop_path_equals_the_vmapped_path():
    """The same module on both paths: outputs and Jacobians agree (the fallback is the same maths)."""
    from peftaudit.search.optimize import autograd_jacobian, jacobian

    method, spec = get_method("peft:LoraConfig"), simple_spec(4)
    inst = planted_lora_instance(np.random.default_rng(2), 4, 1)
    from peftaudit.search.problems import stacked
    W, X, Y = stacked([inst] * 3, [0, 1, 2], torch.device("cpu"))
    trainable = method.init(spec, 3, 1, torch.Generator().manual_seed(0))
    fast = method.outputs(spec, W, trainable, X)
    prepared = method.prepare(spec, 1)
    from dataclasses import replace
    method.__dict__["_prepared"][(spec, 1)] = replace(prepared, refusal="forced for the test")
    slow = method.outputs(spec, W, trainable, X)
    assert torch.allclose(fast, slow, atol=1e-12)
    from peftaudit.search.optimize import flat, unflat
    theta = flat(trainable)
    res = lambda t: (method.outputs(spec, W, unflat(t, trainable), X) - 0).reshape(3, -1)  # noqa: E731
    method.__dict__["_prepared"][(spec, 1)] = prepared
    J_fast = jacobian(res, theta, res(theta).shape[1])
    method.__dict__["_prepared"][(spec, 1)] = replace(prepared, refusal="forced for the test")
    J_slow = autograd_jacobian(res, theta, res(theta).shape[1])
    assert torch.allclose(J_fast, J_slow, atol=1e-10)


def test_vera_is_refused_naming_why_and_unknown_fields_are_listed():
    with pytest.raises(InputError, match="inject_adapter_in_model refuses it"):
        get_method("peft:VeraConfig")
    with pytest.raises(InputError, match="fields of LoHaConfig"):
        get_method("peft:LoHaConfig", bogus=1)
    with pytest.raises(InputError, match="a peft config class"):
        get_method("peft:NoSuchConfig")
    with pytest.raises(InputError, match="module names"):
        get_method("peft:LoHaConfig", target_modules=7)


def test_adalora_ranknum_is_frozen_and_the_size_is_its_natural_field():
    method, spec = get_method("peft:AdaLoraConfig"), simple_spec(4)
    trainable = method.prepare(spec, 2).trainable
    assert trainable and not any("ranknum" in k for k in trainable)
    assert method.size_name == "init_r" and method.param_count(spec, 2) == 2 * 4 + 4 * 2 + 2  # A, B, E
    fixed = get_method("peft:LoHaConfig", r=2)  # the size given as an option: one size
    assert fixed.sized is False and fixed.param_count(spec, 1) == get_method("peft:LoHaConfig").param_count(spec, 2)


def test_conformance_says_a_shared_failure_once():
    from peftaudit.conformance import check_method

    results = check_method("peft:LoHaConfig", {"target_modules": "x_proj"})
    failed = [r for r in results if not r.ok]
    assert failed and "expected names among" in failed[0].detail
    assert all(r.detail.startswith("the same failure as rule") for r in failed[1:])
