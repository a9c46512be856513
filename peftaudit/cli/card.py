"""`peftaudit card METHOD`: a method card, the capacity battery beside the built-in methods."""

from __future__ import annotations

import argparse
import json

from peftaudit.settings import PROFILES

from . import exits
from .args import bounded, method_options, names, seed


def cmd_card(args: argparse.Namespace) -> int:
    from peftaudit.card import run_battery, write_card
    from peftaudit.card.battery import card_folder
    from peftaudit.audit.outdir import check_out_dir
    from peftaudit.evidence import search_config
    from peftaudit.log import log_stderr
    from peftaudit.models.methods import get_method
    from peftaudit.search.problems import resolve_device, torch_threads
    from peftaudit.settings import get_profile

    options = method_options(args)
    get_method(args.method, **options)
    out = args.out or f"cards/{card_folder(args.method)}"
    check_out_dir(out, args.force, "card")
    prof = get_profile(args.profile)
    base = search_config(prof, args.seed, str(resolve_device(args.device)))
    log = (lambda s: None) if args.json else log_stderr
    families = names(args.families, "--families") if args.families is not None else None
    with torch_threads(1):  # as an audit's jobs run by default: the audit's card of the method is this card
        card = run_battery(args.method, options, prof, args.seed, base, d=args.d, count=args.count,
                           families=families, log=log, progress=not args.json)
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
    return exits.INTERNAL if card["conflicts"] or card["errors"] else exits.OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="a method card: capacity battery beside the built-in methods")
    p.add_argument("method", help="a registered name, an entry point of peftaudit.methods, or package.module:Name")
    p.add_argument("--targets", help="LoRA / peft target matrices among q,k,v,o,1,2")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a method option (repeatable)")
    p.add_argument("--profile", choices=list(PROFILES), default="quick", help="default quick")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--d", type=bounded(2, 64, "a width from 2"), default=4, help="model width of the battery")
    p.add_argument("--count", type=bounded(1, 64, "a count from 1"), default=3, help="instances per family")
    p.add_argument("--families", help="comma-separated families (default: all; see docs/methods.md, Method cards)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", help="card folder (default: cards/<method>); must not exist, or be empty")
    p.add_argument("--force", action="store_true", default=None, help="replace --out if it holds a previous card")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_card)
