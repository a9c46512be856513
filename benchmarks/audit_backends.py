"""Audit wall time on each backend, in one run: inline (1 worker), a process pool of 2, Ray with 2.

Run by hand: `python benchmarks/audit_backends.py [--profile quick] [--claims L1,M] [--repeats 2]`.
Each repeat runs `peftaudit audit` once per backend in a fresh interpreter, the order rotating
between repeats; prints every run, the medians, the ratios against inline, whether every report
equals the inline one (timestamps, wall times, the command and the executor note aside), then one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peftaudit.audit.report import comparable

BACKENDS = {"inline-1": ("inline", 1), "process-2": ("process", 2), "ray-2": ("ray", 2)}


def run(args, backend: str, workers: int, out: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "peftaudit.cli", "audit", "--profile", args.profile, "--seed", "0", "--out", str(out),
           "--backend", backend, "--jobs", str(workers)] + (["--claims", args.claims] if args.claims else [])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    return seconds, comparable(json.loads((out / "report.json").read_text()), out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--claims", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    names = list(BACKENDS)
    times = {n: [] for n in names}
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                backend, workers = BACKENDS[name]
                seconds, report = run(args, backend, workers, Path(tmp) / f"{name}-{r}")
                times[name].append(seconds)
                reports.setdefault(name, report)
                print(f"repeat {r} {name}: {seconds:.1f} s", flush=True)
    medians = {n: statistics.median(t) for n, t in times.items()}
    same = {n: reports[n] == reports["inline-1"] for n in names}
    for n in names:
        print(f"{n:<10} median {medians[n]:.1f} s, ratio inline/{n} {medians['inline-1'] / medians[n]:.2f}x, "
              f"report equals inline's: {same[n]}")
    print(json.dumps({"profile": args.profile, "claims": args.claims, "medians_s": medians, "times_s": times,
                      "speedup_vs_inline": {n: medians["inline-1"] / medians[n] for n in names},
                      "identical_reports": same}))


if __name__ == "__main__":
    main()
