"""The audit: claims registry runner, reports, and verdicts."""

from .api import AuditResult, run_audit

__all__ = ["AuditResult", "run_audit"]
