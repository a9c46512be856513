"""`peftaudit audit` (every registered claim, as jobs, into a report) and `peftaudit check-report`."""

from __future__ import annotations

import argparse
import os
import sys

from peftaudit.errors import InputError, Terminated
from peftaudit.limits import MAX_INSTANCES, MAX_JOBS, MAX_THREADS
from peftaudit.settings import PROFILES

from . import exits
from .args import bounded, names, seed


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
            claims = names(args.claims, "--claims") if args.claims is not None else None
            methods = names(args.methods, "--methods") if args.methods is not None else None
            out = args.out or f"reports/{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{args.profile}-s{args.seed}"
            result = run_audit(claims, profile=args.profile, seed=args.seed, methods=methods,
                               jobs=args.jobs or os.cpu_count() or 1,
                               backend=args.backend, address=args.address, device=args.device or "auto", out=out,
                               force=bool(args.force), calibration=not args.no_calibration,
                               progress=sys.stderr.isatty(), argv=sys.argv[1:], cards=not args.no_cards,
                               card_families=names(args.card_families, "--card-families") if args.card_families
                               else None, threads=args.threads or 1, instances=args.instances)
    except (KeyboardInterrupt, Terminated):
        folder = args.resume or args.out
        print("peftaudit audit: interrupted; no report was written"
              + (f"; the finished jobs are kept: `peftaudit audit --resume {folder}` goes on" if folder else ""),
              file=sys.stderr)
        return exits.INTERRUPTED
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
        return exits.INTERNAL
    return exits.FAILED if result.refuted or result.not_shown else exits.OK


RESUME_FIXED = ("profile", "seed", "claims", "methods", "device", "out", "force", "no_calibration", "no_cards",
                "card_families", "threads", "instances")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="audit every registered claim and write a report")
    p.add_argument("--profile", choices=list(PROFILES), default=None, help="default quick")
    p.add_argument("--claims", help="comma-separated claim ids (default: all registered)")
    p.add_argument("--methods", help="restrict searches to these methods (comma-separated); a method no claim "
                                     "names (a plugin, package.module:Name, a peft guest) is added, and gets a card")
    p.add_argument("--no-cards", action="store_true", default=None, help="no method cards for the methods --methods adds")
    p.add_argument("--card-families", help="the cards' families (comma-separated; default: all)")
    p.add_argument("--seed", type=seed, default=None, help="default 0")
    p.add_argument("--jobs", type=bounded(1, MAX_JOBS, "a number of workers from 1"), default=None,
                   help="workers running the audit's jobs (default: the number of CPUs)")
    p.add_argument("--backend", choices=["auto", "inline", "process", "ray"], default="auto",
                   help="who runs the jobs: inline (here), process (a local pool of --jobs spawned workers), ray "
                        "(Ray tasks; a local Ray with --jobs CPUs, or --address); auto: inline for --jobs 1, else process")
    p.add_argument("--instances", type=bounded(1, MAX_INSTANCES, "a number of instances from 1"), default=None,
                   help="instances per claim, overriding the profile's (claims with a fixed list, like U, keep theirs)")
    p.add_argument("--threads", type=bounded(1, MAX_THREADS, "a number of torch threads from 1"), default=None,
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

    p = sub.add_parser("check-report", help="re-check every certificate and witness of a report against the "
                                            "instances its claims draw")
    p.add_argument("folder", help="a report folder (holding report.json)")
    p.add_argument("--claim", help="only this claim (default: every claim of the report)")
    p.set_defaults(func=cmd_check_report)




def cmd_check_report(args: argparse.Namespace) -> int:
    from peftaudit.audit.check_report import command
    return command(args)
