"""The audit: run_audit and resume_audit (api.py), reports (report.py), output folders (outdir.py),
and check-report (check_report.py). The evidence and verdicts live in peftaudit/evidence."""

from .api import AuditResult, resume_audit, run_audit

__all__ = ["AuditResult", "resume_audit", "run_audit"]
