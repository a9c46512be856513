"""`peftaudit check-report DIR [--claim ID]`: every certificate and witness a report rests on,
checked again against the instances its claims draw (profile, seed and instance count from the
report's provenance), the same checks a report build runs on stored results (peftaudit/evidence.py).

A CERTIFIED claim passes when each of its non-vacuous instances carries a certificate the
independent checker accepts about that very instance ("cannot" claims, U, Z1-relu), or a witness
adapter whose exact-model replay memorizes it ("can" claims shown by search).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peftaudit import jsonio
from peftaudit.errors import PLUGIN_FAILURES, InputError, one_line

MAX_REPORT_BYTES = 256 * 1024 * 1024


@dataclass
class ClaimCheck:
    claim: str
    verdict: str
    instances: int                 # non-vacuous instances
    certificates: int = 0          # certificates checked valid and bound to their drawn instance
    witnesses: int = 0             # witness adapters whose exact replay memorizes their instance
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.problems:
            return False
        if self.verdict != "CERTIFIED":
            return True
        return max(self.certificates, self.witnesses) >= self.instances


def _inside(folder: Path, relative: str) -> Path:
    """A file named by the report, inside its folder, never through a link."""
    path = (folder / relative)
    if ".." in Path(relative).parts or Path(relative).is_absolute():
        raise InputError("report file", relative, "a path inside the report folder")
    for part in [path, *path.parents]:
        if part == folder:
            break
        if part.is_symlink():
            raise InputError("report file", str(part), "a regular file, not a link")
    return path


def check_report(folder: str | Path, claim_id: str | None = None) -> list[ClaimCheck]:
    from peftaudit.evidence import SOLVED_MAX_ERROR
    from peftaudit.claims import get_claim
    from peftaudit.evidence import recheck_certificates
    from peftaudit.settings import get_profile

    folder = Path(folder)
    report = jsonio.load(_inside(folder, "report.json"), "report", MAX_REPORT_BYTES)
    try:
        prov = report["provenance"]
        profile = get_profile(prov["profile"])
        if prov.get("instances") is not None:
            from dataclasses import replace
            profile = replace(profile, instances=int(prov["instances"]))
        seed, claims = int(prov["seed"]), list(report["claims"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError("report", str(folder), f"a peftaudit report.json with provenance and claims ({exc})") from None
    chosen = [c for c in claims if claim_id is None or c.get("id") == claim_id]
    if claim_id is not None and not chosen:
        raise InputError("--claim", claim_id, f"a claim of this report ({', '.join(str(c.get('id')) for c in claims)})")
    out = []
    for c in chosen:
        check = ClaimCheck(c["id"], c["verdict"], int(c["instances"]) - int(c["vacuous"]))
        claim = get_claim(c["id"])
        drawn = list(claim.draw(profile, seed))
        summaries = {int(x["instance"]): {"status": "certified", "margin": x.get("margin"),
                                          "certificate_stored": x["certificate_file"]}
                     for x in c.get("certificates", []) if x.get("status") == "certified" and x.get("certificate_file")}
        read = lambda s: jsonio.read_regular_file(_inside(folder, s["certificate_stored"]), "certificate")  # noqa: E731
        check.problems += recheck_certificates(summaries, drawn, claim.evidence == "witness", read)
        check.certificates = sum(bool(s.get("checked")) for s in summaries.values())
        for w in c.get("search_witnesses", []):
            problem = _replay(folder, w, drawn, SOLVED_MAX_ERROR)
            check.problems += [problem] if problem else []
            check.witnesses += not problem
        out.append(check)
    return out


def _replay(folder: Path, w: dict, drawn: list, tolerance: float) -> str | None:
    from peftaudit.models.methods import get_method
    from peftaudit.search.adapters import load_adapter
    from peftaudit.search.engine import rigorous_replay

    i = int(w["instance"])
    if not 0 <= i < len(drawn):
        return f"witness {w.get('adapter_file')}: instance {i} is not one the claim draws"
    try:
        name, options, _, tensors = load_adapter(_inside(folder, w["adapter_file"]), drawn[i])
        lo, hi = rigorous_replay(get_method(name, **options), drawn[i], tensors)
    except PLUGIN_FAILURES as exc:  # a report's file is input: any failure (sys.exit too) is that file's
        return f"witness {w.get('adapter_file')}: {one_line(exc)}"
    if hi > tolerance:
        return f"witness {w['adapter_file']}: the exact model's max error is only known <= {hi:.3g} (tolerance {tolerance:g})"
    return None


def command(args) -> int:
    """Exit 0 when every checked claim's evidence holds (and a CERTIFIED claim's covers each of
    its instances), 1 otherwise, 2 for bad input."""
    checks = check_report(args.folder, args.claim)
    for c in checks:
        what = []
        if c.certificates:
            what.append(f"{c.certificates} certificate(s) valid")
        if c.witnesses:
            what.append(f"{c.witnesses} witness(es) memorize")
        status = "ok" if c.ok else "FAILED"
        print(f"{c.claim}: {status} ({c.verdict}; {', '.join(what) or 'no certificate or witness'}, "
              f"{c.instances} non-vacuous instance(s))")
        for p in c.problems[:20]:
            print(f"  - {p}")
    return 0 if all(c.ok for c in checks) else 1

