"""pytest plugin: `pytest --peftaudit` audits every registered claim, one test item per (claim, method);
`pytest --peftaudit-conformance NAME` checks a method against every conformance rule, one item per rule.

Loaded through the pytest11 entry point at every pytest start, so it imports nothing heavy
(torch, z3) until an audit actually runs. Items fail when their claim comes out REFUTED,
NOT-SHOWN or ERROR, and are skipped (never passed) when their method judged nothing; the verdict and the replay commands reach JUnit XML as properties.
"""

from __future__ import annotations

import pytest

from peftaudit.limits import MAX_SEED  # a plain module of constants: cheap at every pytest start

PROFILES = ("quick", "ci", "thorough")


def _seed(config: pytest.Config) -> int:
    """--peftaudit-seed as an integer, or a usage error naming it."""
    text = str(config.getoption("peftaudit_seed"))
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise pytest.UsageError(f"--peftaudit-seed: got {text[:40]!r}, expected an integer in 0..{MAX_SEED}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("peftaudit", "audit claims about PEFT methods")
    group.addoption("--peftaudit", action="store_true", help="collect one audit item per (claim, method)")
    group.addoption("--peftaudit-profile", choices=PROFILES, default="quick", help="audit budget profile")
    group.addoption("--peftaudit-claims", default=None, help="comma-separated claim ids (default: all)")
    group.addoption("--peftaudit-seed", default="0", help=f"audit seed, an integer in 0..{MAX_SEED}")
    group.addoption("--peftaudit-methods", default=None,
                    help="comma-separated methods to audit the claims with, yours included (package.module:Name "
                         "or an entry point); default: the methods each claim names")
    group.addoption("--peftaudit-conformance", action="append", default=[], metavar="METHOD",
                    help="check this method (a name or package.module:Name) against the conformance rules; "
                         "repeatable")


class ConformanceFailure(Exception):
    """A method broke a conformance rule."""


class ConformanceItem(pytest.Item):
    def __init__(self, *, method: str, rule: str, **kwargs):
        super().__init__(**kwargs)
        self.method, self.rule = method, rule

    def runtest(self) -> None:
        from peftaudit.conformance import check_rule

        result = check_rule(self.rule, self.method)
        self.user_properties.append(("detail", result.detail))
        if result.skipped:  # the rule judged nothing: a skip with its reason, never a pass
            pytest.skip(f"{self.method}: {result.detail}")
        if not result.ok:
            raise ConformanceFailure(f"{self.method} breaks the rule '{self.rule}': {result.detail}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return "peftaudit", None, f"conformance of {self.method}: {self.rule}"


class AuditFailure(Exception):
    """A claim came out ERROR, or REFUTED when it was not registered to be."""


def _judged_nothing(claim, method: str | None, profile: str) -> str:
    """Why `method` took no part in the claim's verdict ("" when it did): it is not the claim's
    subject, falsifier or contrast, and the audit's own rule (evidence.gather.added_runs) made it no
    inherited falsifier, so it was only compared (e.g. a weight-space method on a prompt claim)."""
    from peftaudit.evidence.gather import added_runs
    from peftaudit.settings import get_profile

    if method is None or method == claim.subject or any(r.method == method for r in claim.falsifiers + claim.contrasts):
        return ""
    if added_runs(claim, [method], get_profile(profile))[0]:
        return ""
    return f"{method} is not among the claim's falsifiers or contrasts, so it was only compared"


class AuditItem(pytest.Item):
    def __init__(self, *, claim_id: str, method: str | None, **kwargs):
        super().__init__(**kwargs)
        self.claim_id = claim_id
        self.method = method

    def runtest(self) -> None:
        from peftaudit.audit import run_audit
        from peftaudit.claims import get_claim

        cfg = self.config
        result = run_audit([get_claim(self.claim_id)], profile=cfg.getoption("peftaudit_profile"),
                           seed=_seed(cfg), methods=[self.method] if self.method else None,
                           calibration=False,
                           progress=False, quiet=True, cards=False)
        claim = result.report["claims"][0]
        if self.method in claim.get("not_applicable", {}):
            pytest.skip(f"{self.claim_id} with {self.method}: not applicable ({claim['not_applicable'][self.method]})")
        for label, trace in claim.get("method_errors", {}).items():
            raise AuditFailure(f"{self.claim_id}: method {label} is ERROR:\n{trace}")
        self.user_properties.append(("verdict", claim["verdict"]))
        self.user_properties.append(("reason", claim["reason"]))
        for label, contrast in claim["contrasts"].items():
            self.user_properties.append((f"contrast {label}", f"{contrast['solved']}/{contrast['total']}"))
        expected = claim.get("expect") == "REFUTED" and claim["verdict"] == "REFUTED"
        if expected:
            self.user_properties.append(("expected", "refuted, as registered (an ablation or naive form)"))
        if claim["verdict"] in ("ERROR", "NOT-SHOWN") or (claim["verdict"] == "REFUTED" and not expected):
            outcome = result.outcomes[0]
            replays = []
            for attempts in outcome.searches.values():
                for a in attempts:
                    if a.solved:
                        replays.append(f"{a.method} size {a.size} on instance {a.instance}: replayed max error "
                                       f"{a.max_abs_error:.2e}")
            self.user_properties.append(("counterexamples", "; ".join(replays)))
            raise AuditFailure(f"{self.claim_id} is {claim['verdict']}: {claim['reason']}"
                               + ("\n  " + "\n  ".join(replays) if replays else ""))
        idle = _judged_nothing(result.outcomes[0].claim, self.method, cfg.getoption("peftaudit_profile"))
        if idle:  # a pass here would be unearned: the item's method took no part in the verdict
            pytest.skip(f"{self.claim_id} with {self.method}: {idle} (verdict {claim['verdict']})")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, AuditFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return "peftaudit", None, f"claim {self.claim_id} with {self.method or 'its exact evidence'}"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    conformance = config.getoption("peftaudit_conformance")
    if conformance:
        from peftaudit.conformance import RULES
        from peftaudit.errors import InputError
        from peftaudit.models.methods import get_method
        for name in conformance:
            try:
                get_method(name)
            except (InputError, Exception, SystemExit) as exc:  # noqa: BLE001 - any failing plugin is a usage error
                raise pytest.UsageError(f"--peftaudit-conformance: {exc}") from None
            items.extend(ConformanceItem.from_parent(session, name=f"conformance[{name}: {rule}]", method=name,
                                                     rule=rule) for rule in RULES)
    if not config.getoption("peftaudit"):
        return
    from peftaudit.claims import claim_ids, expand_claims
    from peftaudit.errors import InputError

    wanted = config.getoption("peftaudit_claims")
    ids = [c.strip() for c in wanted.split(",") if c.strip()] if wanted is not None else claim_ids()
    if not ids:
        raise pytest.UsageError("--peftaudit-claims: give one or more comma-separated claim ids (leave it out for all)")
    try:
        claims = expand_claims(ids)
    except InputError as exc:  # an unknown id: one line naming the known ones, not an INTERNALERROR
        raise pytest.UsageError(f"--peftaudit-claims: {exc}") from None
    _seed(config)
    extra = config.getoption("peftaudit_methods")
    extra = [m.strip() for m in extra.split(",") if m.strip()] if extra else []
    from peftaudit.models.methods import get_method
    for name in extra:
        try:
            get_method(name)
        except (InputError, Exception, SystemExit) as exc:  # noqa: BLE001 - a failing plugin: a usage error
            raise pytest.UsageError(f"--peftaudit-methods: {exc}") from None
    for claim in claims:
        cid = claim.id
        runs = claim.falsifiers + claim.contrasts + claim.comparisons
        if claim.evidence == "witness" or not (runs or extra):  # decided by exact evidence alone: one item
            items.append(AuditItem.from_parent(session, name=f"peftaudit[{cid}-exact]", claim_id=cid, method=None))
            continue
        methods = list(extra)
        if claim.subject and extra and claim.subject not in methods:  # the subject is never dropped
            methods.insert(0, claim.subject)
        for run in () if extra else claim.falsifiers + claim.contrasts + claim.comparisons:
            if run.method not in methods:
                methods.append(run.method)
        for method in methods:
            items.append(AuditItem.from_parent(session, name=f"peftaudit[{cid}-{method}]", claim_id=cid,
                                               method=method))


@pytest.fixture
def peftaudit_audit(request: pytest.FixtureRequest):
    """Audit a claim (id or Claim) from a test: `peftaudit_audit("L1", methods=["prompt"])` -> AuditResult."""
    def run(claim, *, methods=None, profile=None, seed=None, calibration=False):
        from peftaudit.audit import run_audit
        return run_audit([claim], profile=profile or request.config.getoption("peftaudit_profile"),
                         seed=_seed(request.config) if seed is None else seed,
                         methods=methods, calibration=calibration, progress=False, quiet=True)
    return run
