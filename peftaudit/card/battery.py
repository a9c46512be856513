"""The capacity battery behind a method card: one method against the built-ins, at matched
trainable-parameter budgets, on the named families of strategies/families.py.

For each family and each budget (d, 2d, 4d and, beyond the quick profile, 8d parameters at width
d), every method runs at its
largest size within the budget (full fine-tuning and methods without a size at their one size),
with the audit's search on the same instances (the quick profile: 2 restarts, 100 Adam and 60
Levenberg-Marquardt steps); the card reports the best replayed loss, what
was solved, the capacity curve (how many random examples each budget memorized), which
certified impossibilities apply to the method and why, and, for a method declared input-space,
an empirical check of the declaration.
"""

from __future__ import annotations

import statistics
import traceback
from dataclasses import replace
from typing import Callable, Sequence

from peftaudit.limits import MAX_SIZE
from peftaudit.models.methods import get_method
from peftaudit.models.methods.base import one_size
from peftaudit.errors import PLUGIN_FAILURES
from peftaudit.search.engine import non_finite, search
from peftaudit.settings import Profile
from peftaudit.strategies.families import CAPACITY_SIZES, FAMILIES, draw_family, get_family
from peftaudit.models.methods.abilities import ability

CARD_SCHEMA = "peftaudit.card/1"
COMPARATORS = {"prompt": {}, "prefix": {}, "lora": {"targets": "v"}, "full": {}}
BUDGET_FACTORS = {"quick": (1, 2, 4)}  # budgets d, 2d, 4d on quick; other profiles add 8d
DEFAULT_FACTORS = (1, 2, 4, 8)
QUICK_SEARCH = {"restarts": 2, "steps": 100, "polish_steps": 60}  # the quick card's lighter search

IMPOSSIBILITIES = {
    "L1": "no prompt of any length memorizes some two-example datasets of a single layer",
    "L1+": "L1 with a robust margin, also with positional encodings",
    "L2": "a dataset of N examples needs a prompt of at least N tokens",
    "M": "with invertible layers, prompts of bounded norm learn only invertible maps",
}


def card_folder(name: str) -> str:
    """A folder name for a method's card ('my_pkg.m:Name' -> 'my_pkg.m_Name')."""
    import re
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "method"


def sizes_for(method, spec, budgets: list[int]) -> dict[int, int | None]:
    """Budget -> the largest size whose parameter count fits it (None: none fits). A method with one
    size (full fine-tuning, methods without a size) runs at it whatever the budget: one reference
    point at its own count."""
    if one_size(method):
        return {b: 1 for b in budgets}
    best: dict[int, tuple[int, int]] = {}   # budget -> (count, size): the most parameters that fit, smallest size
    last, same = None, 0
    for size in range(1, MAX_SIZE + 1):
        count = method.param_count(spec, size)
        if count > max(budgets):
            break
        same = same + 1 if count == last else 0
        if same >= 16:  # the count stopped growing with the size (LoKr's full factors): nothing new
            break
        last = count
        for b in budgets:
            if count <= b and (b not in best or count > best[b][0]):
                best[b] = (count, size)
    return {b: best[b][1] if b in best else None for b in budgets}


def _run(name: str, options: dict, insts, size: int, base) -> list:
    config = replace(base, method=name, options=dict(options), sizes=(size,), norm_bound=None)
    return search(insts, config, progress=False)


UPDATE_CLASS_CLAIMS = {  # a declared update class -> the certified impossibility that applies to it
    "value-rank": ("LV", "no update of W_v of rank <= r fits some datasets of a single layer (a certified floor "
                         "per instance)", "it changes W_v only, by an update of rank <= its size", "--rank 1"),
    "value-scale": ("LV-scale", "no scaling of W_v's rows fits some datasets of a single layer (a certified floor "
                                "per instance)", "it only scales the rows of W_v (diag(l) W_v)", ""),
}


def _update_classes(method) -> list[dict]:
    """Whether LV and LV-scale apply: to a method that declares the matching update class."""
    declared = ability(method, "update_class")
    out = []
    for cls, (claim_id, statement, meaning, flags) in UPDATE_CLASS_CLAIMS.items():
        if declared == cls:
            why = (f"applies: the method declares that {meaning} (update_class {cls!r}, checked by the conformance "
                   f"rule 'a declared update class holds'), and the certificate rules out every such update: "
                   f"`peftaudit certify INSTANCE --claim {claim_id}{' ' + flags if flags else ''}`")
        elif declared:
            why = (f"does not apply: the method declares update_class {declared!r}, not {cls!r} ({meaning}), so "
                   f"the certificate says nothing about its updates")
        else:
            why = (f"does not apply: the method does not declare that {meaning} (update_class {cls!r}); an update "
                   "that also touches W_q, W_k, Wo or the MLP (e.g. peft-ia3's default also scales fc1) changes "
                   "the attention or the inversion the certificate relies on")
        out.append({"claim": claim_id, "statement": statement, "applies": declared == cls, "why": why})
    return out


def class_certificate(name: str, options: dict, method, d: int, seed: int, base) -> dict | None:
    """For a method whose declared update class makes LV (or LV-scale) apply: a certificate on one
    drawn instance at the card's width, and the method's own search at size 1 on it; a result
    below the checked margin means its declaration is false."""
    declared = ability(method, "update_class")
    if declared not in UPDATE_CLASS_CLAIMS:
        return None
    import numpy as np

    from peftaudit.claims import get_claim
    from peftaudit.evidence.outcome import TOLERANCE
    from peftaudit.strategies.instances import lv_instance

    claim_id = UPDATE_CLASS_CLAIMS[str(declared)][0]
    inst = lv_instance(np.random.default_rng([seed, 29]), d, d + 1)
    result = get_claim(claim_id).certify(inst, TOLERANCE)  # the claim's own certify (LV: rank 1, as searched)
    out = {"claim": claim_id, "d": d, "N": d + 1, "status": result.status, "reason": result.reason}
    if result.status != "certified":
        return out
    best = min(a.max_abs_error for a in _run(name, options, [inst], 1, base))
    file = f"{claim_id}-certificate.json"
    return {**out, "margin": float(result.margin), "certificate_file": file, "certificate": result.certificate,
            "check": f"peftaudit check-certificate {file}", "method_size": 1, "method_best_error": best,
            "below_margin": best < float(result.margin)}


def impossibilities(method) -> list[dict]:
    """Which certified impossibilities apply to the method, and why (from what it declares)."""
    kind = ability(method, "kind")
    out = []
    for claim_id, statement in IMPOSSIBILITIES.items():
        if kind == "input-space":
            why = ("applies: the method declares that it only prepends trainable tokens to the input, and the "
                   "certificate rules out every prompt" + (" of bounded norm (its tokens must stay in the ball)"
                                                           if claim_id == "M" else
                                                           " shorter than N tokens" if claim_id == "L2" else ""))
            out.append({"claim": claim_id, "statement": statement, "applies": True, "why": why})
        else:
            out.append({"claim": claim_id, "statement": statement, "applies": False,
                        "why": "does not apply: the method changes how the frozen weights act (declared "
                               f"{kind or 'no kind'}), and the certificates assume them unchanged"})
    return out + _update_classes(method)


def declaration_check(name: str, options: dict, method, spec_inst, base) -> dict | None:
    """A declared input-space method: can a prompt reproduce its outputs at a random adapter?"""
    if ability(method, "kind") != "input-space":
        return None
    import torch

    from peftaudit.instance import make_instance
    from peftaudit.search.problems import stacked

    size = 1
    W, X, _ = stacked([spec_inst], [0], torch.device("cpu"))
    with torch.no_grad():
        out = method.outputs(spec_inst.spec, W, method.init(spec_inst.spec, 1, size, torch.Generator().manual_seed(9)),
                             X)[0].numpy()                                          # (E,n,d)
    target = make_instance(spec_inst.spec, spec_inst.weights, [(ex.X, out[e][-1:]) for e, ex in
                                                               enumerate(spec_inst.dataset)])
    lengths = (1, 2, 4, 8)
    found = search([target], replace(base, method="prompt", options={}, sizes=lengths, rounds=2), progress=False)
    solved = [a for a in found if a.solved]
    return {"instance": "planted-prompt #0", "lengths_tried": list(lengths), "confirmed": bool(solved),
            "detail": (f"a prompt of length {solved[0].size} reproduces the method's last-token outputs at a random "
                       f"adapter (max error {solved[0].max_abs_error:.1e})") if solved else
                      ("no prompt of length <= 8 was found that reproduces the method's outputs at a random adapter: "
                       "the declaration is flagged (search evidence, not a proof)")}


def run_battery(name: str, options: dict, profile: Profile, seed: int, base, *, d: int = 4, count: int = 3,
                families: Sequence[str] | None = None, log: Callable[[str], None] = lambda s: None,
                progress: bool = False) -> dict:
    """Everything a method card shows, as plain JSON-ready data (`families`: a subset of the
    named families, default all). `progress`: a bar over (family, method) runs with its ETA."""
    from tqdm.auto import tqdm

    chosen = list(FAMILIES) if families is None else [get_family(f).name for f in families]
    subject = get_method(name, **options)
    methods = {name: dict(options), **{k: v for k, v in COMPARATORS.items() if k != name}}
    bar = tqdm(total=len(chosen) * len(methods), desc=f"card {name}", unit="run", disable=not progress, leave=False)
    budgets = [f * d for f in BUDGET_FACTORS.get(profile.name, DEFAULT_FACTORS)]
    if profile.name == "quick":
        base = replace(base, **{k: min(getattr(base, k), v) for k, v in QUICK_SEARCH.items()})
    rows, errors, solved_by_subject = [], {}, {}
    for family in chosen:
        insts = draw_family(family, count, d, seed)
        spec = insts[0].spec
        for mname, mopts in methods.items():
            bar.set_postfix_str(f"{family}: {mname}")
            if mname in errors:  # broken on an earlier family: once is enough
                bar.update(1)
                continue
            try:
                method = get_method(mname, **mopts)
                for size in sorted({s for s in sizes_for(method, spec, budgets).values() if s is not None}):
                    attempts = _run(mname, mopts, insts, size, base)
                    broken = non_finite(attempts)
                    if broken:  # outputs that are not numbers: the method's ERROR, not a capacity figure
                        errors[mname] = (f"at size {size} it produced only non-finite outputs (NaN or Inf) on "
                                         f"{family} instance(s) {broken}")
                        break
                    if mname == name:
                        solved_by_subject.setdefault(family, set()).update(
                            (a.instance for a in attempts if a.solved))
                    losses = [a.best_loss for a in attempts]
                    rows.append({"family": family, "method": mname, "size": size, "params": attempts[0].params,
                                 "median_best_loss": statistics.median(losses),
                                 "best_max_error": min(a.max_abs_error for a in attempts),
                                 "solved": sum(a.solved for a in attempts), "total": len(attempts)})
            except PLUGIN_FAILURES:  # a broken method is that method's ERROR on the card (Ctrl-C passes)
                errors[mname] = traceback.format_exc(limit=8)
            bar.update(1)
        if not progress:
            log(f"card {name}: {family} done")
    bar.close()
    capacity = []
    for mname in methods:
        for params in sorted({r["params"] for r in rows if r["method"] == mname}):
            full = [k for k in CAPACITY_SIZES if any(r["family"] == f"random-{k}" and r["method"] == mname and
                                                     r["params"] == params and r["solved"] == r["total"]
                                                     for r in rows)]
            capacity.append({"method": mname, "params": params, "examples_memorized": max(full, default=0)})
    conflicts = []
    if ability(subject, "kind") == "input-space":  # a certified L1 instance it memorized refutes its kind
        from peftaudit.evidence import TOLERANCE, certify_one
        from peftaudit.claims import get_claim
        l1 = draw_family("l1", count, d, seed)
        for i in sorted(solved_by_subject.get("l1", ())):
            summary = certify_one(get_claim("L1"), l1[i], TOLERANCE)
            if summary["status"] == "certified" and summary["checked"]:
                conflicts.append(f"{name} memorized l1 instance {i}, which a checked L1 certificate proves no "
                                 "prompt can: its declaration as input-space is false")
    try:
        declaration = declaration_check(name, options, subject, draw_family("planted-prompt", 1, d, seed)[0], base)
        by_class = class_certificate(name, options, subject, d, seed, base)
    except PLUGIN_FAILURES:  # the method failed while its declaration was checked: its ERROR
        declaration, by_class, errors[name] = None, None, errors.get(name) or traceback.format_exc(limit=8)
    if by_class and by_class.get("below_margin"):
        conflicts.append(f"{name} reached {by_class['method_best_error']:.3g} on the card's {by_class['claim']} "
                         f"instance, below its checked margin {by_class['margin']:.3g}: its declared update class "
                         "is false")
    return {"schema": CARD_SCHEMA, "method": name, "options": dict(options), "kind": ability(subject, "kind"), "d": d,
            "instances_per_family": count, "profile": profile.name, "seed": seed, "budgets": budgets,
            "families": {k: FAMILIES[k].description for k in chosen}, "rows": rows, "capacity": capacity,
            "impossibilities": impossibilities(subject),
            "declaration": declaration, "class_certificate": by_class,
            "conflicts": conflicts, "errors": errors}
