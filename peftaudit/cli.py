"""The `peftaudit` command line. Each subcommand validates its input before any work starts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from peftaudit.errors import InputError, PeftauditError

EXIT_BAD_INPUT = 2
CERTIFY_EXIT = {"certified": 0, "not-certified": 1, "not-applicable": 3, "unknown": 4}
GENERATE_KINDS = ("l1", "l1-exact", "l1-parallel", "planted-prompt", "planted-lora", "l2", "m", "m-fold-mlp",
                  "m-fold-attention", "m-fold-attention-strong", "m-naive-encoder")


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, with a message naming what was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    value = _nonneg_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


# ------------------------------------------------------------------ certify / check / generate

def cmd_certify(args: argparse.Namespace) -> int:
    from peftaudit import instance as instance_io
    from peftaudit.verify.l1 import certify

    inst = instance_io.load(args.instance)
    if args.norm_bound is not None and args.claim != "M":
        print("peftaudit certify: --norm-bound applies to --claim M only", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.claim == "L2":
        from peftaudit.verify.l2 import certify_l2
        result = certify_l2(inst, tolerance=args.tolerance)
    elif args.claim == "M":
        from peftaudit.verify.m import certify_m
        result = certify_m(inst, tolerance=args.tolerance, bound=args.norm_bound)
    else:
        result = certify(inst, args.claim, tolerance=args.tolerance, decide_injectivity=True)
    if args.out and result.certificate is not None:
        instance_io.atomic_write_bytes(Path(args.out), (json.dumps(result.certificate) + "\n").encode())
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"{result.claim}: {result.status}")
        if result.margin is not None:
            print(f"  margin at the layer output: {float(result.margin):.6g} (tolerance {args.tolerance:g})")
        if result.best_error is not None:
            print(f"  best reachable attention error of the relaxation: {result.best_error:.6g}")
        print(f"  {result.reason}")
        if args.out and result.certificate is not None:
            print(f"  certificate written to {args.out}")
        elif args.out:
            print("  no certificate to write")
    return CERTIFY_EXIT[result.status]


def cmd_check(args: argparse.Namespace) -> int:
    from peftaudit.verify.check import MalformedCertificate, check_file

    try:
        result = check_file(args.certificate)
    except MalformedCertificate as exc:
        print(f"malformed certificate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{'valid' if result.valid else 'INVALID'}: {result.reason}")
    return 0 if result.valid else 1


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from peftaudit import instance as instance_io
    from peftaudit.strategies import instances as builders

    rng = np.random.default_rng(args.seed)
    if args.kind.startswith("l1"):
        variant = {"l1": "skew", "l1-exact": "exact", "l1-parallel": "parallel"}[args.kind]
        inst = builders.l1_instance(rng, args.d, variant)
    elif args.kind == "planted-prompt":
        inst = builders.planted_prompt_instance(rng, args.d, args.length)
    elif args.kind == "l2":
        inst = builders.l2_instance(rng, args.d, 2)
    elif args.kind.startswith("m"):
        from peftaudit.strategies import m_instances as m_builders
        inst = {"m": lambda: m_builders.m_invertible_instance(rng, args.d, layers=args.layers),
                "m-fold-mlp": lambda: m_builders.m_fold_mlp_instance(rng, args.d),
                "m-fold-attention": lambda: m_builders.m_fold_attention_instance(rng, args.d),
                "m-fold-attention-strong": lambda: m_builders.m_fold_attention_instance(rng, args.d, strong=True),
                "m-naive-encoder": lambda: m_builders.m_naive_encoder_instance(rng, args.d)}[args.kind]()
    else:
        inst = builders.planted_lora_instance(rng, args.d, args.length)
    instance_io.save(inst, args.out)
    print(f"wrote {args.kind} instance (d={args.d}, seed={args.seed}) to {args.out}")
    return 0


# ------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftaudit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("certify", help="certify an impossibility claim on an instance (L1, L1+, L2, M)")
    p.add_argument("instance", help="instance file (.json, .npz, .safetensors)")
    p.add_argument("--claim", choices=["L1", "L1+", "L2", "M"], default="L1")
    p.add_argument("--norm-bound", type=_positive_float, default=None,
                   help="M only: the bound B on prompt tokens' 2-norms (default: the instance's "
                        "meta.prompt_norm_bound)")
    p.add_argument("--tolerance", type=_nonneg_float, default=1e-9,
                   help="certified means margin > TOLERANCE at the layer output (default 1e-9)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="write the certificate here (JSON)")
    p.set_defaults(func=cmd_certify)

    p = sub.add_parser("check-certificate", help="re-verify a certificate in exact arithmetic")
    p.add_argument("certificate")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("generate", help="write an instance of a family")
    p.add_argument("--kind", choices=GENERATE_KINDS, required=True)
    p.add_argument("--d", type=_positive_int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--length", type=_positive_int, default=1, help="planted prompt length or LoRA rank")
    p.add_argument("--layers", type=_positive_int, default=1, help="layers (kind m)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_generate)

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"peftaudit {args.command}: bad input: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PeftauditError as exc:
        print(f"peftaudit {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"peftaudit {args.command}: interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------ search / replay / calibrate

def _search_config(args: argparse.Namespace, method: str, sizes: tuple[int, ...], options: dict):
    from peftaudit.search.engine import SearchConfig
    from peftaudit.settings import get_profile

    prof = get_profile(args.profile)
    return SearchConfig(method=method, options=options, sizes=sizes,
                        restarts=args.restarts or prof.restarts, steps=args.steps if args.steps is not None else prof.steps,
                        polish_steps=args.polish_steps if args.polish_steps is not None else prof.polish_steps,
                        seed=args.seed, device=args.device, max_memory_mb=args.max_memory,
                        norm_bound=args.norm_bound).validate()


def cmd_search(args: argparse.Namespace) -> int:
    from peftaudit import instance as instance_io
    from peftaudit.search.adapters import replayed_figures, save_adapter
    from peftaudit.search.engine import search

    options = {"targets": args.targets} if args.method == "lora" else {}
    if args.method == "lora":
        sizes = (args.rank,)
    elif args.method == "full":
        sizes = (1,)
    else:
        sizes = args.lengths
    config = _search_config(args, args.method, sizes, options)
    inst = instance_io.load(args.instance)
    attempts = search([inst], config, progress=not args.json and sys.stderr.isatty())
    size_key = "rank" if args.method == "lora" else "length"
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
    return 0 if solved else 1


def cmd_replay(args: argparse.Namespace) -> int:
    from peftaudit import instance as instance_io
    from peftaudit.models.methods import get_method
    from peftaudit.search.adapters import load_adapter
    from peftaudit.search.engine import replay

    inst = instance_io.load(args.instance)
    name, options, size, tensors = load_adapter(args.adapter, inst)
    loss, err = replay(get_method(name, **options), inst, tensors)
    ok = err <= args.tolerance
    if args.json:
        print(json.dumps({"method": name, "size": size, "loss": loss, "max_abs_error": err,
                          "tolerance": args.tolerance, "memorizes": ok, "kind": "numerical"}))
    else:
        print(f"{name} (size {size}): replayed loss {loss:.3e}, max error {err:.3e} -> "
              f"{'memorizes' if ok else 'does NOT memorize'} at tolerance {args.tolerance:g} (float64, numerical)")
    return 0 if ok else 1


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
              f"({result.solved}/{result.total})")
        for key, (ok, total) in result.by_group.items():
            print(f"  {key:<16} {ok}/{total}")
        for i, d, size, err in result.failures[:10]:
            print(f"  missed: planted #{i} (d={d}, size={size}), best replayed max error {err:.2e}")
    return 0


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["quick", "ci", "thorough"], default="quick",
                   help="budget defaults (restarts, steps, polish steps)")
    p.add_argument("--restarts", type=_positive_int)
    p.add_argument("--steps", type=_nonneg_int, help="Adam steps")
    p.add_argument("--polish-steps", type=_nonneg_int, help="Levenberg-Marquardt steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-memory", type=_positive_int, default=2048, help="memory budget in MB (chunks the batch)")
    p.add_argument("--norm-bound", type=float, help="project prompt/prefix tokens onto this Euclidean norm ball")
    p.add_argument("--json", action="store_true")


def _register_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search for a prompt, prefix or adapter that memorizes an instance")
    p.add_argument("instance")
    p.add_argument("--method", choices=["prompt", "prefix", "prefix-kv", "lora", "full"], default="prompt")
    p.add_argument("--lengths", type=_int_list, default=(1, 2, 4), help="prompt / prefix lengths, e.g. 1,2,4")
    p.add_argument("--rank", type=_positive_int, default=1, help="LoRA rank")
    p.add_argument("--targets", default="v", help="LoRA target matrices among q,k,v,o,1,2")
    p.add_argument("--out", help="write the best adapter here (JSON)")
    _search_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("replay", help="replay an adapter on an instance in float64")
    p.add_argument("instance")
    p.add_argument("adapter")
    p.add_argument("--tolerance", type=_nonneg_float, default=1e-8)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("calibrate", help="recall of the search on planted instances")
    p.add_argument("--method", choices=["prompt", "lora"], default="prompt")
    p.add_argument("--count", type=_positive_int, help="planted instances (default: the profile's)")
    _search_options(p)
    p.set_defaults(func=cmd_calibrate)


EXTRA_COMMANDS.append(_register_search)


# ------------------------------------------------------------------ audit

def cmd_audit(args: argparse.Namespace) -> int:
    import time
    from datetime import datetime, timezone

    from peftaudit.audit import run_audit

    claims = [c.strip() for c in args.claims.split(",") if c.strip()] if args.claims else None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    out = args.out or f"reports/{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{args.profile}-s{args.seed}"
    started = time.perf_counter()
    try:
        result = run_audit(claims, profile=args.profile, seed=args.seed, methods=methods, jobs=args.jobs,
                           device=args.device, out=out, calibration=not args.no_calibration,
                           progress=sys.stderr.isatty(), argv=sys.argv[1:])
    except PeftauditError:
        raise
    except KeyboardInterrupt:
        print("peftaudit audit: interrupted; no report was written", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: say so, exit 3
        import traceback
        traceback.print_exc()
        print(f"peftaudit audit: internal error: {exc}", file=sys.stderr)
        return 3
    print(f"peftaudit audit ({args.profile}, seed {args.seed}) in {time.perf_counter() - started:.0f} s")
    width = max([5] + [len(c["id"]) for c in result.report["claims"]])
    print(f"{'claim':<{width}} {'verdict':<10} reason")
    for c in result.report["claims"]:
        note = ""
        if c.get("expect"):
            met = "as expected" if c["verdict"] == c["expect"] else f"expected {c['expect']}"
            note = f"[{met}; drops {c['dropped']}] " if c.get("dropped") else f"[{met}] "
        print(f"{c['id']:<{width}} {c['verdict']:<10} {note}{c['reason'][:110]}")
        for ce in c["counterexamples"][:3]:
            print(f"{'':<{width}} replay: {ce['replay']}")
    for name, cal in result.report["calibration"].items():
        print(f"calibration {name}: recall {cal['recall']:.1%} ({cal['solved']}/{cal['total']})")
    print(f"report: {result.out_dir}/report.md (also report.json, report.html)")
    if any(c["verdict"] == "ERROR" for c in result.report["claims"]):
        return 3
    return 1 if result.refuted else 0


def _register_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="audit every registered claim and write a report")
    p.add_argument("--profile", choices=["quick", "ci", "thorough"], default="quick")
    p.add_argument("--claims", help="comma-separated claim ids (default: all registered)")
    p.add_argument("--methods", help="restrict searches to these methods (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=_positive_int, default=1, help="processes for certification")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", help="report folder (default: reports/<run-id>)")
    p.add_argument("--no-calibration", action="store_true", help="skip the calibration on planted instances")
    p.set_defaults(func=cmd_audit)


EXTRA_COMMANDS.append(_register_audit)


if __name__ == "__main__":
    sys.exit(main())
