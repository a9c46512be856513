"""The form of a stored job result, checked when a store is read back (--resume).

A results line carries its own SHA-256, which catches a cut-off write, not an edit: an edited
line with a fresh digest would otherwise reach the merge and the report. A result must have the
form its job gives (the fields the merge and the report read, with their types; a claim's span
and certificate file names bound to the job), or the line is dropped and the job is run again.
The evidence in a well-formed result is then re-checked against the claim's own draw by
peftaudit/evidence.py, as on every read.
"""

from __future__ import annotations

import re

from .plan import Job

_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Bad(Exception):
    pass


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _str_map(doc: object, what: str) -> dict:
    _need(isinstance(doc, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()),
          f"{what}: an object of strings")
    return doc


def _str_list(doc: object, what: str) -> list:
    _need(isinstance(doc, list) and all(isinstance(v, str) for v in doc), f"{what}: a list of strings")
    return doc


def _index(key: object, job: Job, what: str) -> int:
    _need(isinstance(key, str) and key.isdigit() and job.start <= int(key) < job.stop,
          f"{what}: instance indices of the job's span [{job.start}, {job.stop})")
    return int(key)


def _claim(job: Job, r: dict) -> None:
    from peftaudit.evidence.outcome import attempt_from_json

    _need(r.get("span") == [job.start, job.stop], "span: the job's [start, stop)")
    _need(r.get("claim", job.name) == job.name, "claim: the job's claim")
    _str_list(r.get("errors", []), "errors")
    _str_list(r.get("tracebacks", []), "tracebacks")
    _str_list(r.get("violations", []), "violations")
    for key in ("method_errors", "added", "not_applicable"):
        _str_map(r.get(key, {}), key)
    for i in _str_map(r.get("vacuous", {}), "vacuous"):
        _index(i, job, "vacuous")
    shapes = r.get("shapes", [])
    _need(isinstance(shapes, list) and all(isinstance(s, dict) for s in shapes), "shapes: a list of objects")
    certificates = r.get("certificates", {})
    _need(isinstance(certificates, dict), "certificates: an object")
    for i, summary in certificates.items():
        _index(i, job, "certificates")
        _need(isinstance(summary, dict) and isinstance(summary.get("status"), str), "a certificate summary")
        margin = summary.get("margin")
        _need(margin is None or (isinstance(margin, (int, float)) and not isinstance(margin, bool)), "margin")
        if "certificate_stored" in summary:  # the one name this job and instance give, nothing else
            _need(summary["certificate_stored"] == f"certificates/{job.name}-{i}.json",
                  f"certificate_stored: certificates/{job.name}-{i}.json")
            _need(isinstance(summary.get("certificate_sha256"), str)
                  and _HEX64.fullmatch(summary["certificate_sha256"]) is not None, "certificate_sha256")
    for field in ("searches", "contrasts", "comparisons"):
        runs = r.get(field, {})
        _need(isinstance(runs, dict), f"{field}: an object")
        for label, rows in runs.items():
            _need(isinstance(label, str) and isinstance(rows, list), f"{field}: lists of attempts")
            for row in rows:
                a = attempt_from_json(row)
                _index(str(a.instance), job, field)
                _need(a.exact_max_error is None or (len(a.exact_max_error) == 2 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in a.exact_max_error)),
                      "exact_max_error: two numbers")
    _need(isinstance(r.get("instances", {}), dict), "instances: an object")
    _need(r.get("study") is None or isinstance(r["study"], dict), "study: an object")


def _calibration(r: dict) -> None:
    cal = r.get("calibration")
    _need(isinstance(cal, dict), "calibration: an object")
    for key in ("recall", "solved", "total"):
        _need(isinstance(cal.get(key), (int, float)) and not isinstance(cal.get(key), bool), f"calibration {key}")


def _card(job: Job, r: dict) -> None:
    from peftaudit.card.battery import CARD_SCHEMA
    from peftaudit.card.render import markdown

    card = r.get("card")
    _need(isinstance(card, dict) and card.get("schema") == CARD_SCHEMA, f"card: a {CARD_SCHEMA} object")
    _need(card.get("method") == job.name, "card method: the job's method")
    _str_list(card.get("conflicts"), "card conflicts")
    _str_map(card.get("errors"), "card errors")
    markdown(card)  # every field the card's files read, with a usable type


def result_problem(job: Job, result: object) -> str | None:
    """None when `result` has the form `job` gives; else what is wrong, in a few words."""
    try:
        _need(isinstance(result, dict) and result.get("kind") == job.kind, f"kind: {job.kind}")
        if job.kind != "claim" and "error" in result:
            _need(isinstance(result["error"], str), "error: a string")
        elif job.kind == "claim":
            _claim(job, result)
        elif job.kind == "calibrate":
            _calibration(result)
        else:
            _card(job, result)
    except _Bad as exc:
        return str(exc)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return None
