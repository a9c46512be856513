"""Quick-audit wall time of two installs of peftaudit, interleaved, with their verdicts compared.

Run by hand: install each side into its own folder (`pip install --no-deps --target DIR CHECKOUT`)
and `python benchmarks/audit_ab.py --a OLD_DIR --b NEW_DIR [--repeats 2] [--profile quick]
[--b-args "--jobs 1 --threads 2"]` (extra audit arguments per side, as one string).
Each repeat runs `peftaudit audit --seed 0` from both installs in a fresh interpreter, the order
alternating (A B, then B A); prints every run, the medians, the ratio A/B, whether the claim
verdicts and calibration recalls agree, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(site: str, profile: str, out: Path, extra: list[str]) -> tuple[float, dict]:
    env = dict(os.environ, PYTHONPATH=site)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-P", "-m", "peftaudit.cli", "audit", "--profile", profile, "--seed", "0",
                    "--out", str(out), *extra], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    verdicts = {c["id"]: c["verdict"] for c in report["claims"]}
    recall = {k: v["recall"] for k, v in (report.get("calibration") or {}).items()}
    return seconds, {"verdicts": verdicts, "calibration_recall": recall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", required=True, help="site folder of the baseline install")
    parser.add_argument("--b", required=True, help="site folder of the install under test")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--a-args", default="", help="extra audit arguments for side A (one string)")
    parser.add_argument("--b-args", default="", help="extra audit arguments for side B, e.g. \"--jobs 1 --threads 2\"")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"a": [], "b": []}
    outcome = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for side in ("a", "b") if rep % 2 == 0 else ("b", "a"):
                seconds, outcome[side] = run(getattr(args, side), args.profile, Path(tmp) / f"{side}{rep}",
                                             getattr(args, f"{side}_args").split())
                times[side].append(seconds)
                print(f"repeat {rep} {side}: {seconds:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    same = outcome["a"]["verdicts"] == outcome["b"]["verdicts"]
    print(f"median a {med['a']:.1f} s, b {med['b']:.1f} s: b is {med['a'] / med['b']:.2f}x faster; "
          f"verdicts agree: {same}; calibration recall a {outcome['a']['calibration_recall']}, "
          f"b {outcome['b']['calibration_recall']}")
    print(json.dumps({"a_args": args.a_args, "b_args": args.b_args, "times": times, "median": med, "speedup": med["a"] / med["b"], "verdicts_agree": same,
                      "a": outcome["a"], "b": outcome["b"]}))


if __name__ == "__main__":
    main()
