"""The audit: claims registry runner, reports, and verdicts."""

from .api import AuditResult, resume_audit, run_audit

__all__ = ["AuditResult", "resume_audit", "run_audit"]
