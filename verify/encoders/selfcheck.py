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
