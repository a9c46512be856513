"""The `peftaudit` command line. Each subcommand validates its input before any work starts."""

from __future__ import annotations

import argparse
import os
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from peftaudit.errors import InputError, PeftauditError, Terminated
from peftaudit.limits import LIMITS, MAX_INSTANCES, MAX_JOBS, MAX_RESTARTS, MAX_SEED, MAX_SIZE, MAX_THREADS

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
CERTIFY_EXIT = {"certified": 0, "not-certified": 1, "not-applicable": 3, "unknown": 4}
GENERATE_KINDS = ("l1", "l1-exact", "l1-parallel", "planted-prompt", "planted-lora", "l2", "m", "m-fold-mlp",
                  "m-fold-attention", "m-fold-attention-strong", "m-naive-encoder", "u")


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




def _bounded(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (checked before the text is converted when
    it is longer than the bound could be)."""
    parse_low = _int_at_least(low, what)

    def parse(text: str) -> int:
        if len(text.strip()) > len(str(high)) + 1:
            raise argparse.ArgumentTypeError(f"expected {what} (at most {high}), got {text[:40]!r}")
        value = parse_low(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected {what} (at most {high}), got {value}")
        return value
    return parse


_seed = _bounded(0, MAX_SEED, "a seed, an integer >= 0")


def _names(text: str, what: str) -> list[str]:
    """Comma-separated names; an empty list is an error, never 'all'."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError(what, text, "one or more comma-separated names (leave the option out for all)")
    return names


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
    if any(v > MAX_SIZE for v in values):
        raise argparse.ArgumentTypeError(f"expected sizes of at most {MAX_SIZE}, got {text!r}")
    return values


# ------------------------------------------------------------------ certify / check / generate

def _new_file(path: str | None, force: bool) -> None:
    """An --out file must be new, or --force must say that replacing a regular file is meant."""
    if path is None:
        return
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not force or not target.is_file() or target.is_symlink():
            raise InputError("--out", path, "a new file (it exists; --force replaces a regular file)")
    if target.parent.exists() and not target.parent.is_dir():
        raise InputError("--out", path, f"a path in a folder ({target.parent} is not one)")


def _certify_u(inst):
    """U's witness, reported certified only once the independent checker passes it."""
    from dataclasses import replace

    from peftaudit.verify.checkers import MalformedCertificate, check_certificate
    from peftaudit.verify.encoders.u import certify_u

    result = certify_u(inst)
    if result.status != "certified":
        return result
    try:
        checked = check_certificate(result.certificate)
    except MalformedCertificate as exc:
        return replace(result, status="unknown", reason=f"the checker refused the witness: {exc}", certificate=None)
    if not checked.valid:
        return replace(result, status="not-certified", reason=f"the witness fails its exact check: {checked.reason}")
    return replace(result, margin=checked.margin, reason=checked.reason)


def cmd_certify(args: argparse.Namespace) -> int:
    from peftaudit import instance as instance_io
    from peftaudit.bounded import BudgetExceeded, run_bounded
    from peftaudit.verify.encoders.l1 import certify

    _new_file(args.out, args.force)
    inst = instance_io.load(args.instance)
    if args.norm_bound is not None and args.claim != "M":
        print("peftaudit certify: --norm-bound applies to --claim M only", file=sys.stderr)
        return EXIT_BAD_INPUT
    def run():
        if args.claim == "U":
            return _certify_u(inst)
        if args.claim == "L2":
            from peftaudit.verify.encoders.l2 import certify_l2
            return certify_l2(inst, tolerance=args.tolerance)
        if args.claim == "M":
            from peftaudit.verify.encoders.m import certify_m
            return certify_m(inst, tolerance=args.tolerance, bound=args.norm_bound)
        return certify(inst, args.claim, tolerance=args.tolerance, decide_injectivity=True)
    try:  # in a child process this one watches: the budgets hold whatever the instance does
        result = run_bounded(run, seconds=args.timeout or None, max_mb=args.max_memory or None)
    except BudgetExceeded as exc:
        if args.json:
            print(json.dumps({"claim": args.claim, "status": "unknown", "margin": None, "reason": str(exc),
                              "budget": exc.what}))
        else:
            print(f"{args.claim}: unknown\n  {exc}")
        return CERTIFY_EXIT["unknown"]
    if args.out and result.certificate is not None:
        instance_io.atomic_write_bytes(Path(args.out), (json.dumps(result.certificate) + "\n").encode())
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"{result.claim}: {result.status}")
        if result.claim == "U":
            if result.margin is not None:
                print(f"  slack to eps the checker confirmed: {float(result.margin):.6g}")
            print(f"  {result.reason}")
            if args.out and result.certificate is not None:
                print(f"  witness written to {args.out}")
            return CERTIFY_EXIT[result.status]
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
    from peftaudit.verify.checkers import MalformedCertificate, check_file

    try:
        checked = check_file(args.certificate)
    except MalformedCertificate as exc:
        print(f"peftaudit check-certificate: malformed certificate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.instance is not None:
        from peftaudit import instance as instance_io

        given = instance_io.digest(instance_io.load(args.instance))
        if given != checked.instance_sha256:
            print(f"peftaudit check-certificate: the certificate is about instance {checked.instance_sha256}, "
                  f"not {args.instance} ({given})", file=sys.stderr)
            return 1
    margin = f"{float(checked.margin):.6g}" if checked.margin is not None else "none"
    if args.json:
        print(json.dumps({"valid": checked.valid, "claim": checked.claim, "subject": checked.subject,
                          "margin": float(checked.margin) if checked.margin is not None else None,
                          "margin_exact": str(checked.margin) if checked.margin is not None else None,
                          "instance_sha256": checked.instance_sha256, "reason": checked.reason,
                          "facts": checked.result.facts, "instance_matched": args.instance is not None}))
    else:
        print(f"{'valid' if checked.valid else 'INVALID'}: {checked.reason}")
        print(f"  claim {checked.claim}; {checked.subject}; margin {margin}")
        print(f"  instance sha256 {checked.instance_sha256}"
              + (f" (matches {args.instance})" if args.instance is not None else ""))
    return 0 if checked.valid else 1


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from peftaudit import instance as instance_io
    from peftaudit.strategies import instances as builders

    _new_file(args.out, args.force)
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
    elif args.kind == "u":
        from peftaudit.strategies.lipschitz import u_instance
        try:
            inst = u_instance(rng, args.d, args.m, args.lipschitz, args.eps, args.p, args.family)
        except ValueError as exc:
            print(f"peftaudit generate: --kind u: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    else:
        inst = builders.planted_lora_instance(rng, args.d, args.length)
    instance_io.save(inst, args.out)
    print(f"wrote {args.kind} instance (d={args.d}, seed={args.seed}) to {args.out}")
    return 0


# ------------------------------------------------------------------ parser

class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line (the usage block is what --help is for)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (`{self.prog} --help` shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="peftaudit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("certify", help="certify a claim on an instance (impossibility: L1, L1+, L2, M; "
                                       "construction: U)")
    p.add_argument("instance", help="instance file (.json, .npz, .safetensors)")
    p.add_argument("--claim", choices=["L1", "L1+", "L2", "M", "U"], default="L1")
    p.add_argument("--norm-bound", type=_positive_float, default=None,
                   help="M only: the bound B on prompt tokens' 2-norms (default: the instance's "
                        "meta.prompt_norm_bound)")
    p.add_argument("--tolerance", type=_nonneg_float, default=1e-9,
                   help="certified means margin > TOLERANCE at the layer output (default 1e-9)")
    p.add_argument("--timeout", type=_nonneg_float, default=60,
                   help="wall-clock seconds before giving up with status unknown, exit 4 (0: no limit; default 60)")
    p.add_argument("--max-memory", type=_bounded(0, 2**20, "a budget in MB from 0"), default=1024,
                   help="memory in MB the certification may take before giving up with status unknown, exit 4 "
                        "(0: no limit; default 1024)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="write the certificate here (JSON; a new file unless --force)")
    p.add_argument("--force", action="store_true", default=None, help="replace an existing --out file")
    p.set_defaults(func=cmd_certify)

    p = sub.add_parser("check-certificate", help="re-verify a certificate in exact arithmetic")
    p.add_argument("certificate")
    p.add_argument("--instance", help="fail unless the certificate is about this instance file (SHA-256 of the "
                                      "canonical encoding)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("generate", help="write an instance of a family")
    p.add_argument("--kind", choices=GENERATE_KINDS, required=True)
    p.add_argument("--d", type=_bounded(1, LIMITS["d"], "a dimension from 1"), required=True)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--length", type=_bounded(1, MAX_SIZE, "a length from 1"), default=1,
                   help="planted prompt length or LoRA rank")
    p.add_argument("--layers", type=_bounded(1, LIMITS["layers"], "a layer count from 1"), default=1, help="layers (kind m)")
    p.add_argument("--m", type=_bounded(1, 16, "a token count from 1"), default=1, help="kind u: tokens per input")
    p.add_argument("--lipschitz", type=_nonneg_float, default=1.0, help="kind u: Lipschitz bound L of the target")
    p.add_argument("--eps", type=_positive_float, default=0.5, help="kind u: the d_p accuracy eps")
    p.add_argument("--p", type=_bounded(1, 64, "an integer p from 1"), default=1, help="kind u: the p of d_p")
    p.add_argument("--family", default="affine", help="kind u: affine, piecewise-linear, quadratic-features or "
                                                      "table (planted)")
    p.add_argument("--out", required=True, help="instance file to write (a new file unless --force)")
    p.add_argument("--force", action="store_true", default=None, help="replace an existing --out file")
    p.set_defaults(func=cmd_generate)

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _internal_error(command: str, exc: BaseException) -> int:
    """Exit 3 with one line; the traceback goes to a log file, never to the terminal."""
    import tempfile
    import traceback
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        fd, log = tempfile.mkstemp(prefix=f"peftaudit-{command}-{stamp}-", suffix=".log")
        with open(fd, "w") as fh:
            fh.write(text)
        where = f"traceback in {log}"
    except OSError:
        where = "no log could be written"
    message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    print(f"peftaudit {command}: internal error: {type(exc).__name__}: {message} ({where})", file=sys.stderr)
    return EXIT_INTERNAL


def _terminate(signum: int, frame: object) -> None:
    raise Terminated  # SIGTERM is handled like Ctrl-C: cleaned up, nothing partial left


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (e.g. called from a test runner's worker thread)
        previous = None
    try:
        return args.func(args)
    except InputError as exc:
        print(f"peftaudit {args.command}: bad input: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PeftauditError as exc:
        print(f"peftaudit {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Terminated):
        print(f"peftaudit {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a vanished folder: say which file, no traceback
        print(f"peftaudit {args.command}: cannot read or write {exc.filename or 'a file'}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_INTERNAL
    except MemoryError:
        print(f"peftaudit {args.command}: out of memory (lower the sizes or --max-memory)", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as exc:  # noqa: BLE001  an internal error: one line, exit 3, traceback to a log
        return _internal_error(args.command, exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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


def _method_options(args: argparse.Namespace) -> dict:
    """--option key=value pairs (values read as JSON where they parse, else as text), with --targets
    for the methods that take targets."""
    options: dict = {}
    for item in args.option or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError("--option", item, "key=value")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    if args.targets is not None or args.method == "lora":
        options.setdefault("targets", args.targets or "v")
    return options


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

    options = _method_options(args)
    method = get_method(args.method, **options)
    sizes = _method_sizes(args, method)
    config = _search_config(args, args.method, sizes, options)
    _new_file(args.out, args.force)
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
    return 0 if solved else 1


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
        return 1
    ok = hi <= args.tolerance
    if args.json:
        print(json.dumps({"method": name, "size": size, "loss": loss, "max_abs_error": err,
                          "exact_max_error": [lo, hi], "tolerance": args.tolerance, "memorizes": ok,
                          "kind": "exact model enclosed by interval arithmetic"}))
    else:
        print(f"{name} (size {size}): the exact model's max error lies in [{lo:.3e}, {hi:.3e}] (interval "
              f"arithmetic; float64 replay {err:.3e}, loss {loss:.3e}) -> "
              f"{'memorizes' if ok else 'does NOT memorize'} at tolerance {args.tolerance:g}")
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
              f"({result.solved}/{result.total}) in {result.seconds:.1f} s "
              f"({result.seconds_per_instance:.3f} s per instance)")
        for key, (ok, total) in result.by_group.items():
            print(f"  {key:<16} {ok}/{total}")
        for i, d, size, err in result.failures[:10]:
            print(f"  missed: planted #{i} (d={d}, size={size}), best replayed max error {err:.2e}")
    return 0


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["quick", "ci", "thorough"], default="quick",
                   help="budget defaults (restarts, steps, polish steps)")
    p.add_argument("--restarts", type=_bounded(1, MAX_RESTARTS, "a restart count from 1"))
    p.add_argument("--steps", type=_bounded(0, 10**6, "a step count from 0"), help="Adam steps")
    p.add_argument("--polish-steps", type=_bounded(0, 10**6, "a step count from 0"), help="Levenberg-Marquardt steps")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-memory", type=_bounded(1, 2**20, "a budget in MB from 1"), default=2048,
                   help="memory budget in MB (chunks the batch)")
    p.add_argument("--norm-bound", type=_positive_float,
                   help="project prompt/prefix tokens onto this Euclidean norm ball")
    p.add_argument("--json", action="store_true")


def _register_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search for a prompt, prefix or adapter that memorizes an instance")
    p.add_argument("instance")
    p.add_argument("--method", default="prompt",
                   help="prompt, prefix, prefix-kv, lora, full, peft-lora, peft-dora, peft-ia3, peft-lokr, an entry point "
                        "of peftaudit.methods, or package.module:Name")
    p.add_argument("--lengths", type=_int_list, default=(1, 2, 4), help="prompt / prefix lengths, e.g. 1,2,4")
    p.add_argument("--rank", type=_bounded(1, MAX_SIZE, "a rank from 1"), default=1, help="LoRA rank")
    p.add_argument("--sizes", type=_int_list, help="sizes for any method (overrides --lengths and --rank)")
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
    p.add_argument("--tolerance", type=_nonneg_float, default=1e-8)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("calibrate", help="recall of the search on planted instances")
    p.add_argument("--method", choices=["prompt", "lora"], default="prompt")
    p.add_argument("--count", type=_bounded(1, 100_000, "a count from 1"),
                   help="planted instances (default: the profile's)")
    _search_options(p)
    p.set_defaults(func=cmd_calibrate)


EXTRA_COMMANDS.append(_register_search)


# ------------------------------------------------------------------ audit

def cmd_audit(args: argparse.Namespace) -> int:
    import time
    from datetime import datetime, timezone

    from peftaudit.audit import resume_audit, run_audit

    started = time.perf_counter()
    try:
        if args.resume is not None:
            planned = [f"--{name.replace('_', '-')}" for name in RESUME_FIXED if getattr(args, name) is not None]
            if planned:
                raise InputError("--resume", args.resume, f"no {', '.join(planned)} beside it (the unfinished "
                                                          f"audit's plan decides them)")
            result = resume_audit(args.resume, jobs=args.jobs or os.cpu_count() or 1, backend=args.backend, address=args.address,
                                  progress=sys.stderr.isatty())
            args.profile, args.seed = result.report["provenance"]["profile"], result.report["provenance"]["seed"]
        else:
            args.profile = args.profile or "quick"
            args.seed = 0 if args.seed is None else args.seed
            claims = _names(args.claims, "--claims") if args.claims is not None else None
            methods = _names(args.methods, "--methods") if args.methods is not None else None
            out = args.out or f"reports/{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{args.profile}-s{args.seed}"
            result = run_audit(claims, profile=args.profile, seed=args.seed, methods=methods,
                               jobs=args.jobs or os.cpu_count() or 1,
                               backend=args.backend, address=args.address, device=args.device or "auto", out=out,
                               force=bool(args.force), calibration=not args.no_calibration,
                               progress=sys.stderr.isatty(), argv=sys.argv[1:], cards=not args.no_cards,
                               card_families=_names(args.card_families, "--card-families") if args.card_families
                               else None, threads=args.threads or 1, instances=args.instances)
    except (KeyboardInterrupt, Terminated):
        folder = args.resume or args.out
        print("peftaudit audit: interrupted; no report was written"
              + (f"; the finished jobs are kept: `peftaudit audit --resume {folder}` goes on" if folder else ""),
              file=sys.stderr)
        return 130
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
        for w in c.get("witnesses", [])[:3] if c["kind"] == "cannot" else []:
            print(f"{'':<{width}} check: {w['check']}")
    for name, cal in result.report["calibration"].items():
        print(f"calibration {name}: recall {cal['recall']:.1%} ({cal['solved']}/{cal['total']})")
    for name, entry in (result.report.get("cards") or {}).items():
        print(f"method card of {name}: {result.out_dir}/{entry['folder']}/card.md")
    errors = result.errors
    for line in errors[:20]:
        print(f"ERROR {line[:160]}")
    if len(errors) > 20:
        print(f"ERROR ... and {len(errors) - 20} more (see report.md)")
    print(f"report: {result.out_dir}/report.md (also report.json, report.html)")
    if errors:
        return 3
    return 1 if result.refuted or result.not_shown else 0


RESUME_FIXED = ("profile", "seed", "claims", "methods", "device", "out", "force", "no_calibration", "no_cards",
                "card_families", "threads", "instances")


def _register_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="audit every registered claim and write a report")
    p.add_argument("--profile", choices=["quick", "ci", "thorough"], default=None, help="default quick")
    p.add_argument("--claims", help="comma-separated claim ids (default: all registered)")
    p.add_argument("--methods", help="restrict searches to these methods (comma-separated); a method no claim "
                                     "names (a plugin, package.module:Name, a peft guest) is added, and gets a card")
    p.add_argument("--no-cards", action="store_true", default=None, help="no method cards for the methods --methods adds")
    p.add_argument("--card-families", help="the cards' families (comma-separated; default: all)")
    p.add_argument("--seed", type=_seed, default=None, help="default 0")
    p.add_argument("--jobs", type=_bounded(1, MAX_JOBS, "a number of workers from 1"), default=None,
                   help="workers running the audit's jobs (default: the number of CPUs)")
    p.add_argument("--backend", choices=["auto", "inline", "process", "ray"], default="auto",
                   help="who runs the jobs: inline (here), process (a local pool of --jobs spawned workers), ray "
                        "(Ray tasks; a local Ray with --jobs CPUs, or --address); auto: inline for --jobs 1, else process")
    p.add_argument("--instances", type=_bounded(1, MAX_INSTANCES, "a number of instances from 1"), default=None,
                   help="instances per claim, overriding the profile's (claims with a fixed list, like U, keep theirs)")
    p.add_argument("--threads", type=_bounded(1, MAX_THREADS, "a number of torch threads from 1"), default=None,
                   help="torch threads of every job, on every backend (default 1: workers share the cores); "
                        "float results can depend on it, so it is part of the plan")
    p.add_argument("--address", help="with --backend ray: a running Ray cluster's address (default: start one here)")
    p.add_argument("--resume", metavar="DIR", help="finish the unfinished audit in DIR (its plan decides the claims, "
                                                   "profile, seed, methods and device; finished jobs are not rerun)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default auto")
    p.add_argument("--out", help="report folder (default: reports/<run-id>); must not exist, or be empty")
    p.add_argument("--force", action="store_true", default=None,
                   help="replace --out if it holds a previous peftaudit report (nothing else is ever replaced)")
    p.add_argument("--no-calibration", action="store_true", default=None,
                   help="skip the calibration on planted instances")
    p.set_defaults(func=cmd_audit)


EXTRA_COMMANDS.append(_register_audit)


def cmd_check_report(args: argparse.Namespace) -> int:
    from peftaudit.audit.check_report import command
    return command(args)


def _register_check_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-report", help="re-check every certificate and witness of a report against the "
                                            "instances its claims draw")
    p.add_argument("folder", help="a report folder (holding report.json)")
    p.add_argument("--claim", help="only this claim (default: every claim of the report)")
    p.set_defaults(func=cmd_check_report)


EXTRA_COMMANDS.append(_register_check_report)


# ------------------------------------------------------------------ method cards

def cmd_card(args: argparse.Namespace) -> int:
    from peftaudit.card import run_battery, write_card
    from peftaudit.card.battery import card_folder
    from peftaudit.audit.outdir import check_out_dir
    from peftaudit.evidence import search_config
    from peftaudit.log import log_stderr
    from peftaudit.models.methods import get_method
    from peftaudit.search.problems import resolve_device
    from peftaudit.settings import get_profile

    options = _method_options(args)
    get_method(args.method, **options)
    out = args.out or f"cards/{card_folder(args.method)}"
    check_out_dir(out, args.force, "card")
    prof = get_profile(args.profile)
    base = search_config(prof, args.seed, str(resolve_device(args.device)))
    log = (lambda s: None) if args.json else log_stderr
    families = _names(args.families, "--families") if args.families is not None else None
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as an audit's jobs run by default: the audit's card of the method is this card
    try:
        card = run_battery(args.method, options, prof, args.seed, base, d=args.d, count=args.count,
                           families=families, log=log)
    finally:
        torch.set_num_threads(before)
    folder = write_card(card, out, force=args.force)
    if args.json:
        print(json.dumps(card))
    else:
        print(f"method card of {args.method} (declared kind: {card['kind'] or 'none'}), d = {args.d}")
        for x in card["impossibilities"]:
            print(f"  {x['claim']:<4} {'applies' if x['applies'] else 'does not apply'}")
        if card["declaration"]:
            print(f"  declaration check: {'confirmed' if card['declaration']['confirmed'] else 'FLAGGED'}")
        mine = [c for c in card["capacity"] if c["method"] == args.method]
        print("  capacity: " + ", ".join(f"{c['params']} params -> {c['examples_memorized']} examples" for c in mine))
        for problem in card["conflicts"]:
            print(f"  ERROR: {problem}")
        for name in card["errors"]:
            print(f"  ERROR in {name} (traceback in card.json)")
        print(f"card: {folder}/card.md (also card.json, card.html)")
    return 3 if card["conflicts"] or card["errors"] else 0


def _register_card(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="a method card: capacity battery beside the built-in methods")
    p.add_argument("method", help="a registered name, an entry point of peftaudit.methods, or package.module:Name")
    p.add_argument("--targets", help="LoRA / peft target matrices among q,k,v,o,1,2")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a method option (repeatable)")
    p.add_argument("--profile", choices=["quick", "ci", "thorough"], default="quick", help="default quick")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--d", type=_bounded(2, 64, "a width from 2"), default=4, help="model width of the battery")
    p.add_argument("--count", type=_bounded(1, 64, "a count from 1"), default=3, help="instances per family")
    p.add_argument("--families", help="comma-separated families (default: all; see README, Method cards)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", help="card folder (default: cards/<method>); must not exist, or be empty")
    p.add_argument("--force", action="store_true", default=None, help="replace --out if it holds a previous card")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_card)


EXTRA_COMMANDS.append(_register_card)


if __name__ == "__main__":
    sys.exit(main())
