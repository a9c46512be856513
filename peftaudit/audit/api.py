"""run_audit: the one entry point the CLI, the pytest plugin and users' code share."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from peftaudit.claims import Claim
from peftaudit.errors import InputError
from peftaudit.search.calibrate import calibrate
from peftaudit.search.problems import resolve_device
from peftaudit.settings import get_profile

from .outdir import check_out_dir
from .report import SCHEMA_VERSION, claim_json, provenance, write_report
from .runner import ClaimOutcome, audit_claim, log_stderr, search_config


BUILTIN_METHODS = ("prompt", "prefix", "prefix-kv", "lora", "full")


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


def run_audit(claims: Sequence[str | Claim] | None = None, *, profile: str = "quick", seed: int = 0,
              methods: Sequence[str] | None = None, jobs: int = 1, device: str = "auto",
              out: str | Path | None = None, force: bool = False, calibration: bool = True, progress: bool = True,
              quiet: bool = False, argv: Sequence[str] = (), cards: bool = True,
              card_families: Sequence[str] | None = None) -> AuditResult:
    """Audit claims (ids or Claim objects; default: every registered claim) and write a report.

    `out` is checked before any work (audit/outdir.py): it must be new or empty, or with `force`
    a previous peftaudit report, which is replaced whole. With `cards`, every method in `methods`
    that is not built in (a plugin, a peft guest) also gets its method card, in the report's
    cards/ folder."""
    from peftaudit.claims import claim_ids, expand_claims

    if out is not None:
        check_out_dir(out, force)
    prof = get_profile(profile)
    resolved = expand_claims(claims or claim_ids())
    if jobs < 1:
        raise InputError("jobs", jobs, "a positive number of processes")
    if methods is not None:
        from peftaudit.models.methods import get_method
        for m in methods:
            try:  # unknown names (with the known ones listed) and unimportable plugins fail here
                get_method(m)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - a plugin's constructor may raise anything
                raise InputError("methods", m, f"a method that can be constructed (it raised "
                                               f"{type(exc).__name__}: {exc})") from None
    dev = resolve_device(device)
    log = (lambda s: None) if quiet else log_stderr
    base = search_config(prof, seed, str(dev))
    report = {"schema": SCHEMA_VERSION, "provenance": provenance(seed, profile, str(dev), list(argv)),
              "claims": [], "calibration": {}}
    outcomes = [audit_claim(c, prof, seed, base, methods=set(methods) if methods else None, jobs=jobs,
                            progress=progress, log=log) for c in resolved]
    report["claims"] = [claim_json(o) for o in outcomes]
    if calibration:
        for method in ("prompt", "lora"):
            log(f"calibration: {method} search on {prof.planted} planted instances")
            cal = calibrate(method, prof.planted, replace(base, rounds=2), progress=progress)
            report["calibration"][method] = cal.to_json()
    if cards and methods:
        from peftaudit.card import run_battery
        from peftaudit.card.battery import card_folder
        report["cards"] = {}
        for m in methods:
            if m in BUILTIN_METHODS:
                continue
            log(f"method card: {m}")
            result_card = run_battery(m, {}, prof, seed, base, families=card_families, log=log)
            report["cards"][m] = {"folder": f"cards/{card_folder(m)}", "card": result_card}
    out_dir = None
    if out is not None:
        out_dir = write_report(report, outcomes, Path(out), force=force)
    return AuditResult(report, outcomes, out_dir)
