"""`peftaudit generate`: write an instance of a family."""

from __future__ import annotations

import argparse
import sys

from peftaudit.limits import LIMITS, MAX_SIZE

from . import exits
from .args import bounded, new_file, nonneg_float, positive_float, seed

GENERATE_KINDS = ("l1", "l1-exact", "l1-parallel", "planted-prompt", "planted-lora", "l2", "lv", "planted-lv", "planted-lv-scale",
                  "m",
                  "m-fold-mlp",
                  "m-fold-attention", "m-fold-attention-strong", "m-naive-encoder", "u")


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from peftaudit import instance as instance_io
    from peftaudit.strategies import instances as builders

    new_file(args.out, args.force)
    rng = np.random.default_rng(args.seed)
    if args.kind.startswith("l1"):
        variant = {"l1": "skew", "l1-exact": "exact", "l1-parallel": "parallel"}[args.kind]
        inst = builders.l1_instance(rng, args.d, variant)
    elif args.kind == "planted-prompt":
        inst = builders.planted_prompt_instance(rng, args.d, args.length)
    elif args.kind in ("lv", "planted-lv", "planted-lv-scale"):
        inst = builders.lv_instance(rng, args.d, args.d + 1 if args.examples is None else args.examples,
                                    planted_rank=args.length if args.kind == "planted-lv" else None,
                                    planted_scale=args.kind == "planted-lv-scale")
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
            return exits.BAD_INPUT
    else:
        inst = builders.planted_lora_instance(rng, args.d, args.length)
    instance_io.save(inst, args.out)
    print(f"wrote {args.kind} instance (d={args.d}, seed={args.seed}) to {args.out}")
    return exits.OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write an instance of a family")
    p.add_argument("--kind", choices=GENERATE_KINDS, required=True)
    p.add_argument("--d", type=bounded(1, LIMITS["d"], "a dimension from 1"), required=True)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--length", type=bounded(1, MAX_SIZE, "a length from 1"), default=1,
                   help="planted prompt length or LoRA rank (planted-lv: the hidden update's rank)")
    p.add_argument("--examples", type=bounded(1, 4096, "a count from 1"), default=None,
                   help="kinds lv, planted-lv, planted-lv-scale: examples (default d + 1)")
    p.add_argument("--layers", type=bounded(1, LIMITS["layers"], "a layer count from 1"), default=1, help="layers (kind m)")
    p.add_argument("--m", type=bounded(1, 16, "a token count from 1"), default=1, help="kind u: tokens per input")
    p.add_argument("--lipschitz", type=nonneg_float, default=1.0, help="kind u: Lipschitz bound L of the target")
    p.add_argument("--eps", type=positive_float, default=0.5, help="kind u: the d_p accuracy eps")
    p.add_argument("--p", type=bounded(1, 64, "an integer p from 1"), default=1, help="kind u: the p of d_p")
    p.add_argument("--family", default="affine", help="kind u: affine, piecewise-linear, quadratic-features or "
                                                      "table (planted)")
    p.add_argument("--out", required=True, help="instance file to write (a new file unless --force)")
    p.add_argument("--force", action="store_true", default=None, help="replace an existing --out file")
    p.set_defaults(func=cmd_generate)
