"""An audit as independent jobs: a plan, a pure job function, a results store, executors.

plan.py decides the jobs (claim chunks, calibrations, method cards) and their seeds; work.py runs
one job from plain JSON and returns plain JSON; store.py appends results to a JSON-lines file that
survives a crash; executors.py runs jobs inline, in a process pool or on Ray; merge.py turns the
stored results back into the outcomes the report is built from.
"""

from .plan import AuditPlan, Job, plan_audit
from .store import ResultStore

__all__ = ["AuditPlan", "Job", "ResultStore", "plan_audit"]
