"""Memory per search problem, measured, against `search/problems.bytes_per_problem`'s estimate.

Run by hand: `python benchmarks/search_memory.py [--cases NAME,...] [--small 8] [--large 40]`.
For each case (an instance family, a method and a size) a fresh interpreter runs one search chunk
of `--small` problems and another of `--large` problems (restarts of one instance, a few LM and
Adam steps, nothing allowed to finish early) on the CPU, and records its peak resident memory
above what it held just before the chunk. The slope between the two chunk sizes is the memory one
more problem costs, which is what the engine's chunking divides its budget by. Prints one row per
case (measured MB, estimated MB, estimate / measured) and one JSON line; an estimate below the
measurement would let a chunk overrun `--max-memory`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {
    # name: (family, d, method, options, size)
    "prompt-d8": ("prompt", 8, "prompt", {}, 2),
    "prompt-d32": ("prompt", 32, "prompt", {}, 2),
    "prompt-d64": ("prompt", 64, "prompt", {}, 4),
    "prompt-deep-d16": ("prompt-deep", 16, "prompt", {}, 2),
    "lora-d32": ("lora", 32, "lora", {"targets": "v"}, 1),
    "lora-d64": ("lora", 64, "lora", {"targets": "v"}, 2),
    "prefix-d16": ("prompt", 16, "prefix", {}, 2),
    "full-d8": ("prompt", 8, "full", {}, 0),
    "u-quick-1": ("u-quick", 1, "prompt", {}, 0),
    "u-quick-2": ("u-quick", 2, "prompt", {}, 0),
    "u-thorough-11": ("u-thorough", 11, "prompt", {}, 0),  # about 0.3 GB a problem: use --small 2 --large 6
}

CHILD = r"""
import json, resource, sys
import numpy as np, torch
torch.set_num_threads(1)
from peftaudit.models.methods import get_method
from peftaudit.search.engine import SearchConfig, _optimize_chunk
from peftaudit.search.problems import bytes_per_problem, stacked

family, d, method_name, options, size, count = json.loads(sys.argv[1])
if family.startswith("u-"):
    from peftaudit.claims.base import get_claim
    from peftaudit.settings import get_profile
    from peftaudit.verify.encoders.u import grid_of
    inst = get_claim("U").draw(get_profile(family[2:]), 0)[d]
    size = grid_of(inst).prompt_length
else:
    from peftaudit.strategies.instances import planted_lora_instance, planted_prompt_instance
    rng = np.random.default_rng([0, d])
    if family == "lora":
        inst = planted_lora_instance(rng, d, 1)
    elif family == "prompt-deep":
        inst = planted_prompt_instance(rng, d, 2, layers=2, attention="causal")
    else:
        inst = planted_prompt_instance(rng, d, 2)
method = get_method(method_name, **options)
instances = [inst] * count
weights, X, Y = stacked(instances, list(range(count)), torch.device("cpu"))

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

before = rss()
config = SearchConfig(method=method_name, options=options, sizes=(size,), restarts=1, rounds=1, steps=4,
                      polish_steps=4, tolerance=1e-300, device="cpu")
_optimize_chunk(method, inst.spec, weights, X, Y, size, 0, config, torch.device("cpu"), None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
n_params = method.param_count(inst.spec, size)
print(json.dumps({"extra": peak - before, "estimate": bytes_per_problem(inst.spec, len(inst.dataset), inst.n_tokens,
                  inst.n_targets, n_params, size), "params": n_params,
                  "residuals": len(inst.dataset) * inst.n_targets * inst.spec.d}))
"""


def measure(case: tuple, count: int) -> dict:
    family, d, method, options, size = case
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([family, d, method, options, size, count])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--small", type=int, default=8)
    parser.add_argument("--large", type=int, default=40)
    args = parser.parse_args()
    rows = []
    print(f"{'case':<16} {'P':>6} {'R':>6} {'measured MB':>12} {'estimate MB':>12} {'est/meas':>9}")
    for name in args.cases.split(","):
        small, large = measure(CASES[name], args.small), measure(CASES[name], args.large)
        per = max(large["extra"] - small["extra"], 1) / (args.large - args.small)
        row = {"case": name, "params": large["params"], "residuals": large["residuals"],
               "measured_mb": per / 2**20, "estimate_mb": large["estimate"] / 2**20,
               "ratio": large["estimate"] / per}
        rows.append(row)
        print(f"{name:<16} {row['params']:>6} {row['residuals']:>6} {row['measured_mb']:>12.2f} "
              f"{row['estimate_mb']:>12.2f} {row['ratio']:>9.2f}", flush=True)
    print(json.dumps({"benchmark": "search_memory", "small": args.small, "large": args.large, "rows": rows}))


if __name__ == "__main__":
    main()
