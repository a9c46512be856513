"""The Claim type and the claims registry (a decorator plus the entry-point group peftaudit.claims)."""

from __future__ import annotations

from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from peftaudit.errors import PLUGIN_FAILURES, PeftauditError, UnknownNameError, one_line
from peftaudit.instance import Instance
from peftaudit.settings import Profile

ENTRY_POINT_GROUP = "peftaudit.claims"


class PluginLoadError(PeftauditError):
    """A claims plugin that failed to load, raised where its claim is drawn."""


@dataclass(frozen=True)
class MethodRun:
    """A method to search with: name, options, sizes (None: the profile's prompt lengths), and an
    optional projected bound on prompt/prefix token norms (None: unbounded)."""
    method: str
    options: dict = field(default_factory=dict)
    sizes: tuple[int, ...] | None = None
    norm_bound: float | None = None

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return (self.method + (f"[{opts}]" if opts else "") + (f"@{','.join(map(str, self.sizes))}" if self.sizes else "")
                + (f" |p|<={self.norm_bound:g}" if self.norm_bound is not None else ""))


@dataclass(frozen=True)
class StudyTable:
    """A claim's own table in its report section (the claim builds it from its study's data)."""
    caption: str
    headers: tuple[str, ...]
    rows: list[list[str]]  # one list of cells per instance (or per instance and layer)
    note: str


@dataclass(frozen=True)
class Claim:
    """A claim about what a PEFT method cannot (or can) learn, and how evidence counts.

    kind "cannot": a replayed adapter found by a falsifier refutes it; certificates support it.
    kind "can": a checked certificate of impossibility refutes it; it is CERTIFIED only when every
    instance carries a witness (an adapter of the falsifier runs, here the claim's method, whose
    memorization the interval replay of its exact model confirms), else NOT-SHOWN (fails CI).
    evidence "witness": certify builds a witness per instance, checked exactly. For "can" (U, Z1-relu)
    every witness passing certifies the claim, and one failing is the constructor's ERROR; for
    "cannot" (P1-encoder, Z1-relu-unbounded) a passing witness is a counterexample and refutes it.
    """
    id: str
    title: str
    source: str            # paper and section
    formalization: str     # our precise statement, one paragraph
    kind: str              # "cannot" | "can"
    draw: Callable[[Profile, int], Sequence[Instance]]  # the strategy: instances for a profile and seed
    hypotheses: Callable[[Instance], str | None]        # None when they hold, else why (vacuous)
    falsifiers: tuple[MethodRun, ...]
    contrasts: tuple[MethodRun, ...] = ()               # methods that must succeed on the same instances
    comparisons: tuple[MethodRun, ...] = ()             # reported for context, no expectation
    certify: Callable[[Instance, float], object] | None = None  # -> verify.l1.CertifyResult-like
    refuted_by: str = "a replayed adapter from a falsifier"
    group: str = ""        # a parent claim id: `--claims M` also runs every claim of group "M"
    expect: str = ""       # "REFUTED" for statements registered to be refuted (ablations, naive forms)
    dropped: str = ""      # for ablations: the condition of the parent claim this statement drops
    parameter_table: bool = False  # report the parameters each method needed, per instance (L2's table)
    evidence: str = ""     # "witness": certify returns constructive witnesses (claim U)
    study: Callable | None = None  # (instances, certificate summaries, profile, seed, log) -> report section data
    study_table: Callable[[dict], StudyTable] | None = None  # the study's data -> its table in the report
    subject: str = ""      # the method the claim is about: --methods never drops its runs (user claims set it)


_REGISTRY: dict[str, Claim] = {}
_loaded = False


def register_claim(claim: Claim) -> Claim:
    """Register (or replace) a claim; returns it, so it works as a plain call or in a decorator."""
    _REGISTRY[claim.id] = claim
    return claim


def claim(factory: Callable[[], Claim]) -> Callable[[], Claim]:
    """Decorator: register the Claim that `factory()` returns."""
    register_claim(factory())
    return factory


_AT_LOAD: dict[str, Claim] = {}  # the registry as loading left it (built-ins, entry points)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import l1, l2, lv, lv_scale, m, p1, u, z1  # noqa: F401  (built-in claims)
    # built-in claims first, in module order, whichever module a caller imported first
    order = [f"{__package__}.{name}" for name in ("l1", "l2", "lv", "lv_scale", "m", "p1", "u", "z1")]
    rank = {cid: (order.index(c.draw.__module__) if c.draw.__module__ in order else len(order), i)
            for i, (cid, c) in enumerate(_REGISTRY.items())}
    reordered = sorted(_REGISTRY.items(), key=lambda item: rank[item[0]])
    _REGISTRY.clear()
    _REGISTRY.update(reordered)
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            result = obj if isinstance(obj, Claim) else obj() if callable(obj) else None
        except PLUGIN_FAILURES as exc:  # a broken plugin: an ERROR of its own claim, the others run
            register_claim(broken_plugin_claim(ep.name, ep.value, exc))
            continue
        if isinstance(result, Claim):
            register_claim(result)
        else:
            register_claim(broken_plugin_claim(ep.name, ep.value, TypeError(
                f"the entry point gives {type(result).__name__}, not a Claim (or a function returning one)")))
    _AT_LOAD.update(_REGISTRY)


def broken_plugin_claim(name: str, target: str, exc: BaseException) -> Claim:
    """A stand-in registered under a claims entry point that failed to load: every audit that
    takes it (all claims, or --claims NAME) reports it as ERROR with the plugin's exception in one
    line, and no other claim is touched."""
    why = f"the claims plugin {name} ({target}) failed to load: {one_line(exc)}"

    def draw(profile: Profile, seed: int) -> Sequence[Instance]:
        raise PluginLoadError(why)
    return Claim(id=name, title=f"claims plugin {name} (failed to load)", source=f"entry point {target}",
                 formalization=why, kind="cannot", draw=draw, hypotheses=lambda inst: None, falsifiers=())


def loads_in_workers(claim: Claim) -> bool:
    """The claim is the one a fresh interpreter registers under its id (built in, or from the entry
    point group), so a worker process that loads claims by id gets this very claim."""
    _load()
    return _AT_LOAD.get(claim.id) is claim


def claim_ids() -> list[str]:
    _load()
    return list(_REGISTRY)


def expand_claims(items: Sequence[str | Claim]) -> list[Claim]:
    """Claims for ids (each followed by the claims of its group, in registration order) and Claim
    objects (taken as they are), without repeats."""
    _load()
    out: list[Claim] = []
    for item in items:
        group = [item] if isinstance(item, Claim) else \
            [get_claim(item)] + [c for c in _REGISTRY.values() if c.group == item]
        out.extend(c for c in group if c not in out)
    return out


def get_claim(claim_id: str) -> Claim:
    _load()
    if claim_id not in _REGISTRY:
        raise UnknownNameError("claim", claim_id, list(_REGISTRY))
    return _REGISTRY[claim_id]


def unregister_claim(claim_id: str) -> None:
    _REGISTRY.pop(claim_id, None)


@contextmanager
def registered_claim(claim: Claim) -> Iterator[Claim]:
    """Register `claim` for the body of a `with` (tests, notebooks), then restore whatever was
    registered under its id before."""
    _load()
    before = _REGISTRY.get(claim.id)
    register_claim(claim)
    try:
        yield claim
    finally:
        if before is None:
            _REGISTRY.pop(claim.id, None)
        else:
            _REGISTRY[claim.id] = before
