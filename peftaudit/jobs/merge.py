"""Stored job results back into decided claim outcomes and the report's calibration and cards."""

from __future__ import annotations

from typing import Callable

from peftaudit.claims import Claim
from peftaudit.errors import PLUGIN_FAILURES, one_line
from peftaudit.evidence import SOLVED_MAX_ERROR, ClaimOutcome, decide, recheck_certificates, recheck_replays
from peftaudit.settings import Profile

from .plan import AuditPlan


def merge_claim(claim: Claim, results: list[dict], profile: Profile, seed: int,
                read_stored: Callable[[dict], bytes] | None = None) -> ClaimOutcome:
    """One claim's chunks as one outcome, its evidence checked again against the claim's own draw
    (peftaudit/evidence/recheck.py), decided by the verdict rules."""
    o = ClaimOutcome.merged(claim, results)
    _recheck(o, profile, seed, read_stored)
    decide(o)
    return o


def _recheck(o: ClaimOutcome, profile: Profile, seed: int, read_stored) -> None:
    """Every stored certificate and confirmed replay checked again on the instances the claim
    draws (the stored instances are not trusted: the draw is reproducible from the seed)."""
    try:
        drawn = list(o.claim.draw(profile, seed))
    except PLUGIN_FAILURES as exc:  # a user's claim may raise anything
        if not o.errors:  # (when its job already failed on the draw, that error says it)
            o.errors.append(f"the claim's draw failed while its evidence was read back: {one_line(exc)}")
        return
    o.instances = drawn
    o.errors.extend(recheck_certificates(o.certificates, drawn, o.claim.evidence == "witness", read_stored))
    o.errors.extend(recheck_replays(o.searches, drawn, SOLVED_MAX_ERROR))


def merge_audit(plan: AuditPlan, claims: list[Claim], results: dict[str, dict],
                read_stored: Callable[[dict], bytes] | None = None
                ) -> tuple[list[ClaimOutcome], dict, dict, dict[str, str]]:
    """(outcomes in plan order, calibration by method, cards by method, failed jobs) from every
    job's result; `read_stored` reads a certificate the store keeps in a file. A calibration or
    card job that failed is that job's ERROR (job key -> its traceback), the rest of the report
    stands; claims carry their own errors."""
    profile = plan.profile_settings()
    outcomes = [merge_claim(c, [results[j.key] for j in plan.jobs_of("claim", c.id)], profile, plan.seed, read_stored)
                for c in claims]
    calibration, cards, failed = {}, {}, {}
    for job in plan.jobs:
        if job.kind == "claim":
            continue
        r = results[job.key]
        if "error" in r:
            failed[job.key] = str(r["error"])
        elif job.kind == "calibrate":
            calibration[job.name] = r["calibration"]
        else:
            cards[job.name] = r["card"]
    return outcomes, calibration, cards, failed
