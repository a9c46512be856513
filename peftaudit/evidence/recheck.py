"""Evidence checked where it is read: every certificate and every replayed adapter a report is
built from is checked again against the instance the claim's draw gives, whoever produced it (a
worker, Ray, a store read back by --resume). Stored files are input like any other.

- a certificate (an impossibility certificate or a constructive witness) is parsed and checked by
  the independent checker (peftaudit.verify.checkers), and must be about the very instance the
  claim drew (the SHA-256 of its canonical encoding); a recorded margin above the checked one is
  refused;
- a search result that claims an exact-model enclosure (a counterexample or a "can" witness) is
  replayed again, by interval arithmetic of the method's declared exact model, on that instance.

Anything that fails is one line among the claim's errors, so the claim is ERROR, never CERTIFIED
or REFUTED on evidence that does not hold.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable, Sequence


def instance_digest(inst) -> str:
    """The SHA-256 a certificate binds to, for every kind of instance a claim draws."""
    from peftaudit.linear_instance import LinearInstance, ReluInstance, digest as linear_digest, relu_digest
    from peftaudit.instance import digest

    if isinstance(inst, LinearInstance):
        return linear_digest(inst)
    if isinstance(inst, ReluInstance):
        return relu_digest(inst)
    return digest(inst)


def certificate_bytes(summary: dict, read_stored: Callable[[dict], bytes] | None) -> bytes | None:
    """A summary's certificate as the checker reads it: inline, or the store's file."""
    if "certificate" in summary:
        return json.dumps(summary["certificate"]).encode()
    if "certificate_stored" in summary and read_stored is not None:
        return read_stored(summary)
    return None


def recheck_certificates(certificates: dict[int, dict], instances: Sequence, witness: bool,
                         read_stored: Callable[[dict], bytes] | None) -> list[str]:
    """Check every "certified" summary's certificate again; return what failed, one line each.
    Each summary's margin and established facts are replaced by the checker's own."""
    from peftaudit.errors import PeftauditError
    from peftaudit.verify.checkers import MalformedCertificate, check_bytes

    problems = []
    for i, summary in sorted(certificates.items()):
        if summary.get("status") != "certified":
            continue
        where = f"instance {i}: the certificate {summary.get('certificate_stored') or ''}".rstrip()
        try:
            data = certificate_bytes(summary, read_stored)
            if data is None:
                problems.append(f"{where} is recorded as certified but no certificate was stored")
                continue
            checked = check_bytes(data)
        except (MalformedCertificate, PeftauditError, OSError, ValueError) as exc:
            problems.append(f"{where} cannot be read back: {str(exc)[:300]}")
            continue
        if i >= len(instances) or checked.instance_sha256 != instance_digest(instances[i]):
            problems.append(f"{where} is about another instance (SHA-256 {checked.instance_sha256[:16]}...) than the "
                            f"one the claim drew")
        elif not checked.valid:
            problems.append(f"{where} fails the independent re-check: {checked.reason[:300]}")
        elif checked.margin is not None and isinstance(summary.get("margin"), (int, float)) and \
                summary["margin"] > float(checked.margin) and not witness:  # float(): the margin as recorded
            problems.append(f"{where} records margin {summary['margin']!r}, above the checked {float(checked.margin)!r}")
        else:
            summary.update(checked=True, instance_sha256=checked.instance_sha256,
                           established=dict(checked.result.facts))
            if checked.margin is not None and (witness or summary.get("margin") is not None):
                summary["margin"] = float(checked.margin)  # the checker's, not the stored figure
    return problems


def recheck_replays(searches: dict[str, list], instances: Sequence, tolerance: float) -> list[str]:
    """Replay again every attempt that claims a confirmed exact-model enclosure, on the drawn
    instance; the attempt keeps the fresh enclosure, judged at the audit's `tolerance` (never a
    stored one). Returns what failed, one line each."""
    from peftaudit.models.methods import get_method
    from peftaudit.search.engine import rigorous_replay

    problems = []
    for label, attempts in searches.items():
        fresh = []
        for a in attempts:
            if a.exact_max_error is not None and a.exact_max_error[1] <= max(a.tolerance, tolerance):
                if not a.adapter or a.instance >= len(instances):
                    problems.append(f"{label} on instance {a.instance}: a confirmed solution without its adapter")
                    a = replace(a, exact_max_error=None)
                else:
                    try:
                        enclosure = rigorous_replay(get_method(a.method, **a.options), instances[a.instance], a.adapter)
                    except Exception as exc:  # noqa: BLE001 - a stored adapter is input: any failure is reported
                        problems.append(f"{label} on instance {a.instance}: the stored adapter does not replay "
                                        f"({type(exc).__name__}: {str(exc)[:200]})")
                        enclosure = None
                    if enclosure is not None and enclosure[1] > tolerance:
                        problems.append(f"{label} on instance {a.instance}: the stored adapter's exact max error is "
                                        f"<= {enclosure[1]:.3g} on replay, above the tolerance {tolerance:g}")
                    a = replace(a, exact_max_error=enclosure)
            a = replace(a, tolerance=tolerance)
            fresh.append(a)
        searches[label] = fresh
    return problems
