"""The verdict rules (docs/design.md, "Verdicts"), never merged: from a claim's evidence to its verdict and reason.

CERTIFIED (every non-vacuous instance carries a certificate checked in exact arithmetic, or for a
"can" claim a witness checked exactly or confirmed by the interval replay), REFUTED (a replayed
counterexample), NOT-SHOWN (a "can" claim some instance of which has no witness: it fails CI),
SURVIVED (a "cannot" claim: budget spent, nothing found, not everything certified), VACUOUS (no
instance met the hypotheses), UNKNOWN (a certifier timed out or was inconclusive and nothing else
decides), ERROR (an exception, or a soundness conflict such as a search result below a certified
margin).
"""

from __future__ import annotations

import math

from peftaudit.search.engine import non_finite

from .outcome import ClaimOutcome


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
    for label, attempts in outcome.searches.items():
        inherited = outcome.added.get(label) == "falsifier"  # searched because of what it declared
        for a in attempts:
            cert = outcome.certificates.get(a.instance)
            if cert and cert["status"] == "certified" and a.max_abs_error < cert["margin"]:
                declared = "; its declaration (input-space, or its update_class) is false" if inherited else ""
                outcome.violations.append(
                    f"instance {a.instance}: {a.method} size {a.size} reached {a.max_abs_error:.3g} below the "
                    f"certified margin {cert['margin']:.3g}{declared}")
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


