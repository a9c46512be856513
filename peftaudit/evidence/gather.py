"""Gathering a claim's evidence on a chunk of its instances: draw, check the hypotheses, certify
and check each certificate independently, search with the falsifiers (and the methods --methods
adds), confirm solutions by interval replay, contrast, compare, and run the claim's study. The
outcome is undecided; verdict.decide turns the merged evidence into the verdict.
"""

from __future__ import annotations

import traceback
from dataclasses import replace
from typing import Callable, Sequence

from peftaudit.claims import Claim, MethodRun
from peftaudit.errors import PLUGIN_FAILURES, one_line
from peftaudit.instance import Instance
from peftaudit.search.engine import Attempt, SearchConfig, confirm, search
from peftaudit.settings import Profile

from .outcome import SOLVED_MAX_ERROR, TOLERANCE, ClaimOutcome, log_name, shape
from peftaudit.models.methods.abilities import ability


def certify_one(claim: Claim, inst: Instance, tolerance: float) -> dict:
    """The claim's certificate for one instance, checked by the independent checker (never
    skipped): a summary with status, margin (the checker's for witnesses), reason, and the
    certificate itself under "certificate"."""
    from peftaudit.verify.checkers import MalformedCertificate, check_certificate

    result = claim.certify(inst, tolerance)
    summary = {"status": result.status, "margin": float(result.margin) if result.margin is not None else None,
               "best_error": result.best_error, "reason": result.reason, "checked": False}
    witness = claim.evidence == "witness"
    if result.status == "certified":
        try:
            verdict = check_certificate(result.certificate)  # independent exact re-check, never skipped
        except MalformedCertificate as exc:
            summary.update(status="unknown", reason=f"the independent checker refused the certificate: {exc}")
            return summary
        summary["checked"] = verdict.valid
        summary["instance_sha256"] = verdict.instance_sha256
        summary["established"] = dict(verdict.result.facts)
        if witness:
            summary["margin"] = float(verdict.margin) if verdict.valid else None
            summary["reason"] = verdict.reason
        if not verdict.valid:
            # a failed impossibility certificate proves nothing; a failed constructive witness refutes
            summary["status"] = "failed" if witness else "unknown"
            summary["reason"] = f"{'witness' if witness else 'certificate'} failed the independent check: {verdict.reason}"
        summary["certificate"] = result.certificate
    return summary


def record_error(outcome: ClaimOutcome, exc: BaseException, context: str = "") -> None:
    """An exception as one line among the claim's errors (what the reason shows), its traceback
    kept for the report's log file."""
    outcome.errors.append(f"{context}{one_line(exc)} (traceback in {log_name(outcome.claim.id)})")
    outcome.tracebacks.append(f"{context}{traceback.format_exc(limit=12)}")


def _run_searches(runs: Sequence[MethodRun], outcome: ClaimOutcome, indices: list[int], profile: Profile,
                  base: SearchConfig, progress: bool) -> dict[str, list[Attempt]]:
    """Search with each run. A run that --methods added (a user's method) and that raises or
    exits is recorded as that method's ERROR, with its traceback, and the others go on; a
    built-in run that raises ends the claim in ERROR."""
    out = {}
    subset = [outcome.instances[i] for i in indices]
    for run in runs:
        sizes = run.sizes or profile.lengths
        config = replace(base, method=run.method, options=dict(run.options), sizes=tuple(sizes),
                         norm_bound=run.norm_bound)
        try:
            attempts = search(subset, config, progress=progress) if subset else []
        except PLUGIN_FAILURES:  # Ctrl-C and SIGTERM are not among them: they pass
            if run.label not in outcome.added:
                raise
            outcome.method_errors[run.label] = traceback.format_exc(limit=8)
            continue
        out[run.label] = [replace(a, instance=indices[a.instance]) for a in attempts]
    return out


def _confirm_runs(outcome: ClaimOutcome) -> dict[str, list[Attempt]]:
    """Every search's solutions with their exact-model enclosures: a counterexample ("cannot") or a
    witness ("can") counts only once the exact model is enclosed. A method searched as a prompt
    claim's falsifier because it declared itself input-space must declare a pure prompt as its
    exact model. A declared exact model that does not fit is that method's ERROR (its evidence is
    dropped), recorded among the claim's errors when the method is the claim's own."""
    from peftaudit.models.methods import get_method
    from peftaudit.models.methods.module_method import MethodContractError

    out = {}
    by_prompt = any(r.method == "prompt" for r in outcome.claim.falsifiers)  # inherited as input-space, or by class
    for label, attempts in outcome.searches.items():
        inherited = outcome.added.get(label) == "falsifier"
        try:
            method = get_method(attempts[0].method, **attempts[0].options) if inherited and attempts else None
            as_prompt = method is not None and by_prompt and ability(method, "kind") == "input-space"
            declared = "" if method is None or as_prompt else str(ability(method, "update_class"))
            out[label] = confirm(attempts, outcome.instances, one_per_instance=outcome.claim.kind == "can",
                                 prompt_only=as_prompt, update_class=declared)
        except MethodContractError as exc:
            if label in outcome.added:
                outcome.method_errors[label] = str(exc)
            else:
                outcome.errors.append(f"method {label}: {exc}")
        except PLUGIN_FAILURES as exc:  # a user's exact model that raises: that method's ERROR
            if label not in outcome.added:
                raise
            outcome.method_errors[label] = f"its exact model failed: {one_line(exc)}\n{traceback.format_exc(limit=8)}"
    return out


def _witnessed(runs: dict[str, list[Attempt]], outcome: ClaimOutcome) -> dict[str, list[Attempt]]:
    """Contrast or comparison runs with each float64 solution's exact-model enclosure, for a
    parameter table's witnessed upper bound; a method whose exact model cannot be enclosed keeps
    its float64 figures (never a witness)."""
    out = {}
    for label, attempts in runs.items():
        try:
            out[label] = confirm(attempts, outcome.instances, one_per_instance=False)
        except PLUGIN_FAILURES as exc:  # a declared exact model that does not fit: that method's ERROR
            outcome.method_errors[label] = f"its exact model failed: {one_line(exc)}"
            out[label] = attempts
    return out


def not_applicable(claim: Claim, instances: Sequence[object] | None = None) -> str:
    """Why methods --methods adds are not run on the claim ("" when they are): a claim decided by
    its constructions alone, or one whose instances are not transformer instances (Z1's are
    linear models, which a PEFT method's search does not take)."""
    if claim.evidence == "witness":
        return f"{claim.id} is decided by its exact constructions; no method is searched on it"
    if instances is not None and not all(isinstance(inst, Instance) for inst in instances):
        kinds = sorted({type(inst).__name__ for inst in instances if not isinstance(inst, Instance)})
        return f"{claim.id} draws {', '.join(kinds)} instances, not transformer instances a method can run on"
    return ""


def added_runs(claim: Claim, methods: Sequence[str], profile: Profile, failed: dict[str, str] | None = None
               ) -> tuple[tuple[MethodRun, ...], tuple[MethodRun, ...]]:
    """Runs for methods the claim does not name (a user's method given to --methods). A method that
    declares itself input-space (it only prepends trainable tokens, its size being their number)
    inherits a "cannot" claim whose falsifier is prompt tuning, and is searched as a falsifier at
    that falsifier's sizes (L2 rules out short prompts only) and under its norm bound (M's prompts
    are bounded; a method that cannot be projected onto the ball is compared instead). Likewise a
    method that declares an update class (abilities.py: 'value-rank', W_v only by an update of rank
    <= its size; 'value-scale', W_v's rows scaled) inherits a "cannot" claim whose falsifier
    declares the same class (LoRA on W_v for LV, IA3 on W_v for LV-scale), at that falsifier's
    sizes. Any other method is a comparison, reported for context. Returns (falsifiers, comparisons). With
    `failed`, a method that cannot be constructed here (e.g. only in a worker) is recorded there
    (name -> one line) instead of raising."""
    from peftaudit.models.methods import get_method
    from peftaudit.models.methods.base import one_size

    if not_applicable(claim):  # decided by its constructions; its study runs its own search
        return (), ()
    named = {r.method for r in claim.falsifiers + claim.contrasts + claim.comparisons}
    prompt_runs = [r for r in claim.falsifiers if r.method == "prompt"]
    class_runs = {} if claim.kind != "cannot" else falsifier_classes(claim)
    falsifiers, comparisons = [], []
    for name in methods:
        if name in named:
            continue
        try:
            method = get_method(name)
        except PLUGIN_FAILURES as exc:
            if failed is None:
                raise
            failed[name] = f"the method could not be constructed here: {one_line(exc)}"
            continue
        sizes = (1,) if one_size(method) else tuple(profile.lengths)
        inherits = ability(method, "kind") == "input-space" and claim.kind == "cannot" and prompt_runs
        if inherits and prompt_runs[0].norm_bound is not None and not ability(method, "projectable"):
            inherits = False  # its tokens could leave the ball the claim is about
        if inherits:
            falsifiers.extend(MethodRun(name, sizes=r.sizes, norm_bound=r.norm_bound) for r in prompt_runs)
        elif ability(method, "update_class") in class_runs:
            falsifiers.extend(MethodRun(name, sizes=r.sizes) for r in class_runs[str(ability(method, "update_class"))])
        else:
            comparisons.append(MethodRun(name, sizes=sizes))
    return tuple(falsifiers), tuple(comparisons)


def falsifier_classes(claim: Claim) -> dict[str, list[MethodRun]]:
    """Update class -> the claim's built-in falsifier runs whose method declares it."""
    from peftaudit.models.methods import get_method

    out: dict[str, list[MethodRun]] = {}
    for run in claim.falsifiers:
        try:
            declared = ability(get_method(run.method, **run.options), "update_class")
        except PLUGIN_FAILURES:  # a falsifier that cannot be built here: its own search reports it
            continue
        if declared:
            out.setdefault(str(declared), []).append(run)
    return out


def audit_chunk(claim: Claim, profile: Profile, seed: int, base: SearchConfig, start: int = 0,
                stop: int | None = None, *, methods: set[str] | None = None, progress: bool = True,
                log: Callable[[str], None] = lambda s: None) -> ClaimOutcome:
    """The evidence on instances [start, stop) of the claim's draw (all by default), undecided.

    Every chunk draws the whole list (the draw is the claim's, from the audit seed) and works on
    its slice, so instance i is the same whichever chunk holds it; indices stay global. A claim
    with a study runs as one chunk (its study reads every instance)."""
    outcome = ClaimOutcome(claim)
    try:
        outcome.instances = list(claim.draw(profile, seed))
        stop = len(outcome.instances) if stop is None else min(stop, len(outcome.instances))
        outcome.span = (start, stop)
        outcome.shapes = [shape(inst) for inst in outcome.instances[start:stop]]
        for i in range(start, stop):
            why = claim.hypotheses(outcome.instances[i])
            if why is not None:
                outcome.vacuous[i] = why
        active = [i for i in range(start, stop) if i not in outcome.vacuous]
        log(f"{claim.id}: instances {start}..{stop - 1} of {len(outcome.instances)} drawn, "
            f"{len(outcome.vacuous)} vacuous")
        if claim.certify is not None and active:
            outcome.certificates = {i: certify_one(claim, outcome.instances[i], TOLERANCE) for i in active}
            log(f"{claim.id}: certified {sum(r['status'] == 'certified' for r in outcome.certificates.values())}"
                f"/{len(active)}")
        keep = lambda runs: tuple(r for r in runs if methods is None or r.method in methods  # noqa: E731
                                  or r.method == claim.subject)  # the claim's subject is never dropped
        named = {r.method for r in claim.falsifiers + claim.contrasts + claim.comparisons}
        why = not_applicable(claim, outcome.instances)
        if why:
            outcome.not_applicable = {m: why for m in sorted(methods or ()) if m not in named}
        unbuilt: dict[str, str] = {}
        extra_falsifiers, extra_comparisons = ((), ()) if why else added_runs(claim, sorted(methods or ()), profile,
                                                                               failed=unbuilt)
        outcome.method_errors.update(unbuilt)
        outcome.added = {**{r.label: "comparison" for r in extra_comparisons},
                         **{r.label: "falsifier" for r in extra_falsifiers}}
        outcome.searches = _run_searches(keep(claim.falsifiers) + extra_falsifiers, outcome, active, profile, base,
                                         progress)
        outcome.searches = _confirm_runs(outcome)
        outcome.contrasts = _run_searches(keep(claim.contrasts), outcome, active, profile, base, progress)
        if claim.parameter_table:  # the table's upper side: confirmed witnesses, not float64 solutions
            outcome.contrasts = _witnessed(outcome.contrasts, outcome)
        outcome.comparisons = _run_searches(keep(claim.comparisons) + extra_comparisons, outcome, active, profile,
                                            base, progress)
        if claim.parameter_table:
            outcome.comparisons = _witnessed(outcome.comparisons, outcome)
        if claim.study is not None:
            outcome.study = claim.study(outcome.instances, outcome.certificates, profile, seed, log)
            outcome.violations.extend(outcome.study.get("violations", []))
    except PLUGIN_FAILURES as exc:  # a claim's own code, a built-in run: the claim's ERROR, in one line
        record_error(outcome, exc)
    return outcome


def search_config(profile: Profile, seed: int, device: str) -> SearchConfig:
    return SearchConfig(restarts=profile.restarts, steps=profile.steps, polish_steps=profile.polish_steps,
                        seed=seed, device=device, rounds=1, tolerance=SOLVED_MAX_ERROR)
