"""The CUDA path, checked against the CPU in one run: same verdicts, and the throughput ratio.

Run by hand on a machine with a GPU (`python benchmarks/gpu_check.py [--problems 4096] [--d 64]`).
Three parts, each printing a line of its own and one JSON object last:

1. verdicts: the same planted-prompt, planted-LoRA and L1 instances searched on the CPU and on
   CUDA with the same seed; every candidate is replayed in float64 on the CPU either way, so
   `solved` must agree instance by instance (planted: solved; L1: never);
2. throughput: batched Adam steps at d = D on PROBLEMS problems, CUDA against CPU, as
   instance-steps per second and their ratio (the CPU side runs fewer steps; rates compare);
3. time to solution: `search()` with the quick budget on planted prompt instances at d = D
   (PROBLEMS / 4 instances x 4 restarts on CUDA, `--cpu-instances` of them on the CPU), seconds
   per instance and recall on each side, and their ratio. Levenberg-Marquardt drops finished
   problems from its batch, so a step count is no measure of work: this is.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def _timed_search(insts, config) -> float:
    from peftaudit.search.engine import search

    if config.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    search(insts, config, progress=False)
    if config.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def verdicts(seed: int, devices=("cpu", "cuda")) -> dict:
    """Solved flags per instance on CPU and CUDA (float64 CPU replay decides both)."""
    from peftaudit.search.engine import SearchConfig, search
    from peftaudit.strategies.instances import l1_instance, planted_lora_instance, planted_prompt_instance

    rng = np.random.default_rng(seed)
    families = {
        "planted-prompt": ([planted_prompt_instance(rng, 4, 2) for _ in range(16)],
                           dict(method="prompt", sizes=(2,))),
        "planted-lora": ([planted_lora_instance(rng, 4, 1) for _ in range(8)],
                         dict(method="lora", sizes=(1,), options={"targets": "v"})),
        "l1-skew": ([l1_instance(rng, 4, "skew") for _ in range(8)], dict(method="prompt", sizes=(1, 4))),
    }
    out = {}
    for name, (insts, kw) in families.items():
        flags, errs = {}, {}
        for device in devices:
            config = SearchConfig(restarts=4, steps=200, polish_steps=40, seed=seed, device=device, **kw)
            t0 = time.perf_counter()
            attempts = search(insts, config, progress=False)
            flags[device] = [a.solved for a in attempts]
            errs[device] = [a.max_abs_error for a in attempts]
            errs[device + "_s"] = time.perf_counter() - t0
        if len(devices) < 2:  # a CPU-only smoke run of this script
            flags["cuda"], errs["cuda"], errs["cuda_s"] = flags["cpu"], errs["cpu"], 0.0
        agree = flags["cpu"] == flags["cuda"]
        out[name] = {"solved_cpu": sum(flags["cpu"]), "solved_cuda": sum(flags["cuda"]),
                     "attempts": len(flags["cpu"]), "agree": agree,
                     "cpu_s": errs["cpu_s"], "cuda_s": errs["cuda_s"],
                     "max_err_cpu": max(errs["cpu"]), "max_err_cuda": max(errs["cuda"])}
        print(f"verdicts {name:<15} solved cpu {sum(flags['cpu'])}/{len(flags['cpu'])}, "
              f"cuda {sum(flags['cuda'])}/{len(flags['cuda'])}, agree {agree} "
              f"(cpu {errs['cpu_s']:.1f} s, cuda {errs['cuda_s']:.1f} s)", flush=True)
    return out


def throughput(problems: int, d: int, adam_steps: int, cpu_adam_steps: int) -> dict:
    """Adam instance-steps per second of the batched engine, CUDA against CPU, same problems."""
    from peftaudit.search.engine import SearchConfig
    from peftaudit.strategies.instances import planted_prompt_instance

    restarts = 4
    rng = np.random.default_rng(1)
    insts = [planted_prompt_instance(rng, d, 2) for _ in range(problems // restarts)]
    base = dict(sizes=(2,), restarts=restarts, rounds=1, tolerance=0.0, max_memory_mb=16384, polish_steps=0)
    rates = {}
    for device, steps in (("cuda", adam_steps), ("cpu", cpu_adam_steps)):
        _timed_search(insts[:8], SearchConfig(device=device, steps=2, **base))  # warm-up
        t_adam = _timed_search(insts, SearchConfig(device=device, steps=steps, **base))
        rates[device] = {"adam_steps_per_s": problems * steps / t_adam, "adam_s": t_adam, "adam_steps": steps}
        print(f"throughput {device}: Adam {rates[device]['adam_steps_per_s']:,.0f} instance-steps/s "
              f"({steps} steps in {t_adam:.1f} s)", flush=True)
    rates["adam_ratio"] = rates["cuda"]["adam_steps_per_s"] / rates["cpu"]["adam_steps_per_s"]
    print(f"ratio cuda/cpu at d={d}, {problems} problems: Adam {rates['adam_ratio']:.1f}x", flush=True)
    return rates


def time_to_solution(problems: int, d: int, cpu_instances: int) -> dict:
    """search() with the quick budget to replayed solutions, CUDA against CPU, seconds per instance."""
    from peftaudit.search.engine import SearchConfig, search
    from peftaudit.settings import get_profile
    from peftaudit.strategies.instances import planted_prompt_instance

    prof = get_profile("quick")
    rng = np.random.default_rng(2)
    insts = [planted_prompt_instance(rng, d, 2) for _ in range(problems // 4)]
    out = {}
    for device, part in (("cuda", insts), ("cpu", insts[:cpu_instances])):
        config = SearchConfig(sizes=(2,), restarts=4, steps=prof.steps, polish_steps=prof.polish_steps, rounds=1,
                              device=device, max_memory_mb=16384)
        _timed_search(part[:2], config)  # warm-up
        t0 = time.perf_counter()
        solved = [a.solved for a in search(part, config, progress=False)]
        seconds = time.perf_counter() - t0
        out[device] = {"instances": len(part), "seconds": seconds, "seconds_per_instance": seconds / len(part),
                       "recall": sum(solved) / len(solved),
                       "recall_on_cpu_subset": sum(solved[:cpu_instances]) / min(cpu_instances, len(solved))}
        print(f"time to solution {device}: {len(part)} instances at d={d} in {seconds:.1f} s "
              f"({seconds / len(part):.4f} s per instance), recall {out[device]['recall']:.1%}", flush=True)
    out["ratio"] = out["cpu"]["seconds_per_instance"] / out["cuda"]["seconds_per_instance"]
    print(f"ratio cpu/cuda seconds per instance at d={d}: {out['ratio']:.1f}x", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=4096)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--adam-steps", type=int, default=100)
    parser.add_argument("--cpu-adam-steps", type=int, default=10)
    parser.add_argument("--cpu-instances", type=int, default=16, help="time to solution: CPU side instances")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here")
    props = torch.cuda.get_device_properties(0)
    print(f"device {props.name}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}", flush=True)
    result = {"device": props.name, "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
              "verdicts": verdicts(args.seed),
              "throughput": throughput(args.problems, args.d, args.adam_steps, args.cpu_adam_steps),
              "time_to_solution": time_to_solution(args.problems, args.d, args.cpu_instances)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
