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
GENERATE_KINDS = ("l1", "l1-exact", "l1-parallel", "planted-prompt", "planted-lora")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
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
    else:
        inst = builders.planted_lora_instance(rng, args.d, args.length)
    instance_io.save(inst, args.out)
    print(f"wrote {args.kind} instance (d={args.d}, seed={args.seed}) to {args.out}")
    return 0


# ------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftaudit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("certify", help="certify that no prompt of any length memorizes an instance (L1, L1+)")
    p.add_argument("instance", help="instance file (.json, .npz, .safetensors)")
    p.add_argument("--claim", choices=["L1", "L1+"], default="L1")
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


if __name__ == "__main__":
    sys.exit(main())
