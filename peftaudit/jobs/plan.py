"""The plan of an audit: its settings and its jobs, each with a seed derived from the audit seed.

A job is pure data (JSON): a claim's instance chunk [start, stop), a calibration method, or a
method card. The split depends on the profile only (its `chunk`), never on the executor or the
number of workers, so every backend computes the same jobs with the same seeds and the report is
the same. Seeds come from numpy's SeedSequence keyed by the job, so any job reruns alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Sequence

import numpy as np

from peftaudit.errors import PLUGIN_FAILURES, InputError
from peftaudit.limits import MAX_INSTANCES, MAX_SEED, MAX_THREADS, bounded_int
from peftaudit.settings import Profile, get_profile

PLAN_SCHEMA = "peftaudit.plan/1"
MAX_PLAN_JOBS = 1_000_000
KINDS = ("claim", "calibrate", "card")


@dataclass(frozen=True)
class Job:
    kind: str              # "claim" | "calibrate" | "card"
    name: str              # the claim id, or the method's name
    seed: int              # the job's own seed (search and calibration); draws use the audit seed
    start: int = 0         # claim jobs: instances [start, stop) of the claim's draw
    stop: int = 0

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}:{self.start}" if self.kind == "claim" else f"{self.kind}:{self.name}"

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(doc: object) -> "Job":
        """A job from JSON, every field checked (a plan file is input like the command line)."""
        if not isinstance(doc, dict) or set(doc) != {"kind", "name", "seed", "start", "stop"}:
            raise InputError("plan job", doc, "an object with exactly kind, name, seed, start, stop")
        if doc["kind"] not in KINDS:
            raise InputError("plan job kind", doc["kind"], "one of " + ", ".join(KINDS))
        _text("plan job name", doc["name"])
        bounded_int("plan job seed", doc["seed"], 0, 2**63 - 1, "a job seed")
        start = bounded_int("plan job start", doc["start"], 0, MAX_INSTANCES, "an instance index")
        bounded_int("plan job stop", doc["stop"], start, MAX_INSTANCES, "an instance index from start")
        return Job(**{k: doc[k] for k in ("kind", "name", "seed", "start", "stop")})


def _text(field: str, value: object, limit: int = 300) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise InputError(field, value, f"printable text of 1 to {limit} characters")
    return value


def _names(field: str, value: object, optional: bool) -> tuple[str, ...] | None:
    if value is None and optional:
        return None
    if not isinstance(value, (list, tuple)) or len(value) > 1000:
        raise InputError(field, value, "a list of at most 1000 names" + (" or null" if optional else ""))
    return tuple(_text(field, v) for v in value)


@dataclass(frozen=True)
class AuditPlan:
    """Everything that decides an audit's results: written first into the store, read on --resume."""
    profile: str
    seed: int
    claims: tuple[str, ...]
    methods: tuple[str, ...] | None
    device: str
    card_families: tuple[str, ...] | None
    argv: tuple[str, ...] = ()
    threads: int = 1       # torch threads every job runs with, on every backend (results depend on it)
    instances: int | None = None  # instances per claim, overriding the profile's (None: the profile's)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    jobs: tuple[Job, ...] = ()

    def to_json(self) -> dict:
        doc = {k: v for k, v in asdict(self).items() if k != "jobs"}
        return {"schema": PLAN_SCHEMA, **doc, "jobs": [j.to_json() for j in self.jobs]}

    @staticmethod
    def from_json(doc: object) -> "AuditPlan":
        """A plan from JSON with every field checked as the command line checks it: a changed or
        hostile store/plan.json is refused (InputError naming the field), never trusted."""
        fields = {"schema", "profile", "seed", "claims", "methods", "device", "card_families", "argv", "threads",
                  "instances", "started", "jobs"}
        if not isinstance(doc, dict) or doc.get("schema") != PLAN_SCHEMA:
            raise InputError("plan", str(doc)[:80], f"a {PLAN_SCHEMA} document (store/plan.json of an audit)")
        if set(doc) != fields:
            raise InputError("plan", sorted(doc), f"exactly the fields {', '.join(sorted(fields))}")
        get_profile(doc["profile"])  # an unknown profile is refused here, naming the known ones
        if not isinstance(doc["device"], str) or not re.fullmatch(r"cpu|cuda(:[0-9]{1,3})?", doc["device"]):
            raise InputError("plan device", doc["device"], "cpu, cuda or cuda:N")
        argv = doc["argv"]
        if not isinstance(argv, (list, tuple)) or len(argv) > 1000 or not all(isinstance(a, str) and len(a) <= 10_000
                                                                     for a in argv):
            raise InputError("plan argv", str(argv)[:80], "the command line, a list of strings")
        if not isinstance(doc["started"], str) or len(doc["started"]) > 64:
            raise InputError("plan started", doc["started"], "a time stamp")
        jobs = doc["jobs"]
        if not isinstance(jobs, (list, tuple)) or len(jobs) > MAX_PLAN_JOBS:
            raise InputError("plan jobs", str(jobs)[:80], f"a list of at most {MAX_PLAN_JOBS} jobs")
        plan = AuditPlan(profile=doc["profile"],
                         seed=bounded_int("plan seed", doc["seed"], 0, MAX_SEED, "a seed"),
                         claims=_names("plan claims", doc["claims"], optional=False),
                         methods=_names("plan methods", doc["methods"], optional=True), device=doc["device"],
                         card_families=_names("plan card_families", doc["card_families"], optional=True),
                         argv=tuple(argv),
                         threads=bounded_int("plan threads", doc["threads"], 1, MAX_THREADS, "torch threads per job"),
                         instances=None if doc["instances"] is None else
                         bounded_int("plan instances", doc["instances"], 1, MAX_INSTANCES, "instances per claim"),
                         started=doc["started"], jobs=tuple(Job.from_json(j) for j in jobs))
        if len({j.key for j in plan.jobs}) != len(plan.jobs):
            raise InputError("plan jobs", "a job listed twice", "each job once")
        return plan

    def profile_settings(self) -> Profile:
        """The profile the jobs run with: the named one, with `instances` overridden when set."""
        profile = get_profile(self.profile)
        return profile if self.instances is None else replace(profile, instances=self.instances)

    def jobs_of(self, kind: str, name: str) -> list[Job]:
        return [j for j in self.jobs if j.kind == kind and j.name == name]


def job_seed(seed: int, kind: str, name: str, start: int = 0) -> int:
    """A 63-bit seed for one job, from SeedSequence(audit seed) keyed by the job."""
    tag = int.from_bytes(hashlib.sha256(f"{kind}:{name}".encode()).digest()[:4], "little")
    state = np.random.SeedSequence(seed, spawn_key=(KINDS.index(kind), tag, start)).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


def chunks(count: int, size: int, single: bool) -> list[tuple[int, int]]:
    """[start, stop) pieces of `count` instances, `size` each (one piece when `single`)."""
    if single or count <= size:
        return [(0, count)]
    return [(s, min(s + size, count)) for s in range(0, count, size)]


def plan_audit(claims: Sequence, profile: Profile, seed: int, *, methods: Sequence[str] | None, device: str,
               calibration: bool, cards: Sequence[str], card_families: Sequence[str] | None,
               argv: Sequence[str] = (), threads: int = 1, instances: int | None = None) -> AuditPlan:
    """The jobs of an audit: each claim's draw in chunks of profile.chunk instances (a claim with a
    study in one), then a calibration per method, then a card per added method. `threads`: the
    torch threads of every job, part of the plan because float results of large products can
    depend on it (a reduction split differently); 1 by default, so that workers, not threads,
    share the cores (2 workers of 2 threads on 2 cores ran the quick audit 4x slower)."""
    bounded_int("seed", seed, 0, MAX_SEED, "a seed")
    bounded_int("threads", threads, 1, MAX_THREADS, "torch threads per job")
    if instances is not None:
        bounded_int("instances", instances, 1, MAX_INSTANCES, "instances per claim")
        profile = replace(profile, instances=instances)
    from peftaudit.search.calibrate import CALIBRATION_METHODS

    jobs: list[Job] = []
    for claim in claims:
        try:
            count = len(claim.draw(profile, seed))
        except PLUGIN_FAILURES:  # the job reports the draw's error as the claim's ERROR
            count = 0
        for start, stop in chunks(count, profile.chunk, claim.study is not None):
            jobs.append(Job("claim", claim.id, job_seed(seed, "claim", claim.id, start), start, stop))
    if calibration:
        jobs += [Job("calibrate", m, job_seed(seed, "calibrate", m)) for m in CALIBRATION_METHODS]
    jobs += [Job("card", m, job_seed(seed, "card", m)) for m in cards]
    return AuditPlan(profile.name, seed, tuple(c.id for c in claims), None if methods is None else tuple(methods),
                     device, None if card_families is None else tuple(card_families), tuple(argv), threads, instances,
                     jobs=tuple(jobs))


def check_jobs(plan: AuditPlan, claims: Sequence) -> None:
    """The plan's jobs are exactly those its own settings plan (same claims, chunks and seeds;
    calibration and cards as it lists them, cards only for its methods): an edited plan.json
    (another profile, a count, a seed) is refused, never run."""
    cards = [j.name for j in plan.jobs if j.kind == "card"]
    if not set(cards) <= set(plan.methods or ()):
        raise InputError("plan jobs", cards, "cards only for the plan's methods")
    expected = plan_audit(claims, get_profile(plan.profile), plan.seed, methods=plan.methods, device=plan.device,
                          calibration=any(j.kind == "calibrate" for j in plan.jobs), cards=cards,
                          card_families=plan.card_families, argv=plan.argv, threads=plan.threads,
                          instances=plan.instances)
    if expected.jobs != plan.jobs:
        differ = next((f"{b.to_json()} where its settings give {a.to_json()}"
                       for a, b in zip(expected.jobs, plan.jobs) if a != b),
                      f"{len(plan.jobs)} jobs, its settings plan {len(expected.jobs)}")
        raise InputError("plan jobs", differ, "the jobs the plan's own settings give (store/plan.json was changed)")
