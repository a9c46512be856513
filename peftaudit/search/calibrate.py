"""Calibration: the share of planted instances the search solves when searching at the planted size.

The prompt set mixes the project's planted prompt instances with an ill-conditioned planted
family (one instance in five; Jacobian singular values down to ~1e-7 of the largest at the
planted solution), the near misses that once escaped the search, reported as their own groups.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np

from peftaudit.errors import InputError
from peftaudit.strategies.instances import planted_lora_instance, planted_prompt_instance

from .engine import SearchConfig, search

CALIBRATION_METHODS = ("prompt", "lora")
ILL_CONDITIONED_EVERY = 5              # every 5th planted prompt instance is ill-conditioned
WEAK_SCALES = (1e-4, 1e-5, 1e-6)       # how weakly its attention reads half of the coordinates


@dataclass(frozen=True)
class Calibration:
    method: str
    total: int
    solved: int
    by_group: dict = field(default_factory=dict)  # "d=4,size=2" -> [solved, total]
    failures: list = field(default_factory=list)  # (seed index, d, size, replayed max error)
    seconds: float = 0.0                          # wall time of the searches

    @property
    def seconds_per_instance(self) -> float:
        return self.seconds / self.total if self.total else 0.0

    @property
    def recall(self) -> float:
        return self.solved / self.total if self.total else 0.0

    def to_json(self) -> dict:
        return {"method": self.method, "total": self.total, "solved": self.solved, "recall": self.recall,
                "by_group": self.by_group, "failures": self.failures[:20], "seconds": self.seconds,
                "seconds_per_instance": self.seconds_per_instance}


def planted_set(method: str, count: int, seed: int, dims: tuple[int, ...] = (2, 4, 8),
                max_length: int = 4) -> list:
    """`count` planted instances (single layer; prompt lengths 1..max_length, or rank-1 LoRA on W_v)."""
    if method not in CALIBRATION_METHODS:
        raise InputError("calibration method", method, "one of " + ", ".join(CALIBRATION_METHODS))
    if count < 1:
        raise InputError("count", count, "a positive number of planted instances")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        d = int(rng.choice(dims))
        if method == "prompt" and i % ILL_CONDITIONED_EVERY == ILL_CONDITIONED_EVERY - 1:
            length = int(rng.integers(1, max_length + 1))
            weak = float(rng.choice(WEAK_SCALES))
            out.append(planted_prompt_instance(rng, d, length, targets="all" if i % 2 else "last", weak=weak))
        elif method == "prompt":
            length = int(rng.integers(1, max_length + 1))
            out.append(planted_prompt_instance(rng, d, length, attention="causal" if i % 3 == 0 else "encoder",
                                               targets="all" if i % 2 else "last"))
        else:
            out.append(planted_lora_instance(rng, d, 1, "v", targets="all" if i % 2 else "last"))
    return out


def calibrate(method: str, count: int, config: SearchConfig, *, dims: tuple[int, ...] = (2, 4, 8),
              progress: bool = True) -> Calibration:
    """Search each planted instance at its planted size (no other knowledge of the planting)."""
    instances = planted_set(method, count, config.seed, dims)
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, inst in enumerate(instances):
        planted = inst.meta["planted"]
        by_size[planted["length"] if method == "prompt" else planted["rank"]].append(i)
    solved, groups, failures = 0, defaultdict(lambda: [0, 0]), []
    start = time.perf_counter()
    options = {"targets": "v"} if method == "lora" else {}
    for size, idx in sorted(by_size.items()):
        cfg = replace(config, method=method, options=options, sizes=(size,))
        for attempt in search([instances[i] for i in idx], cfg, progress=progress):
            i = idx[attempt.instance]
            ill = instances[i].meta["family"] == "planted-prompt-ill-conditioned"
            key = f"d={instances[i].spec.d},size={size}" + (",ill-conditioned" if ill else "")
            groups[key][1] += 1
            if attempt.solved:
                solved += 1
                groups[key][0] += 1
            else:
                failures.append([i, instances[i].spec.d, size, attempt.max_abs_error])
    return Calibration(method, len(instances), solved, dict(sorted(groups.items())), failures,
                       time.perf_counter() - start)
