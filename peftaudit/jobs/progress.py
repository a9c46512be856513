"""Progress of an audit's jobs: one bar for the whole audit (with its ETA) and one per claim that
spans several jobs; without a terminal, a log line as each claim's last job finishes."""

from __future__ import annotations

from typing import Callable

from .plan import AuditPlan


class JobProgress:
    def __init__(self, plan: AuditPlan, finished: dict, *, enabled: bool, log: Callable[[str], None]):
        self.log = log
        self.enabled = enabled
        self.owner = {j.key: f"{j.kind}:{j.name}" if j.kind != "claim" else j.name for j in plan.jobs}
        self.total: dict[str, int] = {}
        self.count: dict[str, int] = {}
        for key, owner in self.owner.items():
            self.total[owner] = self.total.get(owner, 0) + 1
            self.count[owner] = self.count.get(owner, 0) + (key in finished)
        self.bars: dict = {}
        self.overall = None
        if enabled:
            from tqdm.auto import tqdm
            self.overall = tqdm(total=len(plan.jobs), initial=len(finished), desc="audit jobs", unit="job",
                                dynamic_ncols=True)
            many = [o for o, n in self.total.items() if n > 1 and self.count[o] < n]
            for position, owner in enumerate(many, start=1):
                self.bars[owner] = tqdm(total=self.total[owner], initial=self.count[owner], desc=owner, unit="job",
                                        position=position, leave=False, dynamic_ncols=True)

    def done(self, key: str, result: dict) -> None:
        owner = self.owner[key]
        self.count[owner] += 1
        if self.overall is not None:
            self.overall.update(1)
        if owner in self.bars:
            self.bars[owner].update(1)
        if self.count[owner] == self.total[owner] > 1 and not self.enabled:
            self.log(f"{owner}: all {self.total[owner]} job(s) finished")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.overall is not None:
            self.overall.close()
