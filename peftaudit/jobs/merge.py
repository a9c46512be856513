"""Stored job results back into decided claim outcomes and the report's calibration and cards."""

from __future__ import annotations

from peftaudit.audit.runner import ClaimOutcome, decide
from peftaudit.claims import Claim
from peftaudit.errors import PeftauditError

from .plan import AuditPlan
from .work import attempt_from_json


def merge_claim(claim: Claim, results: list[dict]) -> ClaimOutcome:
    """One claim's chunks (in instance order) as one outcome, decided by the verdict rules."""
    from peftaudit.instance import from_dict

    o = ClaimOutcome(claim)
    o.instances = {}
    for r in sorted(results, key=lambda r: r["span"][0]):
        o.shapes.extend(r.get("shapes", []))
        o.vacuous.update({int(i): why for i, why in r.get("vacuous", {}).items()})
        o.certificates.update({int(i): s for i, s in r.get("certificates", {}).items()})
        for field in ("searches", "contrasts", "comparisons"):
            merged = getattr(o, field)
            for label, rows in r.get(field, {}).items():
                merged.setdefault(label, []).extend(attempt_from_json(a) for a in rows)
        o.errors.extend(r.get("errors", []))
        o.method_errors.update(r.get("method_errors", {}))
        o.added.update(r.get("added", {}))
        o.violations.extend(r.get("violations", []))
        o.study = r.get("study") or o.study
        o.instances.update({int(i): from_dict(doc) for i, doc in r.get("instances", {}).items()})
    decide(o)
    return o


def merge_audit(plan: AuditPlan, claims: list[Claim], results: dict[str, dict]) -> tuple[list[ClaimOutcome], dict, dict]:
    """(outcomes in plan order, calibration by method, cards by method) from every job's result.
    A calibration or card job that failed raises (its traceback named); claims never do."""
    outcomes = [merge_claim(c, [results[j.key] for j in plan.jobs_of("claim", c.id)]) for c in claims]
    calibration, cards = {}, {}
    for job in plan.jobs:
        if job.kind == "claim":
            continue
        r = results[job.key]
        if "error" in r:
            raise PeftauditError(f"job {job.key} failed:\n{r['error']}")
        if job.kind == "calibrate":
            calibration[job.name] = r["calibration"]
        else:
            cards[job.name] = r["card"]
    return outcomes, calibration, cards
