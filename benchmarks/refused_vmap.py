"""The price of the path for modules torch.func refuses: the same peft LoRA guest searched on the
vmapped path and on the problem-by-problem path (Jacobians by plain autograd), interleaved, on
the same planted rank-1 instances, to the same end (replayed solutions), at an audit-sized batch
(6 instances) and a larger one (48).

Run by hand: `python benchmarks/refused_vmap.py [--d 4] [--repeats 2]`; prints each run, the
medians, the ratio loop/vmap, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import numpy as np


def run(instances, loop: bool, seed: int) -> tuple[float, int]:
    from peftaudit.evidence import search_config
    from peftaudit.models.methods import base
    from peftaudit.search.engine import search
    from peftaudit.settings import get_profile

    method = base.get_method("peft:LoraConfig")
    spec = instances[0].spec
    prepared = method.prepare(spec, 1)
    if loop:  # the refused path, forced on a module vmap runs
        method.__dict__["_prepared"][(spec, 1)] = replace(prepared, refusal="forced by the benchmark")
    original = base.get_method
    base.get_method = lambda name, **o: method if name == "peft:LoraConfig" else original(name, **o)
    import peftaudit.search.engine as engine
    engine_get = engine.get_method
    engine.get_method = base.get_method
    try:
        config = replace(search_config(get_profile("quick"), seed, "cpu"), method="peft:LoraConfig", options={},
                         sizes=(1,))
        t0 = time.perf_counter()
        attempts = search(instances, config, progress=False)
        return time.perf_counter() - t0, sum(a.solved for a in attempts)
    finally:
        base.get_method, engine.get_method = original, engine_get


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    from peftaudit.strategies.instances import planted_lora_instance

    out = {}
    for batch in (6, 48):
        instances = [planted_lora_instance(np.random.default_rng([i, 9]), args.d, 1) for i in range(batch)]
        times = {"vmap": [], "loop": []}
        for r in range(args.repeats):
            for path in (("vmap", "loop") if r % 2 == 0 else ("loop", "vmap")):
                seconds, solved = run(instances, path == "loop", seed=r)
                times[path].append(seconds)
                print(f"batch {batch:3d}  {path:4s}  {seconds:7.2f} s  solved {solved}/{batch}")
        med = {k: statistics.median(v) for k, v in times.items()}
        out[batch] = {**med, "ratio_loop_over_vmap": med["loop"] / med["vmap"]}
        print(f"batch {batch:3d}  median vmap {med['vmap']:.2f} s, loop {med['loop']:.2f} s, "
              f"ratio loop/vmap {med['loop'] / med['vmap']:.1f}")
    print(json.dumps({"benchmark": "refused_vmap", "d": args.d, "results": out}))


if __name__ == "__main__":
    main()
