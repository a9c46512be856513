"""Peak memory and store growth of one audit run: the whole process tree (the CLI, its workers, a
local Ray's daemons and workers) sampled twice a second.

Needs psutil (the test extra brings it: peft depends on it). Run by hand:
`python benchmarks/audit_memory.py -- --profile thorough --backend ray --jobs 2 --out DIR`
(everything after `--` goes to `peftaudit audit`; --out is required, to measure its store). Prints
the wall time, the peak resident memory of the tree and of its largest process, the store's size
and lines, and one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """(sum, largest) resident bytes of root and all its descendants."""
    total, largest = 0, 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            rss = proc.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def main() -> None:
    args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    out = Path(args[args.index("--out") + 1])
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "peftaudit.cli", "audit", *args],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak_total, peak_one, samples = 0, 0, []
    while proc.poll() is None:
        try:
            total, one = tree_rss(root)
        except psutil.Error:
            break
        peak_total, peak_one = max(peak_total, total), max(peak_one, one)
        samples.append((round(time.perf_counter() - started, 1), round(total / 2**20)))
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    results = out / "store" / "results.jsonl"
    store_bytes = sum(p.stat().st_size for p in (out / "store").rglob("*") if p.is_file())
    figures = {"command": ["peftaudit", "audit", *args], "exit": proc.returncode, "seconds": seconds,
               "peak_tree_mb": peak_total / 2**20, "peak_process_mb": peak_one / 2**20,
               "store_mb": store_bytes / 2**20, "store_lines": results.read_bytes().count(b"\n"),
               "results_jsonl_mb": results.stat().st_size / 2**20,
               "rss_mb_over_time": samples[:: max(1, len(samples) // 40)]}
    print(f"exit {proc.returncode} in {seconds:.0f} s; peak memory of the process tree {figures['peak_tree_mb']:.0f} MB "
          f"(largest process {figures['peak_process_mb']:.0f} MB); store {figures['store_mb']:.1f} MB, "
          f"{figures['store_lines']} job lines ({figures['results_jsonl_mb']:.2f} MB of them)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
