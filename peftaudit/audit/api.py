"""run_audit: the one entry point the CLI, the pytest plugin and users' code share.

Layers: audit/ (this package: the entry points, reports, output folders) uses jobs/ (plan,
executors, store, merge), which uses evidence/ (the evidence record, its gathering, re-check and
verdict rules); nothing below imports what is above it.

An audit is planned as jobs (peftaudit/jobs), run by an executor (inline, a process pool, Ray),
each result appended to the store inside the out folder as it finishes, and the report built from
the stored results alone. `resume` picks up an unfinished out folder and runs what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from peftaudit.claims import Claim, claim_ids, expand_claims, get_claim
from peftaudit.claims.base import loads_in_workers
from peftaudit.errors import InputError, last_line
from peftaudit.evidence import ClaimOutcome
from peftaudit.jobs import Job, ResultStore, plan_audit
from peftaudit.jobs.executors import BACKENDS, check_ray_address, execute
from peftaudit.jobs.merge import merge_audit
from peftaudit.jobs.plan import check_jobs
from peftaudit.jobs.progress import JobProgress
from peftaudit.limits import MAX_JOBS, bounded_int
from peftaudit.log import log_stderr
from peftaudit.search.problems import resolve_device
from peftaudit.settings import get_profile

from .outdir import check_out_dir, check_resumable, set_aside
from .report import SCHEMA_VERSION, claim_json, job_errors, provenance, write_report


BUILTIN_METHODS = ("prompt", "prefix", "prefix-kv", "lora", "full")

STORE = "store"


@dataclass
class AuditResult:
    report: dict
    outcomes: list[ClaimOutcome]
    out_dir: Path | None

    @property
    def verdicts(self) -> dict[str, str]:
        return {c["id"]: c["verdict"] for c in self.report["claims"]}

    @property
    def refuted(self) -> bool:
        """A claim was refuted that was not registered to be (ablations and naive forms are)."""
        return any(c["verdict"] == "REFUTED" and c.get("expect") != "REFUTED" for c in self.report["claims"])

    @property
    def errors(self) -> list[str]:
        """Everything that ended in ERROR, one line each: claims, methods --methods added (in a
        claim or on their card) and calibration or card jobs that failed. Any makes `audit` exit 3."""
        out = [f"{c['id']}: {c['reason'][:200]}" for c in self.report["claims"] if c["verdict"] == "ERROR"]
        for c in self.report["claims"]:
            out += [f"{c['id']}: method {label}: {last_line(trace)}" for label, trace in c["method_errors"].items()]
        for name, entry in (self.report.get("cards") or {}).items():
            out += [f"card of {name}: {problem}" for problem in entry["card"]["conflicts"]]
            out += [f"card of {name}: {mname}: {last_line(trace)}" for mname, trace in entry["card"]["errors"].items()]
        out += [f"job {e['job']}: {e['error']} (traceback in {e['log']})" for e in self.report.get("job_errors", [])]
        return out

    @property
    def not_shown(self) -> list[str]:
        """The "can" claims some drawn instance of which carries no witness (they fail CI)."""
        return [c["id"] for c in self.report["claims"] if c["verdict"] == "NOT-SHOWN"]


def _check_methods(methods: Sequence[str]) -> None:
    from peftaudit.models.methods import get_method
    for m in methods:
        if not isinstance(m, str) or not m or len(m) > 300 or not m.isprintable():
            raise InputError("methods", m, "method names: printable text of 1 to 300 characters")
        get_method(m)  # unknown names (the known ones listed), unimportable or failing plugins: InputError


def _backend(backend: str, jobs: int, claims: Sequence[Claim], address: str | None = None) -> str:

    bounded_int("jobs", jobs, 1, MAX_JOBS, "a number of workers")
    chosen = ("inline" if jobs == 1 else "process") if backend == "auto" else backend
    if chosen not in BACKENDS:
        raise InputError("backend", backend, "one of auto, " + ", ".join(BACKENDS))
    most = max(4, 2 * (os.cpu_count() or 1))
    if chosen == "process" and jobs > most:  # each worker is a Python with torch: memory, not speed
        raise InputError("jobs", jobs, f"at most {most} local workers (2 per CPU) for --backend process")
    if address is not None:
        if chosen != "ray":
            raise InputError("--address", address, "--backend ray beside it (only Ray joins a cluster)")
        check_ray_address(address)
    if chosen != "inline":
        foreign = [c.id for c in claims if not loads_in_workers(c)]
        if foreign:
            raise InputError("claims", foreign, f"claims a worker can load by id (built in, or from the entry point "
                                                f"group peftaudit.claims) for --backend {chosen}; claims made at run "
                                                f"time need --backend inline")
    return chosen


def run_audit(claims: Sequence[str | Claim] | None = None, *, profile: str = "quick", seed: int = 0,
              methods: Sequence[str] | None = None, jobs: int = 1, backend: str = "auto", address: str | None = None,
              device: str = "auto", out: str | Path | None = None, force: bool = False, calibration: bool = True,
              progress: bool = True, quiet: bool = False, argv: Sequence[str] = (), cards: bool = True,
              card_families: Sequence[str] | None = None, threads: int = 1,
              instances: int | None = None) -> AuditResult:
    """Audit claims (ids or Claim objects; default: every registered claim) and write a report.

    `out` is checked before any work (audit/outdir.py): it must be new or empty, or with `force`
    a previous peftaudit report, which is set aside and removed once the new report is in place.
    `jobs` workers run the jobs: backend "auto" is inline for one, a spawned process pool for more;
    "ray" runs them on Ray (a local Ray, or the cluster at `address`). With `cards`, every method
    in `methods` that is not built in (a plugin, a peft guest) also gets its method card. Every job
    runs with `threads` torch threads, on every backend, so the report does not depend on either.
    `instances` overrides the profile's instances per claim (claims with a fixed list draw theirs)."""

    if out is not None:
        check_out_dir(out, force)
    prof = get_profile(profile)
    resolved = expand_claims(claims or claim_ids())
    chosen = _backend(backend, jobs, resolved, address)
    if methods is not None:
        _check_methods(methods)
    dev = resolve_device(device)
    added = [m for m in methods or () if m not in BUILTIN_METHODS] if cards else []
    plan = plan_audit(resolved, prof, seed, methods=methods, device=str(dev), calibration=calibration, cards=added,
                      card_families=card_families, argv=argv, threads=threads, instances=instances)
    store, out_dir = None, None
    if out is not None:
        out_dir = Path(out)
        set_aside(out_dir, force)   # a previous report (only with force) moves to a hidden sibling
        out_dir.mkdir(parents=True, exist_ok=True)
        store = ResultStore.create(out_dir / STORE, plan)
    return _run(plan, resolved, store, out_dir, chosen, jobs, address, progress, quiet)


def resume_audit(folder: str | Path, *, jobs: int = 1, backend: str = "auto", address: str | None = None,
                 progress: bool = True, quiet: bool = False) -> AuditResult:
    """Finish the audit in `folder` (an out folder an interrupted run left): the jobs its store
    holds are not run again, a damaged last line is redone, and the report is written there."""

    out_dir = check_resumable(folder)
    store = ResultStore(out_dir / STORE)
    plan = store.plan()
    claims = [get_claim(cid) for cid in plan.claims]
    chosen = _backend(backend, jobs, claims, address)
    if plan.methods:
        _check_methods(plan.methods)
    check_jobs(plan, claims)
    resolve_device(plan.device)  # a run planned for CUDA needs CUDA to resume
    return _run(plan, claims, store, out_dir, chosen, jobs, address, progress, quiet)


def _run(plan, claims: list[Claim], store, out_dir: Path | None, backend: str, workers: int, address: str | None,
         progress: bool, quiet: bool) -> AuditResult:

    log = (lambda s: None) if quiet else log_stderr
    results = store.read({j.key: j for j in plan.jobs}) if store is not None else {}
    if store is not None and (results or store.dropped):
        log(f"resuming: {len(results)} of {len(plan.jobs)} jobs finished"
            + (f", {store.dropped} damaged line(s) dropped and redone" if store.dropped else ""))
    todo = [j for j in plan.jobs if j.key not in results]
    bars = JobProgress(plan, results, enabled=progress and backend != "inline", log=log)

    def finished(job_doc: dict, result: dict) -> None:
        key = Job.from_json(job_doc).key
        if store is not None:
            result = store.keep_certificates(result)  # certificates to files, before the line
            store.append(key, result)
        results[key] = result
        bars.done(key, result)

    inline_claims = {c.id: c for c in claims} if backend == "inline" else None
    try:
        # each job gets the plan's settings, not its whole job list (parsed again for every job)
        execute(backend, replace(plan, jobs=()).to_json(), [j.to_json() for j in todo], finished, workers=workers, address=address,
                progress=progress, verbose=not quiet, claims=inline_claims)
    finally:
        bars.close()
    outcomes, calibration, cards, failed = merge_audit(plan, claims, results,
                                                       read_stored=store.certificate if store is not None else None)
    report = {"schema": SCHEMA_VERSION, "provenance": provenance(plan.seed, plan.profile, plan.device, list(plan.argv)),
              "claims": [claim_json(o) for o in outcomes], "calibration": calibration,
              "job_errors": job_errors(failed)}
    report["provenance"]["started"] = plan.started
    report["provenance"]["instances"] = plan.instances  # None: the profile's count
    report["provenance"]["executor"] = {"backend": backend, "workers": workers, "cpus": os.cpu_count(),
                                        "resumed": len(plan.jobs) - len(todo)}
    if cards:
        from peftaudit.card.battery import card_folder
        report["cards"] = {m: {"folder": f"cards/{card_folder(m)}", "card": card} for m, card in cards.items()}
    if out_dir is not None:
        write_report(report, outcomes, out_dir, store=store)
    return AuditResult(report, outcomes, out_dir)
