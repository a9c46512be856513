"""Conformance rules every PEFT method meets, built-in, peft guest or plugin.

`check_method(name, options)` runs each rule on small generated instances and returns one
RuleResult per rule; a rule that raises fails with the exception named. The rules are what the
engine and the verdicts rely on: a method that breaks one can produce wrong evidence, so the
test suite runs them on every registered method and users run them on theirs
(`pytest --peftaudit-conformance NAME`, or `peftaudit.testing.assert_conforms`).
"""

from __future__ import annotations

import math
import traceback
import types
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from peftaudit.instance import Instance
from peftaudit.models.methods.abilities import ability

TOLERANCE = 1e-12  # relative agreement of two float64 evaluations of the same outputs
JACOBIAN_TOLERANCE = 1e-10  # and of two float64 Jacobians (other products, other rounding)


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome; `skipped`: the rule judged nothing (an ability the method does not
    offer), which is no pass: the pytest item is skipped with the detail as its reason."""
    rule: str
    ok: bool
    detail: str
    skipped: bool = False


class NotApplicable(Exception):
    """The rule is about an ability the method does not offer: it judges nothing."""


@dataclass
class Subject:
    """The method under test, its name and options, and the instances the rules use."""
    name: str
    options: dict
    method: object
    instances: list[Instance]
    size: int


def _instances() -> list[Instance]:
    """Two small instances: one layer one head, and two layers of two heads with a plain MLP."""
    from peftaudit.strategies.instances import planted_lora_instance, planted_prompt_instance

    rng = np.random.default_rng(20261126)
    return [planted_lora_instance(rng, 4, 1), planted_prompt_instance(rng, 4, 1, layers=2, mlp="plain")]


def _data(insts: list[Instance], rows: list[int]):
    from peftaudit.search.problems import stacked
    return stacked(insts, rows, torch.device("cpu"))


def _close(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    gap = float((a - b).abs().max()) if a.numel() else 0.0
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return gap <= TOLERANCE * scale, gap


def _init(s: Subject, inst: Instance, batch: int, seed: int) -> dict[str, torch.Tensor]:
    return s.method.init(inst.spec, batch, s.size, torch.Generator().manual_seed(seed))


def rule_outputs(s: Subject) -> str:
    for inst in s.instances:
        W, X, _ = _data([inst] * 3, [0, 1, 2])
        out = s.method.outputs(inst.spec, W, _init(s, inst, 3, 0), X)
        want = tuple(X.shape)
        assert tuple(out.shape) == want, f"outputs have shape {tuple(out.shape)}, expected {want} (B, E, n, d)"
        assert torch.isfinite(out).all(), "outputs hold NaN or Inf at a random start"
    return "shape (B, E, n, d), finite"


def rule_param_count(s: Subject) -> str:
    for inst in s.instances:
        per_problem = sum(t[0].numel() for t in _init(s, inst, 2, 0).values())
        declared = s.method.param_count(inst.spec, s.size)
        assert declared == per_problem, f"param_count says {declared}, the trainable tensors hold {per_problem}"
        claimed = ability(s.method, "declared_params")
        if callable(claimed):
            assert claimed(inst.spec, s.size) == per_problem, \
                f"declared_params says {claimed(inst.spec, s.size)}, the trainable tensors hold {per_problem}"
    return f"{per_problem} parameters at size {s.size} on the last instance"


def _hidden_leaves(obj: object, seen: set) -> list[tuple[str, torch.Tensor]]:
    """Tensors requiring grad held by `obj` (attributes, modules' parameters and attributes)."""
    out = []
    stack = [("", obj)]
    while stack:
        path, item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            if item.requires_grad and item.is_leaf:
                out.append((path, item))
        elif isinstance(item, torch.nn.Module):
            stack.extend((f"{path}.{k}", v) for k, v in item.named_parameters(recurse=True))
            stack.extend((f"{path}.{k}", v) for m_name, m in item.named_modules()
                         for k, v in vars(m).items() if isinstance(v, torch.Tensor))
        elif isinstance(item, dict):
            stack.extend((f"{path}[{k!r}]", v) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
        elif hasattr(item, "__dict__") and not isinstance(item, (type, types.ModuleType, types.FunctionType,
                                                                   types.MethodType)):
            stack.extend((f"{path}.{k}", v) for k, v in vars(item).items())
    return out


def rule_gradients(s: Subject) -> str:
    inst = s.instances[0]
    W, X, _ = _data([inst] * 2, [0, 1])
    W = {k: v.clone().requires_grad_(False) for k, v in W.items()}
    trainable = {k: v.clone().requires_grad_(True) for k, v in _init(s, inst, 2, 0).items()}
    hidden = _hidden_leaves(s.method, set())
    for _, t in hidden:
        t.grad = None
    s.method.outputs(inst.spec, W, trainable, X).square().sum().backward()
    missing = [k for k, t in trainable.items() if t.grad is None or not torch.isfinite(t.grad).all()]
    assert not missing, f"declared tensors without a finite gradient: {missing}"
    leaked = [path for path, t in hidden if t.grad is not None]
    assert not leaked, f"undeclared tensors received gradients: {leaked[:5]}"
    return f"gradients reach the {len(trainable)} declared tensors and nothing else"


def _tiny_search(s: Subject, inst: Instance, seed: int):
    from peftaudit.search.engine import SearchConfig, search
    config = SearchConfig(method=s.name, options=dict(s.options), sizes=(s.size,), restarts=2, rounds=1, steps=5,
                          polish_steps=5, seed=seed, device="cpu")
    return search([inst], config, progress=False)[0]


def rule_frozen_unchanged(s: Subject) -> str:
    inst = s.instances[0]
    before = {k: np.array(v, copy=True) for k, v in inst.weights.items()}
    W, X, _ = _data([inst], [0])
    probe = _init(s, inst, 1, 7)
    out_before = s.method.outputs(inst.spec, W, probe, X).detach().clone()
    _tiny_search(s, inst, 0)
    changed = [k for k in before if not np.array_equal(before[k], inst.weights[k])]
    assert not changed, f"a search changed the frozen weights {changed}"
    W, X, _ = _data([inst], [0])
    out_after = s.method.outputs(inst.spec, W, probe, X)
    assert torch.allclose(out_before, out_after, rtol=0, atol=0, equal_nan=True), \
        "the same adapter gives other outputs after a search (hidden state)"
    return "instance weights and the method's outputs are the same before and after a search"


def rule_batching(s: Subject) -> str:
    from peftaudit.strategies.weights import model_weights
    inst = s.instances[0]
    pool = [inst, *(Instance(inst.spec, model_weights(np.random.default_rng(k), inst.spec), inst.dataset)
                     for k in range(2))]
    W, X, _ = _data(pool, [0, 1, 2])
    trainable = _init(s, inst, 3, 1)
    batched = s.method.outputs(inst.spec, W, trainable, X)
    worst = 0.0
    for b in range(3):
        Wb, Xb, _ = _data(pool, [b])
        single = s.method.outputs(inst.spec, Wb, {k: v[b:b + 1] for k, v in trainable.items()}, Xb)
        ok, gap = _close(batched[b], single[0])
        worst = max(worst, gap)
        assert ok, f"problem {b} of a batch of 3 differs from its own forward by {gap:.2e}"
    return f"3 problems with different weights agree with their own forwards (worst {worst:.1e})"


def rule_seeded(s: Subject) -> str:
    inst = s.instances[0]
    a, b = _init(s, inst, 2, 5), _init(s, inst, 2, 5)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"init with the same seed gave different tensors {differ}"
    first, second = _tiny_search(s, inst, 3), _tiny_search(s, inst, 3)
    differ = [k for k in first.adapter if not np.array_equal(first.adapter[k], second.adapter[k])]
    assert not differ, f"two searches with the same seed found different adapters ({differ})"
    return "the same seed gives the same start and the same search result"


def rule_identity(s: Subject) -> str:
    identity = ability(s.method, "identity_adapter")
    if not callable(identity):
        raise NotApplicable("no identity adapter declared")
    from peftaudit.models.transformer import forward
    worst = 0.0
    for inst in s.instances:
        declared = identity(inst.spec, s.size)
        if declared is None:
            raise NotApplicable("no identity adapter declared")
        base, tensors = declared
        W = {k: torch.as_tensor(np.asarray(v))[None] for k, v in base.items()}
        X = torch.as_tensor(inst.inputs())[None]
        ok, gap = _close(s.method.outputs(inst.spec, W, tensors, X), forward(inst.spec, W, X))
        worst = max(worst, gap)
        assert ok, f"the declared identity adapter moves the outputs by {gap:.2e}"
    return f"the identity adapter leaves the outputs unchanged (worst {worst:.1e})"


def rule_replay(s: Subject) -> str:
    from peftaudit.search.engine import replay, replay_batch
    inst = s.instances[0]
    trainable = _init(s, inst, 2, 2)
    arrays = {k: v.numpy() for k, v in trainable.items()}
    losses, errors = replay_batch(s.method, [inst, inst], [0, 1], arrays)
    for b in range(2):
        loss, err = replay(s.method, inst, {k: v[b] for k, v in arrays.items()})
        assert math.isclose(loss, losses[b], rel_tol=TOLERANCE, abs_tol=1e-300), \
            f"replay loss {loss!r} differs from the batched forward's {losses[b]!r}"
    return "the float64 replay equals the batched forward the optimizer uses"


def rule_exact(s: Subject) -> str:
    from peftaudit.models.interval import enclose_outputs, ends
    from peftaudit.models.methods.module_method import NoExactModel
    from peftaudit.search.engine import exact_model
    inst = s.instances[0]
    adapter = {k: v[0].numpy() for k, v in _init(s, inst, 1, 3).items()}
    try:
        exact = exact_model(s.method, inst, adapter)  # the audit's own path: context, shapes checked
    except NoExactModel:
        raise NotApplicable("no exact model declared: float64 solutions never count as counterexamples") from None
    W, X, _ = _data([inst], [0])
    floats = s.method.outputs(inst.spec, W, {k: torch.as_tensor(v)[None] for k, v in adapter.items()}, X)[0]
    worst = 0.0
    for e, ex in enumerate(inst.dataset):
        for t, row in enumerate(enclose_outputs(inst.spec, inst.weights, ex.X, exact)):
            for j, cell in enumerate(row):
                lo, hi = ends(cell)
                value = float(floats[e, t, j])
                gap = max(0.0, float(lo) - value, value - float(hi))
                worst = max(worst, gap)
                assert gap <= 1e-9 * max(1.0, abs(value)), \
                    f"the exact model's output ({e},{t},{j}) lies in [{float(lo):.6g}, {float(hi):.6g}], the " \
                    f"forward gives {value:.6g}"
    return f"the forward lies within {worst:.1e} of the exact model's enclosure"


def rule_update_class(s: Subject) -> str:
    """A method declaring an update class (LV applies to 'value-rank', LV-scale to 'value-scale'):
    on random adapters its exact model is an update of that class at its size (only W_v changes,
    by rank <= size, or by a scaling of its rows)."""
    from peftaudit.search.engine import exact_model

    declared = ability(s.method, "update_class")
    if not declared:
        raise NotApplicable("no update class declared: claims LV and LV-scale do not apply to the method")
    from peftaudit.models.exact_shapes import update_class_problem

    for inst in s.instances:
        for seed in (5, 6):
            adapter = {k: v[0].numpy() for k, v in _init(s, inst, 1, seed).items()}
            problem = update_class_problem(exact_model(s.method, inst, adapter), str(declared), s.size)
            assert problem is None, problem
    return f"its exact model is of its declared class {declared!r} on random adapters (size {s.size})"


def torch_func_jacobian(method, spec, W: dict, trainable: dict, X: torch.Tensor, keep: int | None) -> torch.Tensor:
    """Every problem's Jacobian (B, R, P) of its flattened outputs in its flat parameters, by
    torch.func.jacfwd of the method's own `outputs`: the reference an offered Jacobian must meet."""
    from peftaudit.search.optimize import flat, unflat

    def one(theta, Wb, Xb):  # one problem's flat outputs
        return method.outputs(spec, {n: w[None] for n, w in Wb.items()}, unflat(theta[None], trainable), Xb[None],
                              keep=keep).reshape(-1)

    return torch.func.vmap(torch.func.jacfwd(one))(flat(trainable), W, X)


def rule_jacobian(s: Subject) -> str:
    """A method's own `outputs_and_jacobian`, which LM trusts in place of torch.func, against
    its `outputs` and torch.func.jacfwd of them, at the target positions the search asks for."""
    offered = ability(s.method, "outputs_and_jacobian")
    if not callable(offered):
        refused = ability(s.method, "refusal")
        refusal = refused(s.instances[0].spec, s.size) if callable(refused) else ""
        raise NotApplicable(f"no Jacobian offered: torch.func refuses the module ({refusal}), so the search takes "
                            "Jacobians by plain autograd" if refusal else
                            "no Jacobian offered: the search differentiates the outputs with torch.func")
    worst = 0.0
    for inst in s.instances:
        W, X, _ = _data([inst] * 2, [0, 1])
        trainable, k = _init(s, inst, 2, 4), inst.n_targets
        out, J = offered(inst.spec, W, trainable, X, keep=k)
        ok, gap = _close(out, s.method.outputs(inst.spec, W, trainable, X, keep=k))
        assert ok, f"outputs_and_jacobian's outputs differ from outputs' by {gap:.2e}"
        want = torch_func_jacobian(s.method, inst.spec, W, trainable, X, k)        # (B,R,P)
        assert tuple(J.shape) == tuple(want.shape), f"the Jacobian has shape {tuple(J.shape)}, expected {tuple(want.shape)}"
        gap = float((J - want).abs().max())
        worst = max(worst, gap)
        assert gap <= JACOBIAN_TOLERANCE * max(1.0, float(want.abs().max())), \
            f"the offered Jacobian differs from torch.func's by {gap:.2e}"
    return f"the offered Jacobian is torch.func's (worst {worst:.1e}) and its outputs are outputs'"


RULES: dict[str, Callable[[Subject], str]] = {
    "outputs have shape (B, E, n, d) and are finite": rule_outputs,
    "the parameter count matches the trainable tensors": rule_param_count,
    "only the declared parameters receive gradients": rule_gradients,
    "the frozen model's weights are unchanged after a search": rule_frozen_unchanged,
    "batched and per-instance forwards agree": rule_batching,
    "the same seed gives the same result": rule_seeded,
    "the identity adapter leaves the outputs unchanged": rule_identity,
    "replay equals the optimizer's forward": rule_replay,
    "the declared exact model agrees with the forward": rule_exact,
    "an offered Jacobian is the outputs' own": rule_jacobian,
    "a declared update class holds": rule_update_class,
}


def subject(name: str, options: dict | None = None, size: int | None = None) -> Subject:
    from peftaudit.models.methods import get_method
    from peftaudit.models.methods.base import one_size
    method = get_method(name, **(options or {}))
    if size is None:
        size = 1 if one_size(method) else 2
    return Subject(name, dict(options or {}), method, _instances(), size)


def check_rule(rule: str, name: str, options: dict | None = None, size: int | None = None) -> RuleResult:
    """One rule on one method; the method's construction errors count against the rule."""
    from peftaudit.models.methods.module_method import MethodContractError
    try:
        return RuleResult(rule, True, RULES[rule](subject(name, options, size)))
    except NotApplicable as exc:
        return RuleResult(rule, True, str(exc), skipped=True)
    except MethodContractError as exc:
        return RuleResult(rule, False, str(exc))  # names the rule it broke
    except AssertionError as exc:
        return RuleResult(rule, False, str(exc))
    except Exception as exc:  # noqa: BLE001 - a user method may raise anything; the rule fails with it
        return RuleResult(rule, False, f"raised {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")


def check_method(name: str, options: dict | None = None, size: int | None = None) -> list[RuleResult]:
    """Every rule on one method. A failure that several rules share (the method cannot be built,
    say) is given in full once, under the first rule it fails; the others point to it."""
    out, said = [], {}
    for rule in RULES:
        result = check_rule(rule, name, options, size)
        first = result.detail.splitlines()[0] if result.detail else ""
        if not result.ok and first in said:
            result = RuleResult(rule, False, f"the same failure as rule '{said[first]}'")
        elif not result.ok:
            said[first] = rule
        out.append(result)
    return out
