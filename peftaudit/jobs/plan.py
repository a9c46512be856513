"""The plan of an audit: its settings and its jobs, each with a seed derived from the audit seed.

A job is pure data (JSON): a claim's instance chunk [start, stop), a calibration method, or a
method card. The split depends on the profile only (its `chunk`), never on the executor or the
number of workers, so every backend computes the same jobs with the same seeds and the report is
the same. Seeds come from numpy's SeedSequence keyed by the job, so any job reruns alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Sequence

import numpy as np

from peftaudit.errors import InputError
from peftaudit.settings import Profile, get_profile

PLAN_SCHEMA = "peftaudit.plan/1"
MAX_INSTANCES = 100_000   # --instances: per claim
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
    def from_json(doc: dict) -> "Job":
        return Job(**{k: doc[k] for k in ("kind", "name", "seed", "start", "stop")})


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
        if not isinstance(doc, dict) or doc.get("schema") != PLAN_SCHEMA:
            raise InputError("plan", str(doc)[:80], f"a {PLAN_SCHEMA} document (store/plan.json of an audit)")
        get_profile(doc.get("profile"))  # an unknown profile is refused here, naming the known ones
        try:
            tup = lambda x: None if x is None else tuple(x)  # noqa: E731
            return AuditPlan(profile=doc["profile"], seed=int(doc["seed"]), claims=tuple(doc["claims"]),
                             methods=tup(doc["methods"]), device=doc["device"],
                             card_families=tup(doc["card_families"]),
                             argv=tuple(doc["argv"]), threads=int(doc["threads"]),
                             instances=None if doc["instances"] is None else int(doc["instances"]),
                             started=doc["started"],
                             jobs=tuple(Job.from_json(j) for j in doc["jobs"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("plan", str(doc)[:80], f"a complete {PLAN_SCHEMA} document ({exc})") from None


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
    if threads < 1:
        raise InputError("threads", threads, "a positive number of torch threads per job")
    if instances is not None:
        if not 1 <= instances <= MAX_INSTANCES:
            raise InputError("instances", instances, f"a number of instances per claim in 1..{MAX_INSTANCES}")
        profile = replace(profile, instances=instances)
    from peftaudit.search.calibrate import CALIBRATION_METHODS

    jobs: list[Job] = []
    for claim in claims:
        try:
            count = len(claim.draw(profile, seed))
        except Exception:  # noqa: BLE001 - the job reports the draw's error as the claim's ERROR
            count = 0
        for start, stop in chunks(count, profile.chunk, claim.study is not None):
            jobs.append(Job("claim", claim.id, job_seed(seed, "claim", claim.id, start), start, stop))
    if calibration:
        jobs += [Job("calibrate", m, job_seed(seed, "calibrate", m)) for m in CALIBRATION_METHODS]
    jobs += [Job("card", m, job_seed(seed, "card", m)) for m in cards]
    return AuditPlan(profile.name, seed, tuple(c.id for c in claims), None if methods is None else tuple(methods),
                     device, None if card_families is None else tuple(card_families), tuple(argv), threads, instances,
                     jobs=tuple(jobs))
