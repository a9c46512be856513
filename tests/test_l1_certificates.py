"""L1 / L1+ certificates: completeness on the L1 family, tampering, and soundness by planting."""

import copy
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from peftaudit.cli import main
from peftaudit.instance import digest, from_dict, save
from peftaudit.models.transformer import forward, to_torch
from peftaudit.strategies.hyp import l1_instances
from peftaudit.strategies.instances import l1_instance, planted_lora_instance, planted_prompt_instance
from peftaudit.verify.checkers import MalformedCertificate, check_certificate
from peftaudit.verify.encoders.l1 import certify


@given(l1_instances(d=st.integers(2, 6)), st.sampled_from(["L1", "L1+"]))
def test_l1_family_is_certified_and_the_certificate_checks(inst, claim):
    result = certify(inst, claim)
    assert result.status == "certified", result.reason
    assert result.margin > 1e-9
    verdict = check_certificate(json.loads(json.dumps(result.certificate)))
    assert verdict.valid and verdict.margin >= result.margin


def test_parallel_rays_have_no_robust_l1_margin_but_l1_plus_has_one():
    inst = l1_instance(np.random.default_rng(2), 2, "parallel")
    assert certify(inst, "L1", normaliser=False).status == "not-certified"
    plus = certify(inst, "L1+")
    assert plus.status == "certified" and check_certificate(plus.certificate).valid
    # L1 tries both relaxations: the shared normaliser certifies it, as an L1 certificate that says so
    l1 = certify(inst, "L1")
    assert l1.status == "certified" and l1.certificate["claim"] == "L1" and l1.certificate["shared_normaliser"]
    assert check_certificate(l1.certificate).valid
    lying = copy.deepcopy(l1.certificate)
    del lying["shared_normaliser"]  # the same multipliers read in the plain system do not prove it
    assert not check_certificate(lying).valid


def _number_paths(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _number_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _number_paths(v, path + (i,))
    elif isinstance(obj, (int, float, str)) and not isinstance(obj, bool) and path and path[0] != "info":
        yield path


def _tamper_targets(cert):
    """Numbers the proof depends on (a weight that the proof never reads may change harmlessly)."""
    keep = []
    for path in _number_paths(cert):
        head = path[0]
        if head in ("delta", "margin", "data", "multipliers", "logit_shift"):
            keep.append(path)
        elif head == "instance" and path[1] == "dataset" and path[2] in cert["members"]:
            keep.append(path)
        elif head == "instance" and "Wv" in path:
            keep.append(path)
    return keep


@pytest.fixture(scope="module")
def certificates():
    out = []
    for seed, (variant, claim) in enumerate([("skew", "L1"), ("exact", "L1"), ("skew", "L1+"), ("parallel", "L1+")]):
        result = certify(l1_instance(np.random.default_rng(seed), 3, variant), claim)
        assert result.status == "certified"
        out.append(result.certificate)
    return out


def _nudge(value, path):
    """A change that can only weaken the proof: larger delta/margin, tighter boxes, other data."""
    from fractions import Fraction
    x = Fraction(value) if isinstance(value, str) else Fraction(value)
    field = path[-2] if isinstance(path[-1], int) else path[-1]
    if field in ("a_hi", "S_hi"):
        x -= 1
    elif field in ("delta", "margin"):
        x = x * 2 + 1
    elif field == "c" or path[0] == "instance":
        x += 10
    else:
        x += 1
    return f"{x.numerator}/{x.denominator}" if isinstance(value, str) else float(x)


@given(st.data())
def test_tampering_with_any_number_invalidates(certificates, data):
    cert = copy.deepcopy(data.draw(st.sampled_from(certificates)))
    path = data.draw(st.sampled_from(_tamper_targets(cert)))
    node = cert
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = _nudge(node[path[-1]], path)
    if path[0] == "instance":  # a tamperer recomputes the binding; the mathematics must still fail
        cert["instance_sha256"] = digest(from_dict(cert["instance"]))
    try:
        assert not check_certificate(cert).valid, path
    except MalformedCertificate:
        pass


def test_check_certificate_cli_exit_codes(tmp_path, certificates, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(certificates[0]))
    assert main(["check-certificate", str(good)]) == 0
    bad = copy.deepcopy(certificates[0])
    bad["multipliers"]["E"][0][0] = "12345/7"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["check-certificate", str(tmp_path / "bad.json")]) == 1
    (tmp_path / "junk.json").write_text('{"format": "peftaudit.certificate/1"}')
    assert main(["check-certificate", str(tmp_path / "junk.json")]) == 2
    (tmp_path / "nojson.json").write_text("{{{")
    assert main(["check-certificate", str(tmp_path / "nojson.json")]) == 2


def test_certify_cli_json_and_exit_codes(tmp_path, capsys):
    path = tmp_path / "l1.json"
    save(l1_instance(np.random.default_rng(0), 3), path)
    assert main(["certify", str(path), "--json", "--out", str(tmp_path / "cert.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "certified" and out["margin"] > 1e-9 and out["claim"] == "L1"
    assert set(out) >= {"claim", "status", "margin", "best_error", "reason"}
    assert main(["check-certificate", str(tmp_path / "cert.json")]) == 0
    capsys.readouterr()
    save(planted_prompt_instance(np.random.default_rng(0), 3, 2, targets="last"), path)
    assert main(["certify", str(path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "not-certified"
    save(planted_prompt_instance(np.random.default_rng(0), 3, 2, layers=2), path)
    assert main(["certify", str(path), "--json"]) == 3
    assert main(["certify", str(path), "--tolerance", "-1"]) == 2


def _planted(seed):
    rng = np.random.default_rng(seed)
    d = int(rng.choice([2, 3, 4, 6]))
    if seed % 10 == 9:
        return planted_lora_instance(rng, d), "L1" if seed % 20 == 9 else "L1+"  # rank-1 LoRA: prompts may fail
    mlp = "plain" if seed % 5 == 0 else "residual"
    attention = "causal" if seed % 3 == 0 else "encoder"
    inst = planted_prompt_instance(rng, d, int(rng.integers(1, 5)), mlp=mlp, attention=attention,
                                   targets="last" if seed % 2 else "all", tokens=int(rng.integers(2, 4)))
    return inst, "L1+" if seed % 4 < 2 else "L1"


def _last_token_error(inst, prompt):
    X = torch.as_tensor(inst.inputs())[None]
    out = forward(inst.spec, to_torch(inst.weights), X, prompt=torch.as_tensor(prompt)[None])[0].numpy()
    return max(np.abs(out[e, -1] - ex.Y[-1]).max() for e, ex in enumerate(inst.dataset))


@pytest.mark.parametrize("chunk", [*range(2), *(pytest.param(c, marks=pytest.mark.slow) for c in range(2, 20))])
def test_planted_prompt_instances_are_never_certified(chunk):  # two chunks in the fast lane, all in the full run
    """1000 planted instances over d, prompt length, both MLP kinds, both masks: none certified."""
    for seed in range(chunk * 50, chunk * 50 + 50):
        inst, claim = _planted(seed)
        result = certify(inst, claim)
        planted = inst.meta["planted"]
        if planted["method"] == "prompt":
            assert result.status != "certified", (seed, result.reason)
            assert _last_token_error(inst, np.array(planted["prompt"])) < 1e-9
        elif result.status == "certified":  # a LoRA-planted instance may be prompt-unmemorizable
            assert check_certificate(result.certificate).valid


@given(l1_instances(d=st.integers(2, 5)), st.integers(1, 6), st.floats(-8, 8), st.integers(0, 2**31))
def test_no_prompt_beats_a_certified_margin(inst, length, log_scale, seed):
    """Random prompts of every scale, including huge values with tiny attention weight."""
    result = certify(inst, "L1")
    rng = np.random.default_rng(seed)
    prompts = rng.normal(size=(64, length, inst.spec.d)) * np.exp(log_scale)
    for prompt in prompts:
        assert _last_token_error(inst, prompt) >= float(result.margin)


def _rng_d(seed):
    return np.random.default_rng(seed), int(np.random.default_rng(seed).integers(2, 5))


@pytest.fixture(scope="module")
def piece_certificate():
    from peftaudit.verify.encoders.l1 import _certify_plain, _group, _problem_data
    rng, _ = _rng_d(1)
    inst = l1_instance(rng, int(np.random.default_rng(1).integers(2, 5)), "parallel")
    result = certify(inst, "L1+")
    plain = _certify_plain(inst, "L1+", _problem_data(inst, _group(inst)), 1e-9, 60_000)
    return inst, result, plain


def test_normaliser_bound_certificates_check_and_sharpen_the_margin(piece_certificate):
    inst, result, plain = piece_certificate
    assert result.status == "certified" and "pieces" in result.certificate
    assert check_certificate(json.loads(json.dumps(result.certificate))).valid
    assert plain.margin is None or result.margin > plain.margin
    rng = np.random.default_rng(0)
    for log_scale in (-4, 0, 2, 5):
        for prompt in rng.normal(size=(32, 3, inst.spec.d)) * np.exp(log_scale):
            assert _last_token_error(inst, prompt) >= float(result.margin)


@pytest.mark.parametrize("field", ["sigma_max", "z_hi", "z_lo", "Zhi", "Sig", "E"])
def test_tampering_with_pieces_invalidates(piece_certificate, field):
    cert = copy.deepcopy(piece_certificate[1].certificate)
    pieces = cert["pieces"]
    if field == "sigma_max":
        piece = next(p for p in pieces if p["sigma_max"] is not None)
        piece["sigma_max"] = "0/1"
    elif field == "z_hi":
        pieces[0]["z_hi"] = _nudge(pieces[0]["z_hi"], ("z_hi",))
    elif field == "z_lo":
        pieces[-1]["z_lo"] = _nudge(pieces[-1]["z_lo"], ("z_lo",))
    else:
        piece = next(p for p in pieces if field in p["multipliers"])
        value = piece["multipliers"][field]
        if isinstance(value, list):
            value[0][0] = _nudge(value[0][0], ("E", 0))
        else:
            piece["multipliers"][field] = _nudge(value, (field,))
    assert not check_certificate(cert).valid


@given(st.integers(2, 5), st.sampled_from(["low-rank", "ill-conditioned"]), st.sampled_from(["L1", "L1+"]),
       st.integers(0, 2**31))
def test_degenerate_value_maps_are_handled_soundly(d, kind, claim, seed):
    """Low-rank or ill-conditioned W_v: float LPs can fake null directions; only exact checks count."""
    from peftaudit.strategies.weights import low_rank_matrix, spectrum_matrix
    rng = np.random.default_rng(seed)
    V = (low_rank_matrix(rng, d, d, max(1, d // 2)) if kind == "low-rank"
         else spectrum_matrix(rng, np.logspace(0, -9, d)))
    inst = l1_instance(rng, d, "skew", value_map=V)
    result = certify(inst, claim)
    assert result.status in ("certified", "not-certified", "unknown")
    if result.status == "certified":
        assert check_certificate(result.certificate).valid
        for scale in (1e-2, 1.0, 1e3):
            for prompt in rng.normal(size=(16, 2, d)) * scale:
                assert _last_token_error(inst, prompt) >= float(result.margin)
