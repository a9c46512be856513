"""Every certificate an encoder writes is re-checked by the independent checker before it is
returned; a certificate the checker refuses as malformed (e.g. beyond its limits) counts as
invalid here, so the encoder reports `unknown` instead of raising."""

from __future__ import annotations

from typing import Any

from ..checkers import CheckResult, MalformedCertificate, check_certificate


def self_check(cert: Any) -> Any:
    """The checker's verdict on a fresh certificate (`.valid`, `.reason`), never an exception."""
    try:
        return check_certificate(cert)
    except MalformedCertificate as exc:
        return CheckResult(False, f"the independent checker refused the certificate: {exc}")


def checked_result(claim: str, cert: dict, reason: str | None = None, **fields: Any) -> Any:
    """An encoder's result for a fresh certificate: "certified" with `reason` (the checker's own
    when None) and `fields` (margin, delta) once the independent checker passes it, else
    "unknown" naming why the check failed."""
    from .l1 import CertifyResult  # l1 defines the result type and imports this module

    verdict = self_check(cert)
    if not verdict.valid:
        return CertifyResult(claim, "unknown", f"exact check failed: {verdict.reason}")
    return CertifyResult(claim, "certified", verdict.reason if reason is None else reason, certificate=cert, **fields)
