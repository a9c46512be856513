"""The batched search: it finds planted solutions, replays honestly, and never beats a certificate."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peftaudit.cli import main
from peftaudit.errors import InputError
from peftaudit.instance import save
from peftaudit.search.calibrate import calibrate
from peftaudit.search.engine import SearchConfig, search
from peftaudit.strategies.hyp import l1_instances
from peftaudit.strategies.instances import planted_lora_instance, planted_prompt_instance
from peftaudit.verify.encoders.l1 import certify

FAST = dict(restarts=4, steps=200, polish_steps=30, rounds=2)


def test_search_finds_planted_prompts_and_replays_them():
    rng = np.random.default_rng(5)
    insts = [planted_prompt_instance(rng, d, 2, targets="last") for d in (2, 3, 3, 4)]
    attempts = search(insts, SearchConfig(sizes=(2,), **FAST), progress=False)
    assert len(attempts) == 4
    assert sum(a.solved for a in attempts) >= 3
    for a in attempts:
        assert a.params == 2 * insts[a.instance].spec.d
        assert a.solved == (a.max_abs_error <= 1e-8)


def test_lora_finds_planted_rank_one_lora():
    rng = np.random.default_rng(6)
    insts = [planted_lora_instance(rng, d) for d in (2, 4)]
    attempts = search(insts, SearchConfig(method="lora", options={"targets": "v"}, sizes=(1,), **FAST), progress=False)
    assert all(a.solved for a in attempts)


@settings(max_examples=4)
@given(l1_instances(d=st.integers(2, 4)))
def test_no_search_result_beats_a_certified_margin(inst):
    result = certify(inst, "L1")
    assert result.status == "certified"
    for method, sizes in (("prompt", (1, 2, 4)), ("prefix-kv", (1,))):
        attempts = search([inst], SearchConfig(method=method, sizes=sizes, restarts=2, steps=100, polish_steps=10,
                                               rounds=1), progress=False)
        if method == "prompt":  # the certificate speaks about prompts of every length
            assert all(a.max_abs_error >= float(result.margin) for a in attempts)


def test_cli_search_writes_an_adapter_that_replays(tmp_path, capsys):
    inst_path, ad_path = tmp_path / "p.json", tmp_path / "ad.json"
    save(planted_prompt_instance(np.random.default_rng(3), 4, 2), inst_path)
    code = main(["search", str(inst_path), "--lengths", "2", "--out", str(ad_path), "--json", "--steps", "200"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["method"] == "prompt"
    assert out["results"][0]["length"] == 2 and out["results"][0]["max_abs_error"] <= 1e-8
    assert main(["replay", str(inst_path), str(ad_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["memorizes"] is True
    doc = json.loads(ad_path.read_text())
    doc["tensors"]["prompt"][0][0] += 0.5
    ad_path.write_text(json.dumps(doc))
    assert main(["replay", str(inst_path), str(ad_path)]) == 1
    doc["tensors"]["prompt"] = [[1.0]]
    ad_path.write_text(json.dumps(doc))
    assert main(["replay", str(inst_path), str(ad_path)]) == 2


def test_bad_search_arguments_are_rejected_before_work():
    with pytest.raises(InputError, match="restarts"):
        SearchConfig(restarts=0).validate()
    with pytest.raises(InputError, match="sizes"):
        SearchConfig(sizes=()).validate()
    with pytest.raises(InputError, match="method"):
        SearchConfig(method="adapterX").validate()
    with pytest.raises(InputError, match="norm_bound"):
        SearchConfig(norm_bound=-1.0).validate()
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            SearchConfig(device="cuda").validate()


def test_chunking_keeps_one_result_per_instance_and_respects_norm_bounds():
    rng = np.random.default_rng(8)
    insts = [planted_prompt_instance(rng, 3, 1) for _ in range(5)]
    attempts = search(insts, SearchConfig(sizes=(1, 2), restarts=2, steps=20, polish_steps=2, rounds=1,
                                          max_memory_mb=1, norm_bound=0.5), progress=False)
    assert [(a.instance, a.size) for a in attempts] == [(i, s) for i in range(5) for s in (1, 2)]
    for a in attempts:
        assert np.linalg.norm(a.adapter["prompt"], axis=-1).max() <= 0.5 + 1e-9


def test_calibration_reports_recall():
    cal = calibrate("prompt", 6, SearchConfig(**FAST), dims=(2, 3), progress=False)
    assert cal.total == 6 and 0 <= cal.solved <= 6
    assert cal.recall >= 0.5
    assert sum(total for _, total in cal.by_group.values()) == 6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_search_solves_planted_and_replays_on_cpu():
    rng = np.random.default_rng(9)
    insts = [planted_prompt_instance(rng, 4, 2) for _ in range(8)]
    attempts = search(insts, SearchConfig(sizes=(2,), device="cuda", **FAST), progress=False)
    assert sum(a.solved for a in attempts) >= 7


def test_batched_replay_matches_single_replay():
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import replay, replay_batch

    rng = np.random.default_rng(11)
    insts = [planted_prompt_instance(rng, 3, 2) for _ in range(3)]
    adapters = {"prompt": rng.normal(size=(3, 2, 3))}
    losses, errors = replay_batch(get_method("prompt"), insts, [0, 1, 2], adapters)
    for i in range(3):
        loss, err = replay(get_method("prompt"), insts[i], {"prompt": adapters["prompt"][i]})
        assert losses[i] == pytest.approx(loss, rel=1e-12) and errors[i] == pytest.approx(err, rel=1e-12)


def test_finishing_pass_completes_near_misses():
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import Attempt, _finish, replay
    from peftaudit.search.problems import group_instances

    rng = np.random.default_rng(12)
    inst = planted_prompt_instance(rng, 4, 2)
    near = np.array(inst.meta["planted"]["prompt"]) + 1e-7 * rng.normal(size=(2, 4))
    loss, err = replay(get_method("prompt"), inst, {"prompt": near})
    assert 1e-8 < err < 1e-4
    best = {(0, 2): Attempt(0, "prompt", 2, 8, loss, err, False, {"prompt": near})}
    config = SearchConfig(sizes=(2,), polish_steps=20)
    _finish([inst], group_instances([inst]), get_method("prompt"), config, torch.device("cpu"), best, {(0, 2)})
    assert best[(0, 2)].solved and best[(0, 2)].max_abs_error <= 1e-8


def test_damped_step_matches_the_svd_step_and_falls_back_where_the_system_is_singular():
    """Both normal systems (P <= R and P > R) give the SVD's damped step; a singular, undamped
    problem (zero, or with a repeated column: a pivot at rounding level) falls back to the SVD
    instead of returning NaN or a step of size 1e16."""
    from peftaudit.search.optimize import _svd_step, damped_step

    gen = torch.Generator().manual_seed(0)
    for R, P in ((12, 5), (5, 12)):
        J = torch.randn(6, R, P, generator=gen, dtype=torch.float64)
        r = torch.randn(6, R, generator=gen, dtype=torch.float64)
        mu = torch.full((6,), 1e-3, dtype=torch.float64)
        lam = mu * (J.transpose(1, 2) @ J if P <= R else J @ J.transpose(1, 2)).diagonal(dim1=1, dim2=2).amax(1)
        assert torch.allclose(damped_step(J, r, mu), _svd_step(J, r, lam), rtol=1e-9, atol=1e-12)
    J = torch.zeros(2, 4, 3, dtype=torch.float64)
    J[1] = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    step = damped_step(J, torch.ones(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert torch.isfinite(step).all() and torch.equal(step[0], torch.zeros(3, dtype=torch.float64))
    J = torch.randn(1, 6, 3, generator=gen, dtype=torch.float64)
    J[0, :, 2] = J[0, :, 1] + 1e-7 * J[0, :, 0]                        # J^T J: a pivot at rounding level, not 0
    r = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    assert torch.allclose(damped_step(J, r, zero), _svd_step(J, r, zero), rtol=1e-9, atol=1e-12)


def test_batched_jacobian_matches_per_problem_jacobians_in_both_modes():
    """One vmap level over tangents (P <= R) or cotangents (P > R) gives every problem's own Jacobian."""
    from peftaudit.search.optimize import jacobian

    gen = torch.Generator().manual_seed(1)
    for P, R in ((3, 7), (7, 3)):
        A = torch.randn(5, R, P, generator=gen, dtype=torch.float64)
        theta = torch.randn(5, P, generator=gen, dtype=torch.float64)

        def residuals(t):  # (b,P) -> (b,R), nonlinear, independent per problem
            return torch.tanh((A @ t.unsqueeze(2)).squeeze(2)) + t.square().sum(1, keepdim=True)

        J = jacobian(residuals, theta, R)
        per_problem = torch.stack([torch.func.jacfwd(lambda t, b=b: residuals(t[None].expand(5, P))[b])(theta[b])
                                   for b in range(5)])
        assert J.shape == (5, R, P) and torch.allclose(J, per_problem, rtol=1e-12, atol=1e-14)


def test_jacobians_in_chunks_are_the_whole_batchs_and_a_method_can_supply_them(monkeypatch):
    """_jacobian_at splits a batch into calls of JACOBIAN_CHUNK entries, with each problem's own
    data; a method's own Jacobian (jacobian_of) replaces torch.func's, chunked alike."""
    from peftaudit.search import optimize

    gen = torch.Generator().manual_seed(4)
    b, R, P = 7, 5, 3
    A = torch.randn(b, R, P, generator=gen, dtype=torch.float64)
    theta = torch.randn(b, P, generator=gen, dtype=torch.float64)

    def residuals(t, A_b):  # (b,P) -> (b,R) with each problem's own matrix
        return torch.tanh((A_b @ t.unsqueeze(2)).squeeze(2))

    def jacobian_of(t, A_b):  # the same Jacobian, written out: diag(1 - tanh^2) A
        return (1 - residuals(t, A_b).square()).unsqueeze(2) * A_b

    whole = optimize._jacobian_at(residuals, theta, (A,), R)
    calls = []
    monkeypatch.setattr(optimize, "JACOBIAN_CHUNK", 2 * R * P)  # two problems a call
    counted = lambda t, A_b: calls.append(t.shape[0]) or jacobian_of(t, A_b)  # noqa: E731
    for supplied in (None, counted):
        chunked = optimize._jacobian_at(residuals, theta, (A,), R, supplied)
        assert torch.allclose(chunked, whole, rtol=1e-12, atol=1e-14)
    assert calls == [2, 2, 2, 1]


def test_levenberg_marquardt_drops_finished_and_stuck_problems_from_the_batch():
    """Solvable problems converge and leave; an unsolvable one (min loss 1) stalls and leaves
    long before the step budget: the batch shrinks, and the best points are returned."""
    from peftaudit.search.optimize import levenberg_marquardt

    target = torch.tensor([[1.5, 2.0], [3.0, 0.5], [0.5, 0.5]], dtype=torch.float64)  # (3,2)
    offset = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # problem 2 cannot reach zero

    def residuals(theta, tgt, off):  # (b,P=2) -> (b,R=3)
        return torch.cat([theta ** 3 - tgt ** 3, off[:, None]], dim=1)

    sizes = []
    theta, loss, err = levenberg_marquardt(residuals, torch.ones(3, 2, dtype=torch.float64), (target, offset), 400,
                                           done_error=1e-12, on_step=sizes.append)
    assert torch.allclose(theta[:2], target[:2], atol=1e-9) and (err[:2] <= 1e-12).all()
    assert loss[2] == pytest.approx(1.0, abs=1e-9) and err[2] == pytest.approx(1.0)
    assert sizes[0] == 3 and sizes[-1] < 3 and len(sizes) < 100  # compaction, and the stall ends the run


def test_levenberg_marquardt_on_the_cpu_reuses_the_jacobian_of_a_rejected_step(monkeypatch):
    """A rejected step leaves its problem where it was, so its Jacobian is not recomputed: the
    Jacobian rows evaluated are the first step's plus one per accepted step, fewer than the
    problem-steps, and the problems still converge (a Gauss-Newton start on a cubic overshoots)."""
    from peftaudit.search import optimize

    rows = []
    real = optimize.jacobian
    monkeypatch.setattr(optimize, "jacobian", lambda f, theta, R: rows.append(theta.shape[0]) or real(f, theta, R))
    target = torch.tensor([[1.5, 2.0], [3.0, 0.5], [-2.0, 0.7]], dtype=torch.float64)  # (3,2)

    def residuals(theta, tgt):  # (b,P=2) -> (b,R=2)
        return theta ** 3 - tgt ** 3

    steps = []
    theta, _, err = optimize.levenberg_marquardt(residuals, torch.ones(3, 2, dtype=torch.float64), (target,),
                                                 400, done_error=1e-12, mu_start=1e-16, on_step=steps.append)
    assert torch.allclose(theta, target, atol=1e-9) and (err <= 1e-12).all()
    assert rows[0] == 3 and sum(rows) < sum(steps)


def test_damped_step_without_svd_fallback_gives_a_zero_step_where_the_system_is_singular():
    """The CUDA path does not sync to run an SVD: a failed factorization gives a zero (rejected) step."""
    from peftaudit.search.optimize import damped_step

    J = torch.zeros(2, 4, 3, dtype=torch.float64)
    J[1] = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    step = damped_step(J, torch.ones(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                       svd_fallback=False)
    assert torch.equal(step[0], torch.zeros(3, dtype=torch.float64)) and torch.isfinite(step[1]).all()
    assert step[1].abs().sum() > 0


def test_later_rounds_double_the_restarts_of_unsolved_problems():
    """An unsolvable instance (an L1 instance, certified) is retried with 4, 8, 16 restarts."""
    from peftaudit.search import engine
    from peftaudit.strategies.instances import l1_instance

    inst = l1_instance(np.random.default_rng(7), 2)
    assert certify(inst, "L1").status == "certified"
    seen = []
    real = engine._optimize_chunk

    def spy(method, spec, weights, X, *args, **kwargs):
        seen.append(X.shape[0])
        return real(method, spec, weights, X, *args, **kwargs)

    engine._optimize_chunk = spy
    try:
        search([inst], SearchConfig(sizes=(1,), restarts=4, steps=5, polish_steps=5, rounds=3), progress=False)
    finally:
        engine._optimize_chunk = real
    assert seen[:3] == [4, 8, 16]


def test_ill_conditioned_planted_family_is_ill_conditioned_and_solved():
    """The calibration's near-miss family: Jacobian singular values span 1e-6 or more at the planted
    prompt, and the search still finds a replayed solution."""
    from peftaudit.models.methods import get_method
    from peftaudit.models.transformer import to_torch
    from peftaudit.search.optimize import jacobian
    inst = planted_prompt_instance(np.random.default_rng(3), 4, 2, weak=1e-5)
    W, X = to_torch(inst.weights), torch.as_tensor(inst.inputs())[None]
    Y = torch.as_tensor(inst.targets())[None]
    planted = torch.as_tensor(np.array(inst.meta["planted"]["prompt"])).reshape(1, -1)
    method = get_method("prompt")

    def residuals(t):
        return (method.outputs(inst.spec, W, {"prompt": t.reshape(1, 2, 4)}, X)[:, :, -Y.shape[2]:] - Y).reshape(1, -1)

    sv = torch.linalg.svdvals(jacobian(residuals, planted, Y.numel())[0])
    assert sv.min() / sv.max() < 1e-6
    attempts = search([inst], SearchConfig(sizes=(2,), **FAST), progress=False)
    assert attempts[0].solved


def test_calibration_reports_ill_conditioned_groups_and_time():
    cal = calibrate("prompt", 10, SearchConfig(**FAST), dims=(2, 3), progress=False)
    assert any(k.endswith("ill-conditioned") for k in cal.by_group)
    assert cal.seconds > 0 and cal.to_json()["seconds_per_instance"] == pytest.approx(cal.seconds / 10)


@pytest.mark.parametrize("method", ["prompt", "prefix", "prefix-kv"])
def test_every_prompt_like_method_solves_a_planted_one_layer_prompt(method):
    """In one layer a prompt token acts only as a key and a value, so every prompt-like method can
    represent the planted prompt: LM-first search must find a replayed solution with each."""
    inst = planted_prompt_instance(np.random.default_rng(21), 3, 1, targets="last")
    attempts = search([inst], SearchConfig(method=method, sizes=(1,), **FAST), progress=False)
    assert attempts[0].solved


def test_norm_bounded_search_stays_in_the_ball_and_still_solves():
    inst = planted_prompt_instance(np.random.default_rng(22), 3, 1, targets="last")
    bound = 1.01 * float(np.linalg.norm(np.array(inst.meta["planted"]["prompt"]), axis=1).max())
    attempts = search([inst], SearchConfig(sizes=(1,), norm_bound=bound, **FAST), progress=False)
    assert attempts[0].solved
    assert np.linalg.norm(attempts[0].adapter["prompt"], axis=1).max() <= bound * (1 + 1e-12)


def test_lm_keeps_a_problem_whose_damping_is_still_rising():
    """Started as Gauss-Newton (the finishing pass does), the first steps on Rosenbrock's residuals
    are rejected while the damping grows; such a window is not a stall (it once dropped 2 of these 4
    starts, and near misses of planted prompts at d = 32 with them)."""
    import torch

    import peftaudit.search.optimize as O

    def residuals(theta):
        x, y = theta[:, 0], theta[:, 1]
        return torch.stack([10 * (y - x ** 2), 1 - x], dim=1)
    starts = torch.tensor([[-1.2, 1.0], [2.5, -1.0], [0.0, 3.0], [-3.0, -3.0]], dtype=torch.float64)
    _, _, err = O.levenberg_marquardt(residuals, starts, (), 200, done_error=1e-12, stall_fraction=1e-6,
                                      mu_start=O.MU_MIN)
    assert float(err.max()) <= 1e-12
