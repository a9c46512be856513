"""Batched search engine against a plain per-instance loop, on the same problems, in one run.

Run by hand: `python benchmarks/search_throughput.py [--instances 256] [--restarts 4] [--d 8]
[--steps 100] [--loop-problems 32] [--device auto]`. The loop is written the way one would by
hand: one problem at a time, an nn.Parameter prompt and torch.optim.Adam. Both run the same
number of Adam steps on the same model and data; the loop runs on the first --loop-problems
problems (rates are per instance-step, so they compare). Last line: one JSON object.

This measures Adam step throughput only (no Levenberg-Marquardt, no replay deciding "solved"):
what a batch of fixed-step work costs. Time to a replayed solution, against the solvers a user
would pick instead, is `search_vs_least_squares.py`.
"""

import argparse
import json
import resource
import time

import numpy as np
import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from peftaudit.models.transformer import forward, to_torch
    from peftaudit.search.engine import SearchConfig, search
    from peftaudit.search.problems import resolve_device
    from peftaudit.strategies.instances import planted_prompt_instance

    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=256)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--length", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--loop-problems", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-memory", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(args.seed)
    insts = [planted_prompt_instance(rng, args.d, args.length) for _ in range(args.instances)]

    # batched: instances x restarts as one tensor program (Adam only, no polish, one round)
    config = SearchConfig(sizes=(args.length,), restarts=args.restarts, steps=args.steps, polish_steps=0, rounds=1,
                          device=args.device, max_memory_mb=args.max_memory, tolerance=0.0)
    mem0 = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    search(insts, config, progress=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    batched_s = time.perf_counter() - t0
    batched_rate = args.instances * args.restarts * args.steps / batched_s
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else peak_rss_mb()

    # per-instance loop: the same problems, one at a time
    problems = [(insts[i // args.restarts], i) for i in range(min(args.loop_problems, args.instances * args.restarts))]
    t0 = time.perf_counter()
    for inst, i in problems:
        params = to_torch(inst.weights, device=device)
        X = torch.as_tensor(inst.inputs(), device=device)[None]
        Y = torch.as_tensor(inst.targets(), device=device)[None]
        gen = torch.Generator().manual_seed(i)
        prompt = torch.nn.Parameter(torch.randn(1, args.length, args.d, generator=gen, dtype=torch.float64).to(device))
        opt = torch.optim.Adam([prompt], lr=0.05)
        for _ in range(args.steps):
            opt.zero_grad()
            out = forward(inst.spec, params, X, prompt=prompt)
            loss = (out[:, :, out.shape[2] - Y.shape[2]:, :] - Y).square().sum()
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    loop_s = time.perf_counter() - t0
    loop_rate = len(problems) * args.steps / loop_s
    print(f"device {device}, d={args.d}, {args.instances} instances x {args.restarts} restarts, {args.steps} steps")
    print(f"batched: {batched_rate:,.0f} instance-steps/s ({batched_s:.1f} s)")
    print(f"loop:    {loop_rate:,.0f} instance-steps/s ({loop_s:.1f} s for {len(problems)} problems)")
    print(f"ratio:   {batched_rate / loop_rate:.0f}x; peak memory {peak:.0f} MB (baseline {mem0:.0f} MB)")
    print(json.dumps({"device": str(device), "d": args.d, "instances": args.instances, "restarts": args.restarts,
                      "steps": args.steps, "batched_steps_per_s": batched_rate, "loop_steps_per_s": loop_rate,
                      "ratio": batched_rate / loop_rate, "peak_mem_mb": peak}))


if __name__ == "__main__":
    main()
