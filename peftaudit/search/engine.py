"""The batched falsification search: instances x restarts x sizes as one tensor program each.

For every group of batchable instances and every size (prompt length or rank), all restarts
of all instances are optimized together in float64: Levenberg-Marquardt from the first step,
dropping problems from the batch as they finish or stall; masked Adam explores from fresh
random points only for the problems LM leaves stuck, and a second LM pass follows. Every
candidate is replayed by the reference forward on the CPU, apart from the optimizer's graph;
reported losses are the replayed ones. Unsolved problems get further rounds with new seeds and
twice the restarts each round, and near misses a long, patient LM finish.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from peftaudit.errors import InputError
from peftaudit.instance import Instance
from peftaudit.limits import MAX_RESTARTS, MAX_SIZE
from peftaudit.models.methods import get_method
from peftaudit.models.methods.abilities import ability, takes_keep
from peftaudit.models.methods.base import Method

from . import optimize as O
from .optimize import adam, flat, levenberg_marquardt, solved_owners, take, unflat
from .problems import bytes_per_problem, group_instances, resolve_device, stacked

DEFAULT_MAX_MEMORY_MB = 2048
SOLVED_MAX_ERROR = 1e-8
FINISH_BAND = 1e4   # near misses: replayed max error within this factor of the tolerance
FINISH_FACTOR = 20  # their finishing pass runs up to this many times the polish steps
FINISH_STALL_FRACTION = 1e-6  # and stops only when a check window gains less than this fraction
PATIENT_SLACK = 10.0  # later rounds drop a problem only if, at its rate, it needs 10x the steps left


@dataclass(frozen=True)
class SearchConfig:
    method: str = "prompt"
    options: dict = field(default_factory=dict)  # e.g. {"targets": "v"} for LoRA
    sizes: tuple[int, ...] = (1, 2, 4)           # prompt lengths or ranks
    restarts: int = 4
    rounds: int = 3                              # retries of unsolved problems: new seeds, 2x restarts
    steps: int = 300                             # Adam steps, for problems LM leaves stuck
    polish_steps: int = 40                       # Levenberg-Marquardt steps per pass (two passes)
    seed: int = 0
    device: str = "auto"
    max_memory_mb: int = DEFAULT_MAX_MEMORY_MB
    norm_bound: float | None = None              # projected bound on prompt/prefix token norms
    tolerance: float = SOLVED_MAX_ERROR          # replayed max error that counts as memorized
    lr: float = 0.05

    def validate(self) -> "SearchConfig":
        for name in ("restarts", "rounds", "max_memory_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(name, value, "a positive integer")
        for name in ("steps", "polish_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(name, value, "an integer >= 0")
        if not self.sizes or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_SIZE
                                 for s in self.sizes):
            raise InputError("sizes", self.sizes, f"one or more integers from 1 to {MAX_SIZE}")
        if self.restarts > MAX_RESTARTS:
            raise InputError("restarts", self.restarts, f"at most {MAX_RESTARTS}")
        if self.norm_bound is not None and not (self.norm_bound > 0 and math.isfinite(self.norm_bound)):
            raise InputError("norm_bound", self.norm_bound, "a finite positive number")
        if not self.tolerance >= 0:
            raise InputError("tolerance", self.tolerance, "a number >= 0")
        get_method(self.method, **self.options)  # unknown names and options fail here, before any work
        resolve_device(self.device)
        return self


@dataclass(frozen=True)
class Attempt:
    """The best replayed result of one method at one size on one instance."""
    instance: int
    method: str
    size: int
    params: int
    best_loss: float       # replayed sum of squared errors
    max_abs_error: float   # replayed max-norm error over all targets
    solved: bool           # max_abs_error <= tolerance
    adapter: dict = field(repr=False, default_factory=dict)  # name -> np.ndarray (one problem)
    options: dict = field(default_factory=dict)
    exact_max_error: tuple[float, float] | None = None  # enclosure of the exact model's max error
    tolerance: float = SOLVED_MAX_ERROR

    @property
    def rigorously_solved(self) -> bool:
        """The exact model's max error is proved <= tolerance (the enclosure's upper end)."""
        return self.exact_max_error is not None and self.exact_max_error[1] <= self.tolerance

    def to_json(self) -> dict:
        out = {"instance": self.instance, "method": self.method, "size": self.size, "params": self.params,
               "best_loss": self.best_loss, "max_abs_error": self.max_abs_error, "solved": self.solved}
        if self.exact_max_error is not None:
            out["exact_max_error"] = list(self.exact_max_error)
        return out


def non_finite(attempts: list[Attempt]) -> list[int]:
    """Instances on which every candidate of every restart replayed to NaN or Inf: the method is
    broken there (its outputs are not numbers), which is its ERROR, never a miss."""
    return sorted({a.instance for a in attempts if not math.isfinite(a.best_loss)})


def _chunk_seed(seed: int, *parts: object) -> int:
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def replay_batch(method: Method, instances: Sequence[Instance], rows: Sequence[int],
                 adapters: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Float64 CPU replay of many candidates at once, from fresh copies of the data (no optimizer
    graph): per row, (sum of squared errors, max abs error); non-finite results become inf."""
    weights, X, Y = stacked(instances, rows, torch.device("cpu"))
    trainable = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in adapters.items()}
    with torch.no_grad():
        out = method.outputs(instances[rows[0]].spec, weights, trainable, X)
    err = (out[:, :, out.shape[2] - Y.shape[2]:, :] - Y).reshape(len(rows), -1).numpy()
    finite = np.isfinite(err).all(axis=1)
    loss = np.where(finite, np.square(np.nan_to_num(err)).sum(axis=1), np.inf)
    return loss, np.where(finite, np.abs(np.nan_to_num(err)).max(axis=1), np.inf)


def replay(method: Method, inst: Instance, adapter: dict[str, np.ndarray]) -> tuple[float, float]:
    """Float64 CPU replay with the reference forward: (sum of squared errors, max abs error)."""
    from peftaudit.models.transformer import to_torch

    params = to_torch(inst.weights)
    trainable = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64)[None] for k, v in adapter.items()}
    X = torch.as_tensor(inst.inputs(), dtype=torch.float64)[None]
    with torch.no_grad():
        out = method.outputs(inst.spec, params, trainable, X)[0].numpy()
    err = out[:, out.shape[1] - inst.n_targets:, :] - inst.targets()
    loss = float(np.square(err).sum())
    return (loss if math.isfinite(loss) else math.inf), float(np.abs(err).max()) if np.isfinite(err).all() else math.inf


EXACT_FITS = "the declared exact model fits the instance"
EXACT_IS_PROMPT = "an input-space method's exact model is a prompt"
EXACT_IN_CLASS = "a declared update class holds"


def exact_model(method: Method, inst: Instance, adapter: dict[str, np.ndarray], *, prompt_only: bool = False,
                update_class: tuple[str, int] | None = None):
    """The method's declared exact model of `adapter` on `inst`, checked before it is believed:
    an ExactAdapter whose every name and shape fits the instance's model, and (`prompt_only`, for
    a method searched as a prompt claim's falsifier) a pure prompt, or (`update_class` = (class, size),
    for a method searched as a claim's falsifier by the update class it declares, e.g. LV's) an update
    of that class (models/exact_shapes.UPDATE_CLASSES). A false declaration is the method's
    MethodContractError naming the rule; NoExactModel passes through."""
    from peftaudit.models.exact_shapes import adapter_mismatch, beyond_prompt, is_pure_prompt
    from peftaudit.models.interval import ExactAdapter
    from peftaudit.models.methods.module_method import MethodContractError, ModuleMethod

    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in adapter.items()}
    exact = method.exact_adapter(arrays, spec=inst.spec) if isinstance(method, ModuleMethod) \
        else method.exact_adapter(arrays)
    name = getattr(method, "name", "?")
    if not isinstance(exact, ExactAdapter):
        raise MethodContractError(name, EXACT_FITS, f"exact gave {type(exact).__name__}, not an ExactAdapter")
    problem = adapter_mismatch(inst.spec, inst.weights, exact)
    if problem:
        raise MethodContractError(name, EXACT_FITS, problem)
    if prompt_only and not is_pure_prompt(exact):
        used = beyond_prompt(exact)
        raise MethodContractError(name, EXACT_IS_PROMPT, f"it declares kind 'input-space' and was searched as a prompt "
                                                        f"claim's falsifier, but its exact model uses {', '.join(used) or 'no prompt'}")
    if update_class is not None:
        from peftaudit.models.exact_shapes import update_class_problem
        problem = update_class_problem(exact, *update_class)
        if problem:
            raise MethodContractError(name, EXACT_IN_CLASS, f"{problem} (searched as a falsifier by its update class "
                                                            f"{update_class[0]!r})")
    return exact


def rigorous_replay(method: Method, inst: Instance, adapter: dict[str, np.ndarray], *,
                    prompt_only: bool = False, update_class: tuple[str, int] | None = None) -> tuple[float, float]:
    """An enclosure [lo, hi] of the exact model's max error over every example (interval arithmetic)."""
    from peftaudit.models.interval import max_error_enclosure

    exact = exact_model(method, inst, adapter, prompt_only=prompt_only, update_class=update_class)
    lo = hi = 0.0
    for ex in inst.dataset:
        a, b = max_error_enclosure(inst.spec, inst.weights, ex.X, ex.Y, exact)
        lo, hi = max(lo, a), max(hi, b)
    return lo, hi


def confirm(attempts: Sequence[Attempt], instances: Sequence[Instance], *,
            one_per_instance: bool = False, prompt_only: bool = False, update_class: str = "") -> list[Attempt]:
    """Attach the exact-model enclosure to every numerically solved attempt (others unchanged). A
    method that declares no exact model (a module method without `exact`) gets none, so its
    float64 solutions never count as counterexamples or witnesses. `one_per_instance`: stop
    replaying an instance's attempts once one is confirmed (a "can" claim needs one witness).
    `prompt_only`: the method was searched as a prompt claim's falsifier; `update_class`: by the
    update class it declares (e.g. 'value-rank' for LV), each adapter then checked to be of that
    class at its size (exact_model)."""
    from peftaudit.models.methods.module_method import NoExactModel

    out, witnessed = [], set()
    for a in attempts:
        if a.solved and not (one_per_instance and a.instance in witnessed):
            method = get_method(a.method, **a.options)
            try:
                a = replace(a, exact_max_error=rigorous_replay(method, instances[a.instance], a.adapter,
                                                               prompt_only=prompt_only,
                                                               update_class=(update_class, a.size) if update_class
                                                               else None))
            except NoExactModel:
                pass
            if a.rigorously_solved:
                witnessed.add(a.instance)
        out.append(a)
    return out


def check_contract(method: Method, spec, size: int, trainable: dict[str, torch.Tensor],
                   weights: dict[str, torch.Tensor], X: torch.Tensor) -> None:
    """The declared parameter count equals the trainable tensors of one problem, and the outputs
    have the inputs' shape (a wrong shape would broadcast against the targets silently)."""
    from peftaudit.models.methods.module_method import MethodContractError

    name = getattr(method, "name", "?")
    with torch.no_grad():
        shape = tuple(method.outputs(spec, {k: v[:1] for k, v in weights.items()},
                                     {k: v[:1] for k, v in trainable.items()}, X[:1]).shape)
    if shape != (1, *X.shape[1:]):
        raise MethodContractError(name, "outputs have shape (B, E, n, d) and are finite",
                                  f"outputs of shape {shape} for inputs of shape {(1, *X.shape[1:])}")
    declared = method.param_count(spec, size)
    actual = sum(t[0].numel() for t in trainable.values())
    if declared != actual:
        raise MethodContractError(name, "the parameter count matches the trainable tensors",
                                  f"param_count says {declared} at {method.size_name} {size}, the tensors hold {actual}")


def _optimize_chunk(method: Method, spec, weights, X, Y, size: int, seed: int, config: SearchConfig,
                    device: torch.device, bar: tqdm | None,
                    start: dict[str, torch.Tensor] | None = None,
                    owners: Sequence[int] | None = None, patient: bool = False) -> dict[str, torch.Tensor]:
    """Levenberg-Marquardt first; the problems it leaves stuck explore with Adam from a fresh
    random point and get a second LM pass. `owners` (the instance of each row) ends all restarts
    of an instance at its first solved one; `patient` (later rounds: the instances that resisted
    the first) judges a problem hopeless only at PATIENT_SLACK times the steps left, not 3x
    (planted prompts at d = 32: 255 of 256 solved, as with no hopeless test at all, against 253
    at 3x; at d = 64, 64 instances: 50 s against 78 s with none). Returns each problem's best
    trainable tensors."""
    k = Y.shape[2]
    gen = torch.Generator().manual_seed(seed)
    template = method.init(spec, X.shape[0], size, gen, dtype=torch.float64, device=device)
    check_contract(method, spec, size, template, weights, X)
    if start is not None:  # a finishing pass: continue from the best point found so far
        template = {name: start[name].to(device=device, dtype=torch.float64) for name in template}
    done_error = config.tolerance * 1e-2  # stop well inside the replay tolerance
    data = (dict(weights), X, Y)

    partial = {"keep": k} if takes_keep(method) else {}  # the target positions only, where it can

    def residuals(theta: torch.Tensor, W: dict, X_b: torch.Tensor, Y_b: torch.Tensor) -> torch.Tensor:
        out = method.outputs(spec, W, unflat(theta, template), X_b, **partial)  # (b,E,k,d) or (b,E,n,d)
        return (out[:, :, out.shape[2] - k:, :] - Y_b).reshape(out.shape[0], -1)  # (b,R)

    jacobian_of = None  # forward mode written out (models/tangents.py), where the method has it and P <= R
    n_params, n_res = sum(t[0].numel() for t in template.values()), Y[0].numel()
    if ability(method, "outputs_and_jacobian") is not None and partial and n_params <= n_res:
        def jacobian_of(theta: torch.Tensor, W: dict, X_b: torch.Tensor, _Y_b: torch.Tensor) -> torch.Tensor:
            return method.outputs_and_jacobian(spec, W, unflat(theta, template), X_b, keep=k)[1]  # (b,R,P)
    refusal = ability(method, "refusal")
    if callable(refusal) and refusal(spec, size):  # torch.func refuses the module: plain autograd, row by row
        def jacobian_of(theta: torch.Tensor, W: dict, X_b: torch.Tensor, Y_b: torch.Tensor) -> torch.Tensor:
            return O.autograd_jacobian(lambda t: residuals(t, W, X_b, Y_b), theta, n_res)  # (b,R,P)

    project = None
    if config.norm_bound is not None:
        def project(theta: torch.Tensor, bound: float = config.norm_bound) -> torch.Tensor:
            tr = {n: t.clone() for n, t in unflat(theta, template).items()}
            method.project(tr, bound)
            return flat(tr)

    theta0 = flat(template).detach()                                      # (B,P)
    if project is not None:
        theta0 = project(theta0)  # start inside the ball
    count = (lambda n: bar.update(n)) if bar is not None else None
    finishing = start is not None  # a finish is patient: it stops only when truly stalled
    stall = FINISH_STALL_FRACTION if finishing else O.STALL_FRACTION
    hopeless = 0.0 if finishing else PATIENT_SLACK if patient else O.HOPELESS_SLACK
    mu_start = O.MU_MIN if finishing else O.MU_START  # near a solution, start as Gauss-Newton
    owner = None if owners is None else torch.as_tensor(list(owners), device=device)  # (B,)
    lm = lambda th, idx: levenberg_marquardt(residuals, th, take(data, idx), config.polish_steps,  # noqa: E731
                                             done_error=done_error, project=project, stall_fraction=stall,
                                             hopeless_slack=hopeless, mu_start=mu_start,
                                             owners=None if owner is None else owner[idx],
                                             jacobian_of=jacobian_of, on_step=count)
    everyone = torch.arange(theta0.shape[0], device=device)
    if owner is None:
        theta, loss, err = lm(theta0, everyone)
    else:  # restarts in two waves: each instance's first start, then the others where it failed
        theta, loss, err = _lm_in_waves(lm, theta0, owner, done_error)
    unsolved = err > done_error                                           # (B,)
    if owner is not None:  # an instance with a solved restart needs no more
        unsolved &= ~solved_owners(owner, ~unsolved)[owner]
    stuck = unsolved.nonzero().squeeze(1)                                 # (s,)
    if config.steps and stuck.numel():
        per_step = (lambda _s, n=stuck.numel(): bar.update(n)) if bar is not None else None
        fresh = flat(method.init(spec, X.shape[0], size, gen, dtype=torch.float64, device=device))[stuck]  # (s,P)
        if project is not None:
            fresh = project(fresh)
        explored, _ = adam(residuals, fresh, take(data, stuck), config.steps, lr=config.lr,
                           done_error=done_error, project=project, on_step=per_step)
        theta2, loss2, _ = lm(explored, stuck)
        better = loss2 < loss[stuck]
        theta[stuck] = torch.where(better[:, None], theta2, theta[stuck])
    return {name: t.detach() for name, t in unflat(theta, template).items()}


def _lm_in_waves(lm, theta0: torch.Tensor, owner: torch.Tensor, done_error: float):
    """LM on the first start of every instance, then on its other starts only where that one
    failed, as a per-instance solver tries its restarts in turn: an easy instance costs one
    start, not all of them. Rows never run keep their start, with infinite loss and error."""
    B = theta0.shape[0]
    first = torch.ones(B, dtype=torch.bool, device=theta0.device)
    first[1:] = owner[1:] != owner[:-1]                                   # (B,) rows of one instance are adjacent
    theta, loss = theta0.clone(), torch.full((B,), math.inf, dtype=theta0.dtype, device=theta0.device)
    err = loss.clone()
    lead = first.nonzero().squeeze(1)                                     # (I,)
    theta[lead], loss[lead], err[lead] = lm(theta0[lead], lead)
    done = solved_owners(owner, err <= done_error)                        # (owners,)
    rest = (~first & ~done[owner]).nonzero().squeeze(1)                   # (s,)
    if rest.numel():
        theta[rest], loss[rest], err[rest] = lm(theta0[rest], rest)
    return theta, loss, err


def _finish(instances, groups, method: Method, config: SearchConfig, device: torch.device,
            best: dict[tuple[int, int], Attempt], pending: set) -> None:
    """Near misses (replayed max error within FINISH_BAND of the tolerance) get a long
    Levenberg-Marquardt pass from their best point: ill-conditioned solutions converge slowly."""
    near = sorted(key for key in pending if best[key].max_abs_error <= config.tolerance * FINISH_BAND)
    if not near or not config.polish_steps:
        return
    finish = replace(config, steps=0, polish_steps=config.polish_steps * FINISH_FACTOR)
    for group in groups:
        for size in config.sizes:
            part = [i for i, s in near if s == size and i in group.indices]
            if not part:
                continue
            weights, X, Y = stacked(instances, part, device)
            start = {name: torch.as_tensor(np.stack([best[(i, size)].adapter[name] for i in part]))
                     for name in best[(part[0], size)].adapter}
            found = _optimize_chunk(method, group.spec, weights, X, Y, size, 0, finish, device, None, start)
            arrays = {name: t.cpu().numpy() for name, t in found.items()}
            losses, errors = replay_batch(method, instances, part, arrays)
            for b, i in enumerate(part):
                if losses[b] < best[(i, size)].best_loss:
                    best[(i, size)] = replace(best[(i, size)], best_loss=float(losses[b]),
                                              max_abs_error=float(errors[b]),
                                              solved=bool(errors[b] <= config.tolerance),
                                              adapter={n: a[b].copy() for n, a in arrays.items()})


def search(instances: Sequence[Instance], config: SearchConfig, *, progress: bool = True) -> list[Attempt]:
    """Best replayed attempt per (instance, size), in instance order then size order.

    Runs up to `config.rounds` rounds; each later round retries, with fresh random
    initializations, only the (instance, size) pairs that are not solved yet.
    """
    config.validate()
    method = get_method(config.method, **config.options)
    device = resolve_device(config.device)
    groups = group_instances(instances)
    budget = config.max_memory_mb * 2**20
    best: dict[tuple[int, int], Attempt] = {}
    pending = {(i, s) for i in range(len(instances)) for s in config.sizes}
    per_problem = config.steps + 2 * config.polish_steps  # at most: LM, Adam, LM again
    bar = tqdm(total=len(pending) * config.restarts * per_problem, unit="problem-step", disable=not progress,
               leave=False, desc=f"search {config.method}")
    try:
        for round_ in range(config.rounds):
            if not pending:
                break
            if round_:
                bar.total += len(pending) * (config.restarts << round_) * per_problem
            for gi, group in enumerate(groups):
                inst0 = instances[group.indices[0]]
                for size in config.sizes:
                    rows = [i for i in group.indices if (i, size) in pending for _ in range(config.restarts << round_)]
                    if not rows:
                        continue
                    n_params = method.param_count(group.spec, size)
                    per = bytes_per_problem(group.spec, len(inst0.dataset), inst0.n_tokens, inst0.n_targets,
                                            n_params, size)
                    if per > budget:
                        raise InputError(f"{method.size_name} {size}", f"{per / 2**20:.0f} MB per problem",
                                         f"a size whose problem fits in --max-memory {config.max_memory_mb} MB")
                    chunk = max(1, budget // per)
                    for ci, start in enumerate(range(0, len(rows), chunk)):
                        part = rows[start:start + chunk]
                        weights, X, Y = stacked(instances, part, device)
                        before = bar.n
                        found = _optimize_chunk(method, group.spec, weights, X, Y, size,
                                                _chunk_seed(config.seed, round_, gi, size, ci), config, device, bar,
                                                owners=part, patient=round_ > 0)
                        bar.update(max(0, len(part) * per_problem - (bar.n - before)))
                        arrays = {name: t.cpu().numpy() for name, t in found.items()}
                        losses, errors = replay_batch(method, instances, part, arrays)
                        for b, inst_index in enumerate(part):
                            adapter = {name: a[b].copy() for name, a in arrays.items()}
                            loss, err = float(losses[b]), float(errors[b])
                            key = (inst_index, size)
                            if key not in best or loss < best[key].best_loss:
                                best[key] = Attempt(inst_index, config.method, size, n_params, loss, err,
                                                    err <= config.tolerance, adapter, dict(config.options),
                                                    tolerance=config.tolerance)
            pending = {key for key in pending if not best[key].solved}
        _finish(instances, groups, method, config, device, best, pending)
    finally:
        bar.close()
    return [best[(i, s)] for i in range(len(instances)) for s in config.sizes if (i, s) in best]
