"""`peftaudit search`, `replay` and `calibrate`: the batched search, the exact replay of an
adapter, and the search's recall on planted instances."""

from __future__ import annotations

import argparse
import json
import sys

from peftaudit.limits import MAX_RESTARTS, MAX_SIZE
from peftaudit.settings import PROFILES

from . import exits
from .args import bounded, int_list, method_options, new_file, nonneg_float, positive_float, seed


def _search_config(args: argparse.Namespace, method: str, sizes: tuple[int, ...], options: dict):
    from peftaudit.search.engine import SearchConfig
    from peftaudit.settings import get_profile

    prof = get_profile(args.profile)
    return SearchConfig(method=method, options=options, sizes=sizes,
                        restarts=args.restarts or prof.restarts, steps=args.steps if args.steps is not None else prof.steps,
                        polish_steps=args.polish_steps if args.polish_steps is not None else prof.polish_steps,
                        seed=args.seed, device=args.device, max_memory_mb=args.max_memory,
                        norm_bound=args.norm_bound).validate()


def _method_sizes(args: argparse.Namespace, method) -> tuple[int, ...]:
    """--sizes if given; else the rank for rank methods, 1 for methods without a size, the lengths."""
    from peftaudit.models.methods.base import one_size

    if args.sizes:
        return args.sizes
    if one_size(method):
        return (1,)
    return (args.rank,) if method.size_name == "rank" else args.lengths


def cmd_search(args: argparse.Namespace) -> int:
    from peftaudit import instance as instance_io
    from peftaudit.models.methods import get_method
    from peftaudit.search.adapters import replayed_figures, save_adapter
    from peftaudit.search.engine import search

    options = method_options(args)
    method = get_method(args.method, **options)
    sizes = _method_sizes(args, method)
    config = _search_config(args, args.method, sizes, options)
    new_file(args.out, args.force)
    inst = instance_io.load(args.instance)
    attempts = search([inst], config, progress=not args.json and sys.stderr.isatty())
    size_key = method.size_name if method.size_name in ("rank", "length") else "size"
    results = [{size_key: a.size, "params": a.params, "best_loss": a.best_loss, "max_abs_error": a.max_abs_error,
                "solved": a.solved} for a in attempts]
    solved = [a for a in attempts if a.solved]
    chosen = solved[0] if solved else min(attempts, key=lambda a: a.best_loss)
    if args.out:
        save_adapter(args.out, inst, args.method, options, chosen.size, chosen.adapter,
                     replayed_figures(chosen.best_loss, chosen.max_abs_error))
    if args.json:
        print(json.dumps({"method": args.method, "options": options, "tolerance": config.tolerance,
                          "results": results}))
    else:
        print(f"{args.method}: best replayed results (memorized means max error <= {config.tolerance:g})")
        for r in results:
            print(f"  {size_key} {r[size_key]:>3}  params {r['params']:>6}  loss {r['best_loss']:.3e}  "
                  f"max error {r['max_abs_error']:.3e}  {'MEMORIZED' if r['solved'] else ''}")
        if args.out:
            print(f"adapter ({size_key} {chosen.size}) written to {args.out}; check it with "
                  f"`peftaudit replay {args.instance} {args.out}`")
    return exits.OK if solved else exits.FAILED


def cmd_replay(args: argparse.Namespace) -> int:
    from peftaudit import instance as instance_io
    from peftaudit.models.methods import get_method
    from peftaudit.search.adapters import load_adapter
    from peftaudit.search.engine import replay, rigorous_replay

    from peftaudit.models.methods.module_method import NoExactModel

    if args.method:  # a plugin the adapter names: imported only when asked for here
        get_method(args.method)
    inst = instance_io.load(args.instance)
    name, options, size, tensors = load_adapter(args.adapter, inst)
    method = get_method(name, **options)
    loss, err = replay(method, inst, tensors)
    try:
        lo, hi = rigorous_replay(method, inst, tensors)
    except NoExactModel as exc:
        if args.json:
            print(json.dumps({"method": name, "size": size, "loss": loss, "max_abs_error": err,
                              "exact_max_error": None, "tolerance": args.tolerance, "memorizes": None,
                              "kind": "numerical (float64 reference forward); " + str(exc)}))
        else:
            print(f"{name} (size {size}): float64 replay max error {err:.3e}, loss {loss:.3e}; {exc}, so this "
                  "is not a proof either way")
        return exits.FAILED
    ok = hi <= args.tolerance
    if args.json:
        print(json.dumps({"method": name, "size": size, "loss": loss, "max_abs_error": err,
                          "exact_max_error": [lo, hi], "tolerance": args.tolerance, "memorizes": ok,
                          "kind": "exact model enclosed by interval arithmetic"}))
    else:
        print(f"{name} (size {size}): the exact model's max error lies in [{lo:.3e}, {hi:.3e}] (interval "
              f"arithmetic; float64 replay {err:.3e}, loss {loss:.3e}) -> "
              f"{'memorizes' if ok else 'does NOT memorize'} at tolerance {args.tolerance:g}")
    return exits.OK if ok else exits.FAILED


def cmd_calibrate(args: argparse.Namespace) -> int:
    from peftaudit.search.calibrate import calibrate
    from peftaudit.settings import get_profile

    prof = get_profile(args.profile)
    config = _search_config(args, args.method, (1,), {"targets": "v"} if args.method == "lora" else {})
    result = calibrate(args.method, args.count or prof.planted, config, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"calibration of {args.method} search at the planted size: recall {result.recall:.1%} "
              f"({result.solved}/{result.total}) in {result.seconds:.1f} s "
              f"({result.seconds_per_instance:.3f} s per instance)")
        for key, (ok, total) in result.by_group.items():
            print(f"  {key:<16} {ok}/{total}")
        for i, d, size, err in result.failures[:10]:
            print(f"  missed: planted #{i} (d={d}, size={size}), best replayed max error {err:.2e}")
    return exits.OK


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=list(PROFILES), default="quick",
                   help="budget defaults (restarts, steps, polish steps)")
    p.add_argument("--restarts", type=bounded(1, MAX_RESTARTS, "a restart count from 1"))
    p.add_argument("--steps", type=bounded(0, 10**6, "a step count from 0"), help="Adam steps")
    p.add_argument("--polish-steps", type=bounded(0, 10**6, "a step count from 0"), help="Levenberg-Marquardt steps")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-memory", type=bounded(1, 2**20, "a budget in MB from 1"), default=2048,
                   help="memory budget in MB (chunks the batch)")
    p.add_argument("--norm-bound", type=positive_float,
                   help="project prompt/prefix tokens onto this Euclidean norm ball")
    p.add_argument("--json", action="store_true")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search for a prompt, prefix or adapter that memorizes an instance")
    p.add_argument("instance")
    p.add_argument("--method", default="prompt",
                   help="prompt, prefix, prefix-kv, lora, full, peft-lora, peft-dora, peft-ia3, peft-lokr, an entry point "
                        "of peftaudit.methods, or package.module:Name")
    p.add_argument("--lengths", type=int_list, default=(1, 2, 4), help="prompt / prefix lengths, e.g. 1,2,4")
    p.add_argument("--rank", type=bounded(1, MAX_SIZE, "a rank from 1"), default=1, help="LoRA rank")
    p.add_argument("--sizes", type=int_list, help="sizes for any method (overrides --lengths and --rank)")
    p.add_argument("--targets", help="LoRA / peft target matrices among q,k,v,o,1,2 (LoRA default: v)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a method option (repeatable)")
    p.add_argument("--out", help="write the best adapter here (JSON; a new file unless --force)")
    p.add_argument("--force", action="store_true", default=None, help="replace an existing --out file")
    _search_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("replay", help="replay an adapter on an instance in float64")
    p.add_argument("instance")
    p.add_argument("adapter")
    p.add_argument("--method", help="import this package.module:Name plugin first (adapter files never import code)")
    p.add_argument("--tolerance", type=nonneg_float, default=1e-8)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("calibrate", help="recall of the search on planted instances")
    p.add_argument("--method", choices=["prompt", "lora"], default="prompt")
    p.add_argument("--count", type=bounded(1, 100_000, "a count from 1"),
                   help="planted instances (default: the profile's)")
    _search_options(p)
    p.set_defaults(func=cmd_calibrate)
