"""The record every stage of an audit passes on: one claim's evidence and, once decided, its
verdict (ClaimOutcome), with its own JSON form. A chunk's outcome travels as JSON from whoever ran
it (this process, a pool worker, Ray, a store read back by --resume) and is merged back with
`ClaimOutcome.merged`; `instances` is always the claim's whole draw, a list.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

from peftaudit.claims import Claim
from peftaudit.search.engine import Attempt

VERDICTS = ("CERTIFIED", "REFUTED", "NOT-SHOWN", "SURVIVED", "VACUOUS", "UNKNOWN", "ERROR")
TOLERANCE = 1e-9          # certified means margin > TOLERANCE at the layer output
SOLVED_MAX_ERROR = 1e-8   # a replayed max error at most this memorizes (numerically)


@dataclass
class ClaimOutcome:
    """Everything the report says about one claim (plain data, JSON-ready via to_json)."""
    claim: Claim
    instances: Sequence = field(default_factory=list)  # the claim's whole draw (indices are global)
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

    def to_json(self) -> dict:
        """A chunk's evidence as plain JSON; adapters only where a report file needs them (a
        counterexample or a witness). Instances are not stored: they are drawn again on merge."""
        searches = {label: [attempt_to_json(a, a.rigorously_solved) for a in attempts]
                    for label, attempts in self.searches.items()}
        plain = lambda runs: {k: [attempt_to_json(a, False) for a in v] for k, v in runs.items()}  # noqa: E731
        return {"kind": "claim", "claim": self.claim.id, "span": list(self.span), "shapes": self.shapes,
                "vacuous": {str(i): why for i, why in self.vacuous.items()},
                "certificates": {str(i): s for i, s in self.certificates.items()},
                "searches": searches, "contrasts": plain(self.contrasts), "comparisons": plain(self.comparisons),
                "errors": self.errors, "tracebacks": self.tracebacks, "method_errors": self.method_errors,
                "added": self.added, "not_applicable": self.not_applicable, "violations": self.violations,
                "study": self.study}

    @staticmethod
    def merged(claim: Claim, chunks: Sequence[dict]) -> "ClaimOutcome":
        """One claim's chunks (JSON, any order) as one undecided outcome, in instance order."""
        o = ClaimOutcome(claim)
        for r in sorted(chunks, key=lambda r: r["span"][0]):
            o.shapes.extend(r.get("shapes", []))
            o.vacuous.update({int(i): why for i, why in r.get("vacuous", {}).items()})
            o.certificates.update({int(i): s for i, s in r.get("certificates", {}).items()})
            for name in ("searches", "contrasts", "comparisons"):
                merged = getattr(o, name)
                for label, rows in r.get(name, {}).items():
                    merged.setdefault(label, []).extend(attempt_from_json(a) for a in rows)
            o.errors.extend(r.get("errors", []))
            o.tracebacks.extend(r.get("tracebacks", []))
            o.method_errors.update(r.get("method_errors", {}))
            o.not_applicable.update(r.get("not_applicable", {}))
            o.added.update(r.get("added", {}))
            o.violations.extend(r.get("violations", []))
            o.study = r.get("study") or o.study
        return o


def shape(inst) -> dict:
    """What a report says of an instance: its width and family."""
    return {"d": inst.spec.d, "family": inst.meta.get("family")}


def file_stem(name: str) -> str:
    """A claim id or job key as a file name in a report's logs/ (other characters become '_')."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def log_name(claim_id: str) -> str:
    """The report's file for a claim's tracebacks (relative to the report folder)."""
    return f"logs/{file_stem(claim_id)}.log"


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def attempt_to_json(a: Attempt, with_adapter: bool) -> dict:
    doc = {**a.to_json(), "options": dict(a.options), "tolerance": a.tolerance}
    if with_adapter:
        doc["adapter"] = {name: value.tolist() for name, value in a.adapter.items()}
    return doc


def attempt_from_json(doc: dict) -> Attempt:
    import numpy as np
    return Attempt(doc["instance"], doc["method"], doc["size"], doc["params"], float(doc["best_loss"]),
                   float(doc["max_abs_error"]), bool(doc["solved"]),
                   adapter={k: np.asarray(v, dtype=np.float64) for k, v in doc.get("adapter", {}).items()},
                   options=dict(doc["options"]), tolerance=float(doc["tolerance"]),
                   exact_max_error=tuple(doc["exact_max_error"]) if "exact_max_error" in doc else None)
