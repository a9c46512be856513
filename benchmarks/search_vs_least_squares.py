"""Time to solution: `search()` against what a user would pick instead, on the same instances.

Run by hand: `python benchmarks/search_vs_least_squares.py [--family prompt|lora|prompt-scaled|prompt-deep]
[--d 4,8,16,32,64] [--problems 256] [--ls-problems 64] [--restarts 4] [--repeats 2] [--adam-steps 2000]`.
For each d, the same planted instances (memorizable by construction) go to three solvers,
interleaved (the order alternates each repeat), and one float64 replay decides "solved" for all
of them (max error <= 1e-8). Families: the project's planted prompt (length 2) and LoRA (rank 1
on W_v) instances, and two others: `prompt-scaled` (weights scaled by 1/sqrt(d), as in an
initialized network) and `prompt-deep` (two causal layers). The per-instance solvers run on
the first `--ls-problems` / `--adam-problems` instances, and recall is compared on that subset:

- `search`: the batched engine on all instances at once (the quick profile's budget);
- `least_squares`: scipy's MINPACK Levenberg-Marquardt per instance in a Python loop (method "lm",
  tight tolerances, the Jacobian from torch autograd or, with `--ls-jac 2-point`, scipy's finite
  differences), up to R restarts, stopping at the first solved restart;
- `adam`: a per-instance Adam loop in the paper's style (lr 0.1), up to R restarts, stopping early
  once the replay would pass.

Prints a table of median wall times, recalls and ratios, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch


def _scaled_planted_prompt(rng: np.random.Generator, d: int, length: int):
    """A planted prompt instance whose weight matrices are scaled by 1/sqrt(d) (targets recomputed)."""
    from peftaudit.instance import make_instance
    from peftaudit.strategies.instances import model_outputs, planted_prompt_instance

    base = planted_prompt_instance(rng, d, length)
    weights = {k: (v / np.sqrt(d) if np.ndim(v) == 2 else v) for k, v in base.weights.items()}
    prompt = np.array(base.meta["planted"]["prompt"])
    X = base.inputs()
    Y = model_outputs(base.spec, weights, X, prompt)
    return make_instance(base.spec, weights, list(zip(X, Y)), meta={"family": "planted-prompt-scaled"})


def _instances(family: str, d: int, count: int, seed: int):
    from peftaudit.strategies.instances import planted_lora_instance, planted_prompt_instance

    rng = np.random.default_rng([seed, d])
    if family == "prompt":
        return [planted_prompt_instance(rng, d, 2) for _ in range(count)], "prompt", {}, 2
    if family == "prompt-scaled":
        return [_scaled_planted_prompt(rng, d, 2) for _ in range(count)], "prompt", {}, 2
    if family == "prompt-deep":
        return ([planted_prompt_instance(rng, d, 2, layers=2, attention="causal") for _ in range(count)],
                "prompt", {}, 2)
    return [planted_lora_instance(rng, d, 1) for _ in range(count)], "lora", {"targets": "v"}, 1


def _one_problem(method, inst, size):
    """Residual and Jacobian of one instance as functions of a flat float64 vector."""
    from peftaudit.models.transformer import to_torch

    W = to_torch(inst.weights)
    X = torch.as_tensor(inst.inputs(), dtype=torch.float64)[None]
    Y = torch.as_tensor(inst.targets(), dtype=torch.float64)[None]
    template = method.init(inst.spec, 1, size, torch.Generator().manual_seed(0))
    shapes = {k: v.shape for k, v in template.items()}

    def unflat(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, o = {}, 0
        for k, shape in shapes.items():
            n = int(np.prod(shape))
            out[k] = theta[o:o + n].reshape(shape)
            o += n
        return out

    def residual_t(theta: torch.Tensor) -> torch.Tensor:
        out = method.outputs(inst.spec, W, unflat(theta), X)                 # (1,E,n,d)
        return (out[:, :, out.shape[2] - Y.shape[2]:, :] - Y).reshape(-1)    # (R,)

    jac = torch.func.jacfwd(residual_t)
    return residual_t, jac, unflat, template


def _replayed(method, inst, adapter) -> bool:
    from peftaudit.search.engine import replay
    return replay(method, inst, {k: v.detach().numpy()[0] for k, v in adapter.items()})[1] <= 1e-8


def _per_instance(insts, name, options, size, restarts, solve) -> list[bool]:
    """Each instance on its own: up to `restarts` seeded starts, stopping at the first whose
    result replays as solved. solve(residual_t, jac, x0) -> theta, all flat float64 tensors.

    The forward uses plain matrix products, as a user's own code would: the engine's `rowmap`
    Function pays for its dispatch only across a batch (one instance at d = 32 ran 2x slower
    through it)."""
    from peftaudit.models import rowmap
    from peftaudit.models.methods import get_method

    saved, rowmap.MIN_ENTRIES = rowmap.MIN_ENTRIES, math.inf
    try:
        return _each_instance(get_method(name, **options), insts, size, restarts, solve)
    finally:
        rowmap.MIN_ENTRIES = saved


def _each_instance(method, insts, size, restarts, solve) -> list[bool]:
    solved = []
    for i, inst in enumerate(insts):
        solved.append(False)
        residual_t, jac, unflat, _ = _one_problem(method, inst, size)
        for r in range(restarts):
            start = method.init(inst.spec, 1, size, torch.Generator().manual_seed(1000 * i + r))
            theta = solve(residual_t, jac, torch.cat([v.reshape(-1) for v in start.values()]))
            if _replayed(method, inst, unflat(theta.detach())):
                solved[-1] = True
                break
    return solved


def run_least_squares(insts, name, options, size, restarts, jac_kind="torch"):
    from scipy.optimize import least_squares

    def solve(residual_t, jac, x0):
        fit = least_squares(lambda x: residual_t(torch.as_tensor(x)).numpy(), x0.numpy(),
                            jac=(lambda x: jac(torch.as_tensor(x)).numpy()) if jac_kind == "torch" else "2-point",
                            method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=200 * len(x0))
        return torch.as_tensor(fit.x)

    return _per_instance(insts, name, options, size, restarts, solve)


def run_adam(insts, name, options, size, restarts, steps):
    def solve(residual_t, _jac, x0):
        theta = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=0.1)
        for step in range(steps):
            opt.zero_grad()
            res = residual_t(theta)
            if step % 50 == 0 and res.detach().abs().max() <= 1e-9:
                break
            res.square().sum().backward()
            opt.step()
        return theta

    return _per_instance(insts, name, options, size, restarts, solve)


def run_search(insts, name, options, size, restarts):
    from peftaudit.search.engine import SearchConfig, search
    from peftaudit.settings import get_profile

    prof = get_profile("quick")
    config = SearchConfig(method=name, options=options, sizes=(size,), restarts=restarts, steps=prof.steps,
                          polish_steps=prof.polish_steps, device="cpu")
    return [a.solved for a in search(insts, config, progress=False)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", choices=["prompt", "lora", "prompt-scaled", "prompt-deep"], default="prompt")
    parser.add_argument("--d", default="4,8,16")
    parser.add_argument("--problems", type=int, default=64, help="instances per d, all searched by search()")
    parser.add_argument("--ls-problems", type=int, default=0, help="least_squares runs on the first N (0: all)")
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adam-steps", type=int, default=2000)
    parser.add_argument("--adam-problems", type=int, default=16, help="the slow Adam loop runs on the first N")
    parser.add_argument("--ls-jac", choices=["torch", "2-point"], default="torch",
                        help="least_squares' Jacobian: torch forward mode, or scipy's finite differences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for d in (int(v) for v in args.d.split(",")):
        insts, name, options, size = _instances(args.family, d, args.problems, args.seed)
        n_ls = min(len(insts), args.ls_problems or len(insts))
        n_adam = min(len(insts), args.adam_problems)
        counts = {"search": len(insts), "least_squares": n_ls, "adam": n_adam}
        sides = {"search": lambda: run_search(insts, name, options, size, args.restarts),
                 "least_squares": lambda: run_least_squares(insts[:n_ls], name, options, size, args.restarts,
                                                            args.ls_jac),
                 "adam": lambda: run_adam(insts[:n_adam], name, options, size, args.restarts, args.adam_steps)}
        times: dict[str, list[float]] = {k: [] for k in sides}
        solved: dict[str, list[bool]] = {}
        for rep in range(args.repeats):
            order = list(sides) if rep % 2 == 0 else list(reversed(sides))
            for side in order:
                t0 = time.perf_counter()
                solved[side] = sides[side]()
                times[side].append(time.perf_counter() - t0)
        per = {k: statistics.median(v) / counts[k] for k, v in times.items()}
        recall = {k: sum(v) / len(v) for k, v in solved.items()}
        # recall compared on the same instances: search's on each per-instance solver's subset
        same = {"least_squares": sum(solved["search"][:n_ls]) / n_ls, "adam": sum(solved["search"][:n_adam]) / n_adam}
        row = {"d": d, "family": args.family, "problems": counts, "seconds_per_instance": per, "recall": recall,
               "search_recall_on_same_subset": same,
               "search_speedup_vs_least_squares": per["least_squares"] / per["search"],
               "search_speedup_vs_adam": per["adam"] / per["search"]}
        rows.append(row)
        print(f"d={d:>3} {args.family}: s/instance search {per['search']:.4f}, least_squares "
              f"{per['least_squares']:.4f}, adam {per['adam']:.4f}; recall search {recall['search']:.1%} "
              f"({same['least_squares']:.1%} on least_squares' {n_ls}), least_squares {recall['least_squares']:.1%}, "
              f"adam {recall['adam']:.1%} (search {same['adam']:.1%} on those {n_adam}); search is "
              f"{row['search_speedup_vs_least_squares']:.2f}x least_squares, "
              f"{row['search_speedup_vs_adam']:.1f}x adam", flush=True)
    print(json.dumps({"threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "rows": rows}))


if __name__ == "__main__":
    main()
