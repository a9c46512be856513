"""The audit runner: draw instances per claim, certify, check, search, contrast, calibrate, decide.

Verdicts (DESIGN.md), never merged: CERTIFIED (every non-vacuous instance carries a certificate
checked in exact arithmetic, or for a "can" claim a witness checked exactly or confirmed by the
interval replay), REFUTED (a replayed counterexample), NOT-SHOWN (a "can" claim some instance of
which has no witness: it fails CI), SURVIVED (a "cannot" claim: budget spent,
nothing found, not everything certified), VACUOUS (no instance met the hypotheses), UNKNOWN
(a certifier timed out or was inconclusive and nothing else decides), ERROR (an exception, or a
soundness conflict such as a search result below a certified margin).
"""

from __future__ import annotations

import math
import sys
import traceback
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from peftaudit.claims import Claim, MethodRun
from peftaudit.errors import PLUGIN_FAILURES, one_line
from peftaudit.instance import Instance
from peftaudit.search.engine import Attempt, SearchConfig, confirm, non_finite, search
from peftaudit.settings import Profile

VERDICTS = ("CERTIFIED", "REFUTED", "NOT-SHOWN", "SURVIVED", "VACUOUS", "UNKNOWN", "ERROR")
TOLERANCE = 1e-9          # certified means margin > TOLERANCE at the layer output
SOLVED_MAX_ERROR = 1e-8   # a replayed max error at most this memorizes (numerically)


@dataclass
class ClaimOutcome:
    """Everything the report says about one claim (plain data, JSON-ready via to_json)."""
    claim: Claim
    instances: Sequence[Instance] | dict[int, Instance] = field(default_factory=list)  # the draw; merged: those saved
    shapes: list[dict] = field(default_factory=list)  # per instance of the chunk (merged: of the claim): d, family
    span: tuple[int, int] = (0, 0)                    # the chunk's instances [start, stop)
    vacuous: dict[int, str] = field(default_factory=dict)
    certificates: dict[int, dict] = field(default_factory=dict)   # instance -> summary (+ "certificate")
    searches: dict[str, list[Attempt]] = field(default_factory=dict)
    contrasts: dict[str, list[Attempt]] = field(default_factory=dict)
    comparisons: dict[str, list[Attempt]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)              # one line each (ERROR's reason)
    tracebacks: list[str] = field(default_factory=list)          # of the errors, for the claim's log file
    method_errors: dict[str, str] = field(default_factory=dict)  # run label -> traceback (runs --methods added)
    not_applicable: dict[str, str] = field(default_factory=dict)  # method -> why --methods did not run it here
    added: dict[str, str] = field(default_factory=dict)          # label -> role, for runs --methods added
    verdict: str = "ERROR"
    reason: str = ""
    violations: list[str] = field(default_factory=list)
    study: dict | None = None   # a claim's own report section (claim.study)


def shape(inst) -> dict:
    """What a report says of an instance: its width and family."""
    return {"d": inst.spec.d, "family": inst.meta.get("family")}


def _certify_one(claim: Claim, inst: Instance, tolerance: float) -> dict:
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


def log_name(claim_id: str) -> str:
    """The report's file for a claim's tracebacks (relative to the report folder)."""
    import re
    return f"logs/{re.sub(r'[^A-Za-z0-9_.+-]', '_', claim_id)}.log"


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
    from peftaudit.models.methods.module_method import MethodContractError

    out = {}
    for label, attempts in outcome.searches.items():
        inherited = outcome.added.get(label) == "falsifier"
        try:
            out[label] = confirm(attempts, outcome.instances, one_per_instance=outcome.claim.kind == "can",
                                 prompt_only=inherited)
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
    are bounded; a method that cannot be projected onto the ball is compared instead). Any other
    method is a comparison, reported for context. Returns (falsifiers, comparisons). With
    `failed`, a method that cannot be constructed here (e.g. only in a worker) is recorded there
    (name -> one line) instead of raising."""
    from peftaudit.models.methods import get_method
    from peftaudit.models.methods.base import one_size

    if not_applicable(claim):  # decided by its constructions; its study runs its own search
        return (), ()
    named = {r.method for r in claim.falsifiers + claim.contrasts + claim.comparisons}
    prompt_runs = [r for r in claim.falsifiers if r.method == "prompt"]
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
        inherits = getattr(method, "kind", "") == "input-space" and claim.kind == "cannot" and prompt_runs
        if inherits and prompt_runs[0].norm_bound is not None and not getattr(method, "projectable", False):
            inherits = False  # its tokens could leave the ball the claim is about
        if inherits:
            falsifiers.extend(MethodRun(name, sizes=r.sizes, norm_bound=r.norm_bound) for r in prompt_runs)
        else:
            comparisons.append(MethodRun(name, sizes=sizes))
    return tuple(falsifiers), tuple(comparisons)


def decide(outcome: ClaimOutcome) -> None:
    """Set verdict and reason from the evidence, checking soundness conflicts on the way."""
    claim = outcome.claim
    active = [i for i in range(len(outcome.shapes)) if i not in outcome.vacuous]
    solved = [a for attempts in outcome.searches.values() for a in attempts if a.solved]
    found = [a for a in solved if a.rigorously_solved]
    for label, attempts in [*outcome.searches.items(), *outcome.contrasts.items(), *outcome.comparisons.items()]:
        broken = non_finite(attempts)
        if broken:  # every candidate of every restart replayed to NaN or Inf: the method is broken
            message = f"method {label} produced only non-finite outputs (NaN or Inf) on instance(s) {broken}"
            if label in outcome.added:
                outcome.method_errors[label] = message
            else:
                outcome.errors.append(message)
    if outcome.method_errors and not outcome.errors:
        searched_by_user = [k for k in outcome.method_errors if outcome.added.get(k) == "falsifier"]
        if searched_by_user:  # an inherited claim's falsifier is broken: its search evidence is missing
            outcome.errors.append(f"falsifier(s) {searched_by_user} failed (see method_errors)")
    for attempts in outcome.searches.values():
        for a in attempts:
            cert = outcome.certificates.get(a.instance)
            if cert and cert["status"] == "certified" and a.max_abs_error < cert["margin"]:
                outcome.violations.append(
                    f"instance {a.instance}: {a.method} size {a.size} reached {a.max_abs_error:.3g} below the "
                    f"certified margin {cert['margin']:.3g}")
    if outcome.errors or outcome.violations:
        outcome.verdict = "ERROR"
        outcome.reason = "; ".join(outcome.errors + outcome.violations)[:2000]
        return
    if not active:
        outcome.verdict, outcome.reason = "VACUOUS", "no drawn instance met the claim's hypotheses"
        return
    if claim.kind == "cannot" and claim.evidence == "witness":  # refuted by a counterexample checked exactly
        passed = [i for i in active if outcome.certificates.get(i, {}).get("status") == "certified"]
        if passed:
            outcome.verdict = "REFUTED"
            outcome.reason = (f"counterexample witness(es) checked in exact arithmetic on instance(s) {passed}: "
                              + outcome.certificates[passed[0]]["reason"][:400])
        else:
            outcome.verdict = "SURVIVED"
            outcome.reason = "no counterexample witness passed its exact check (which proves nothing)"
        return
    if claim.kind == "cannot":
        if found:
            a = found[0]
            outcome.verdict = "REFUTED"
            outcome.reason = (f"{len(found)} replayed counterexample(s); e.g. {a.method} size {a.size} memorizes "
                              f"instance {a.instance} (exact model's max error <= {a.exact_max_error[1]:.2e} by "
                              f"interval replay; float64 {a.max_abs_error:.2e})")
            return
        statuses = [outcome.certificates.get(i, {}).get("status") for i in active]
        certified = sum(s == "certified" for s in statuses)
        if claim.certify is not None and certified == len(active):
            margins = [m for m in (outcome.certificates[i]["margin"] for i in active) if m is not None]
            outcome.verdict = "CERTIFIED"
            outcome.reason = (f"all {len(active)} instances carry certificates checked in exact arithmetic"
                              + (f" (smallest margin {min(margins):.3g}); no search result falls below a margin"
                                 if margins else ""))
        elif "unknown" in statuses and certified + statuses.count("unknown") == len(active):
            outcome.verdict, outcome.reason = "UNKNOWN", "some certificates were inconclusive; search found nothing"
        else:
            outcome.verdict = "SURVIVED"
            outcome.reason = (f"search found no counterexample; {certified}/{len(active)} instances certified "
                              "(search failure proves nothing)")
            if solved:
                outcome.reason += (f"; {len(solved)} float64 solution(s) not confirmed by the interval replay of "
                                   "the exact model")
    elif claim.evidence == "witness":  # "can", by construction: witnesses checked exactly
        _decide_can_by_construction(outcome, active)
    else:  # "can", by search: every instance needs a witness the exact model's replay confirms
        _decide_can_by_search(outcome, active)


def _not_shown(outcome: ClaimOutcome, reason: str) -> None:
    outcome.verdict = "NOT-SHOWN"
    outcome.reason = "not shown (fails CI): " + reason


def _decide_can_by_construction(outcome: ClaimOutcome, active: list[int]) -> None:
    """U, Z1-relu: CERTIFIED when every instance's constructed witness passes its exact check. A
    witness the constructor built that fails the check is the constructor's ERROR (a bug in it,
    never a refutation of the claim); instances without a witness leave the claim NOT-SHOWN."""
    statuses = {i: outcome.certificates.get(i, {}).get("status") for i in active}
    failed = [i for i, s in statuses.items() if s == "failed"]
    certified = [i for i, s in statuses.items() if s == "certified"]
    if failed:
        outcome.verdict = "ERROR"
        outcome.reason = (f"the constructor's witness fails its exact check on instance(s) {failed} (a defect of "
                          f"the construction, not a refutation): " + outcome.certificates[failed[0]]["reason"][:500])
    elif len(certified) == len(active):
        outcome.verdict = "CERTIFIED"
        outcome.reason = (f"all {len(active)} instances carry a constructive witness checked in exact arithmetic; "
                          f"e.g. instance {active[0]}: {outcome.certificates[active[0]]['reason'][:300]}")
    else:
        _not_shown(outcome, f"{len(certified)}/{len(active)} witnesses checked; the rest: "
                   + "; ".join(f"instance {i}: {outcome.certificates.get(i, {}).get('reason', 'none')}"
                               for i in active if i not in certified)[:800])


def _decide_can_by_search(outcome: ClaimOutcome, active: list[int]) -> None:
    """A "can" claim about a method: REFUTED by a checked certificate of impossibility; CERTIFIED
    when every instance carries a witness (an adapter of the claim's method whose memorization
    the interval replay of the method's declared exact model confirms); else NOT-SHOWN, with the
    instances that lack one. A float64 solution without a confirmed enclosure is no witness."""
    refuting = [i for i in active if outcome.certificates.get(i, {}).get("status") == "certified"]
    if refuting:
        outcome.verdict = "REFUTED"
        outcome.reason = f"checked certificates of impossibility on instances {refuting}"
        return
    attempts = [a for runs in outcome.searches.values() for a in runs]
    witnessed = {a.instance for a in attempts if a.rigorously_solved}
    unconfirmed = {a.instance for a in attempts if a.solved and not a.rigorously_solved} - witnessed
    missing = [i for i in active if i not in witnessed]
    if not missing:
        worst = max(a.exact_max_error[1] for a in attempts if a.rigorously_solved)
        outcome.verdict = "CERTIFIED"
        outcome.reason = (f"all {len(active)} instances carry a witness: an adapter whose memorization the interval "
                          f"replay of the method's exact model confirms (largest enclosed max error {worst:.2e})")
        return
    best = {i: min((a.max_abs_error for a in attempts if a.instance == i), default=math.inf) for i in missing}
    detail = ", ".join(f"instance {i} ({'float64 solution, exact model not confirmed' if i in unconfirmed else f'best max error {best[i]:.2e}'})"
                       for i in missing[:20])
    _not_shown(outcome, f"{len(active) - len(missing)} of {len(active)} instances carry a confirmed witness; "
               f"without one: {detail} (a search miss is no proof of impossibility either)")


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
            outcome.certificates = {i: _certify_one(claim, outcome.instances[i], TOLERANCE) for i in active}
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
        outcome.comparisons = _run_searches(keep(claim.comparisons) + extra_comparisons, outcome, active, profile,
                                            base, progress)
        if claim.study is not None:
            outcome.study = claim.study(outcome.instances, outcome.certificates, profile, seed, log)
            outcome.violations.extend(outcome.study.get("violations", []))
    except PLUGIN_FAILURES as exc:  # a claim's own code, a built-in run: the claim's ERROR, in one line
        record_error(outcome, exc)
    return outcome


def search_config(profile: Profile, seed: int, device: str) -> SearchConfig:
    return SearchConfig(restarts=profile.restarts, steps=profile.steps, polish_steps=profile.polish_steps,
                        seed=seed, device=device, rounds=1, tolerance=SOLVED_MAX_ERROR)


def log_stderr(message: str) -> None:
    print(f"[peftaudit] {message}", file=sys.stderr, flush=True)


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
