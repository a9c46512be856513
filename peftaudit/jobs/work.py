"""One job, from plain JSON to plain JSON: what every executor runs (in this process, a spawned
worker or a Ray task). Pure: the result depends on the plan and the job alone."""

from __future__ import annotations

import traceback
from dataclasses import replace

from peftaudit.errors import PLUGIN_FAILURES
from peftaudit.evidence import audit_chunk, search_config

from .plan import AuditPlan, Job


def run_job(plan_doc: dict, job_doc: dict, progress: bool = False, log=None, claims: dict | None = None) -> dict:
    """The result of one job as JSON-ready data. A claim job's exceptions become the claim's errors
    (audit_chunk records them); a calibration's or a card's become {"error": traceback}. Claims
    come from `claims` (id -> Claim, inline runs) or are loaded by id."""
    from peftaudit.search.problems import torch_threads

    plan = AuditPlan.from_json(plan_doc)
    with torch_threads(plan.threads):  # the plan's, whatever this worker's default: same floats
        return _run(plan, Job.from_json(job_doc), progress, log or (lambda s: None), claims)


def _run(plan: AuditPlan, job: Job, progress: bool, log, claims: dict | None) -> dict:
    profile = plan.profile_settings()
    # a card's search runs on the audit seed itself, as `peftaudit card METHOD --seed S` does, so
    # the audit's card and the standalone card of a method agree (same profile, seed, threads)
    base = search_config(profile, plan.seed if job.kind == "card" else job.seed, plan.device)
    if job.kind == "claim":
        from peftaudit.claims import get_claim
        try:
            claim = claims[job.name] if claims and job.name in claims else get_claim(job.name)
        except PLUGIN_FAILURES as exc:  # e.g. a claim registered only in the parent process
            return {"kind": "claim", "span": [job.start, job.stop],
                    "errors": [f"claim {job.name!r} could not be loaded in this worker ({exc}); a claim registered "
                               f"at run time (not by the entry point group peftaudit.claims) needs --backend inline"]}
        outcome = audit_chunk(claim, profile, plan.seed, base, job.start, job.stop,
                              methods=set(plan.methods) if plan.methods else None, progress=progress, log=log)
        return outcome.to_json()
    try:
        if job.kind == "calibrate":
            from peftaudit.search.calibrate import calibrate
            log(f"calibration: {job.name} search on {profile.planted} planted instances")
            return {"kind": "calibrate", "calibration": calibrate(job.name, profile.planted, replace(base, rounds=2),
                                                                  progress=progress).to_json()}
        from peftaudit.card import run_battery
        log(f"method card: {job.name}")
        return {"kind": "card", "card": run_battery(job.name, {}, profile, plan.seed, base,
                                                    families=plan.card_families, log=log)}
    except PLUGIN_FAILURES:  # a plugin's exception or sys.exit; Ctrl-C and SIGTERM pass
        return {"kind": job.kind, "error": traceback.format_exc(limit=8)}
