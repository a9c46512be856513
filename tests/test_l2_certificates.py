"""L2 certificates (robust prompt-length lower bound): completeness, tampering, soundness by planting."""

import copy
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peftaudit.models.transformer import forward, to_torch
from peftaudit.search.engine import SearchConfig, search
from peftaudit.strategies.hyp import rngs
from peftaudit.strategies.instances import l2_instance, planted_prompt_instance
from peftaudit.instance import digest, from_dict
from peftaudit.verify.checkers import check_certificate
from peftaudit.verify.encoders.cells import Budget
from peftaudit.verify.encoders.l2 import certify_l2


def _max_error(inst, prompt):
    X = torch.as_tensor(inst.inputs())[None]
    out = forward(inst.spec, to_torch(inst.weights), X, prompt=torch.as_tensor(prompt)[None])[0].numpy()
    return np.abs(out[:, out.shape[1] - inst.n_targets:, :] - inst.targets()).max()


@st.composite
def l2_instances(draw):
    d = draw(st.integers(4, 8))
    return l2_instance(draw(rngs()), d, draw(st.integers(2, d // 2)),
                       attention=draw(st.sampled_from(["encoder", "causal"])))


@given(l2_instances(), rngs())
def test_l2_family_is_certified_and_no_short_prompt_beats_the_margin(inst, rng):
    result = certify_l2(inst)
    assert result.status == "certified", result.reason
    assert check_certificate(json.loads(json.dumps(result.certificate))).valid
    N = len(result.certificate["positions"])
    for length in range(1, N):
        for scale in (0.1, 1.0, 30.0):
            for prompt in rng.normal(size=(8, length, inst.spec.d)) * scale:
                assert _max_error(inst, prompt) >= float(result.margin)


@settings(max_examples=3)
@given(l2_instances())
def test_search_with_short_prompts_never_beats_an_l2_margin(inst):
    result = certify_l2(inst)
    N = len(result.certificate["positions"])
    attempts = search([inst], SearchConfig(sizes=tuple(range(1, N)), restarts=2, steps=100, polish_steps=10,
                                           rounds=1), progress=False)
    assert all(a.max_abs_error >= float(result.margin) for a in attempts)


@pytest.mark.parametrize("chunk", range(4))
def test_planted_short_prompts_are_never_l2_certified(chunk):
    """Targets made by a prompt of length K: no certificate may claim that prompts shorter than N > K fail."""
    for seed in range(chunk * 25, chunk * 25 + 25):
        rng = np.random.default_rng(seed)
        d = int(rng.integers(4, 9))
        inst = planted_prompt_instance(rng, d, int(rng.integers(1, d // 2)), targets="all", l1_shape=False,
                                       tokens=int(rng.integers(1, 3)), examples=int(rng.integers(2, 4)),
                                       attention="causal" if seed % 2 else "encoder")
        result = certify_l2(inst)
        assert result.status != "certified" or len(result.certificate["positions"]) <= inst.meta["planted"]["length"]


@pytest.mark.parametrize("field", ["mu", "s", "r", "t", "delta", "margin", "c", "a_lo", "a_hi", "X"])
def test_tampering_with_an_l2_certificate_invalidates_it(field):
    cert = copy.deepcopy(certify_l2(l2_instance(np.random.default_rng(0), 6, 3)).certificate)
    from fractions import Fraction

    def bump(value, up=True):
        x = Fraction(value) + (1 if up else -1)
        return f"{x.numerator}/{x.denominator}" if isinstance(value, str) else float(x)
    if field in ("mu", "s", "delta", "margin", "t"):
        cert[field] = bump(cert[field]) if field != "t" else bump(cert[field])
    elif field == "r":
        cert["r"] = "0/1"
    elif field == "X":
        cert["instance"]["dataset"][1]["X"][0][0] += 1.0
        cert["instance_sha256"] = digest(from_dict(cert["instance"]))  # a tamperer rebinds it
    else:
        cert["data"][1][field][0] = bump(cert["data"][1][field][0], up=(field != "a_hi"))
    assert not check_certificate(cert).valid


def test_certify_cli_handles_l2(tmp_path, capsys):
    from peftaudit.cli import main
    from peftaudit.instance import save
    path = tmp_path / "l2.json"
    save(l2_instance(np.random.default_rng(1), 4, 2), path)
    assert main(["certify", str(path), "--claim", "L2", "--json", "--out", str(tmp_path / "c.json")]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "certified"
    assert main(["check-certificate", str(tmp_path / "c.json")]) == 0


@pytest.mark.parametrize("d,att", [(3, "encoder"), (5, "causal"), (8, "encoder")])
def test_lora_variant_is_memorized_by_rank_one_lora_and_never_certified(d, att):
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import replay
    from peftaudit.strategies.instances import l2_lora_instance

    inst = l2_lora_instance(np.random.default_rng(d), d, 2, attention=att)
    planted = inst.meta["planted"]
    name = "layers.0.heads.0.Wv"  # replay the planted update W_v + alpha beta^T as LoRA's B A
    adapter = {name + ".B": np.array(planted["alpha"]).reshape(d, 1), name + ".A": np.array(planted["beta"])[None]}
    _, err = replay(get_method("lora", targets="v"), inst, adapter)
    assert err < 1e-12
    assert certify_l2(inst, pair_budget=Budget(leaves=0)).status != "certified"  # rank [c, a] = N + 1: no Gram margin
    result = certify_l2(inst)
    if result.status == "certified":
        # the structured one-token radius: c_j - a_j = gamma_j alpha with gamma_1 gamma_2 < 0, so no single
        # token serves both positions; then no one-token prompt found may beat the margin
        from fractions import Fraction
        from scipy.optimize import minimize
        gaps = [np.array([float(Fraction(c)) - (float(Fraction(lo)) + float(Fraction(hi))) / 2
                          for c, lo, hi in zip(row["c"], row["a_lo"], row["a_hi"])]) for row in result.certificate["data"]]
        assert float(gaps[0] @ gaps[1]) < 0
        prompt, rng = get_method("prompt"), np.random.default_rng(0)
        for _ in range(20):
            x0 = rng.normal(size=d) * 10 ** rng.uniform(-1, 2)
            found = minimize(lambda p: replay(prompt, inst, {"prompt": p.reshape(1, d)})[1], x0, method="Nelder-Mead")
            assert found.fun >= float(result.margin)


def test_l2_report_carries_the_parameter_table():
    from peftaudit.audit import run_audit

    result = run_audit(["L2-lora"], profile="quick", calibration=False, progress=False, quiet=True)
    claim = result.report["claims"][0]
    assert claim["verdict"] == "SURVIVED"  # exact claim without a robust margin: never CERTIFIED
    rows = claim["parameters"]
    assert rows and all(r["methods"]["lora [targets=v]"]["solved_params"] == 2 * r["d"] for r in rows)
    # the upper side is witnessed: rank-1 LoRA's solutions confirmed by the interval replay of its exact model
    assert all(r["methods"]["lora [targets=v]"]["witnessed_params"] == 2 * r["d"] for r in rows)
    assert all(a["witnessed"] == (a["solved"] and a["witnessed"]) for v in claim["contrasts"].values()
               for a in v["results"])
    assert all(r["methods"]["prompt"]["solved_params"] is None or r["methods"]["prompt"]["solved_params"] >= 2 * r["d"]
               for r in rows)
    # the lower side: checked LV certificates rule out rank 0, so LoRA on W_v needs 2d; it meets the witness
    assert all(r["methods"]["lora [targets=v]"]["certified_lower"] == 2 * r["d"] for r in rows)
    assert all(r["methods"]["lora [targets=v]"]["tight"] and r["methods"]["full"]["certified_lower"] is None
               for r in rows)
