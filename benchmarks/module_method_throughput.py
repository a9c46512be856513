"""What a module method costs: peft's LoRA run as a module transform against the native LoRA.

Run by hand: `python benchmarks/module_method_throughput.py [--d 4,8,16] [--problems 256]
[--steps 20] [--repeats 3]`. On the same planted LoRA instances (rank 1 on W_v), two measures
per method, the two sides interleaved (the order alternates each repeat):

- instance-steps per second: `--steps` Levenberg-Marquardt steps on all problems at once
  (Jacobian, damped solve, trial forward), no compaction (the convergence test disabled), so both
  sides do the same work;
- time to solution: `search()` on all instances with the quick profile's budget, solved meaning a
  float64 replay with max error <= 1e-8.

Methods: `lora` (the native functional form), `peft-lora` (peft's inject_adapter_in_model on the
module view, run by vmap over functional_call) and `module-lora` (the same update written as a
ten-line module transform, no peft), so the cost of the module path and of peft's own layer code
are told apart. Prints a table with ratios to native, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch import nn


class LowRankLinear(nn.Module):
    """base(x) + (x A^T) B^T: LoRA as a user would write it in ten lines."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, base.in_features, dtype=torch.float64) * base.in_features ** -0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T) @ self.B.T


def _register_module_lora() -> None:
    from peftaudit.models.methods import register_method
    from peftaudit.models.methods.module_method import ModuleMethod

    @register_method("module-lora")
    class ModuleLoRA(ModuleMethod):
        name = "module-lora"

        def transform(self, module, size):
            for layer in module.layers:
                for head in layer.attn.heads:
                    head.v_proj = LowRankLinear(head.v_proj, size)
            return module


def lm_steps(insts, name: str, options: dict, steps: int) -> float:
    """Seconds for `steps` LM steps on all problems at once (no early exit)."""
    from peftaudit.models.methods import get_method
    from peftaudit.search.optimize import flat, levenberg_marquardt, unflat
    from peftaudit.search.problems import stacked

    method = get_method(name, **options)
    weights, X, Y = stacked(insts, list(range(len(insts))), torch.device("cpu"))
    template = method.init(insts[0].spec, len(insts), 1, torch.Generator().manual_seed(0))
    k = Y.shape[2]

    def residuals(theta, W, X_b, Y_b):
        out = method.outputs(insts[0].spec, W, unflat(theta, template), X_b)       # (b,E,n,d)
        return (out[:, :, out.shape[2] - k:, :] - Y_b).reshape(out.shape[0], -1)  # (b,R)

    t0 = time.perf_counter()
    levenberg_marquardt(residuals, flat(template), (weights, X, Y), steps, done_error=-1.0, stall_fraction=0.0,
                        hopeless_slack=0.0)
    return time.perf_counter() - t0


def to_solution(insts, name: str, options: dict) -> tuple[float, float]:
    from peftaudit.search.engine import SearchConfig, search
    from peftaudit.settings import get_profile

    prof = get_profile("quick")
    config = SearchConfig(method=name, options=options, sizes=(1,), restarts=prof.restarts, steps=prof.steps,
                          polish_steps=prof.polish_steps, device="cpu")
    t0 = time.perf_counter()
    attempts = search(insts, config, progress=False)
    return time.perf_counter() - t0, sum(a.solved for a in attempts) / len(attempts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d", default="4,8,16")
    parser.add_argument("--problems", type=int, default=256)
    parser.add_argument("--solve-problems", type=int, default=64, help="instances for the time-to-solution part")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from peftaudit.strategies.instances import planted_lora_instance

    _register_module_lora()
    methods = {"lora": {"targets": "v"}, "peft-lora": {"targets": "v"}, "module-lora": {}}
    rows = []
    for d in (int(v) for v in args.d.split(",")):
        rng = np.random.default_rng([0, d])
        insts = [planted_lora_instance(rng, d, 1) for _ in range(args.problems)]
        step_times = {m: [] for m in methods}
        solve_times = {m: [] for m in methods}
        recall = {}
        for name, opts in methods.items():  # warm-up: peft's import and first injection are not the steady state
            lm_steps(insts[:2], name, opts, 1)
        for rep in range(args.repeats):
            order = list(methods) if rep % 2 == 0 else list(reversed(methods))
            for name in order:
                step_times[name].append(lm_steps(insts, name, methods[name], args.steps))
                seconds, recall[name] = to_solution(insts[:args.solve_problems], name, methods[name])
                solve_times[name].append(seconds)
        rate = {m: args.problems * args.steps / statistics.median(t) for m, t in step_times.items()}
        solve = {m: statistics.median(t) for m, t in solve_times.items()}
        row = {"d": d, "instance_steps_per_second": rate, "seconds_to_solution": solve, "recall": recall,
               "throughput_ratio_to_native": {m: rate[m] / rate["lora"] for m in methods},
               "solution_time_ratio_to_native": {m: solve["lora"] / solve[m] for m in methods}}
        rows.append(row)
        print(f"d={d:>3}: instance-steps/s " + ", ".join(f"{m} {rate[m]:.0f} ({rate[m] / rate['lora']:.2f}x)"
                                                         for m in methods)
              + "; to solution " + ", ".join(f"{m} {solve[m]:.2f} s ({solve['lora'] / solve[m]:.2f}x, recall "
                                             f"{recall[m]:.0%})" for m in methods), flush=True)
    print(json.dumps({"threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "rows": rows}))


if __name__ == "__main__":
    main()
