"""`peftaudit certify` (a claim on an instance file, in a watched child within time and memory
budgets) and `peftaudit check-certificate` (the independent exact re-check)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import exits
from .args import bounded, new_file, nonneg_float, positive_float


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


BEST_ERROR = {"LV": "sigma_(r+1) of the residual matrix (float64)",
              "LV-scale": "the scaling problem's optimum at the states (float64)"}


def cmd_certify(args: argparse.Namespace) -> int:
    from peftaudit import instance as instance_io
    from peftaudit.bounded import BudgetExceeded, run_bounded
    from peftaudit.verify.encoders.l1 import certify

    new_file(args.out, args.force)
    inst = instance_io.load(args.instance)
    if args.rank is not None and args.claim != "LV":
        print("peftaudit certify: --rank applies to --claim LV only", file=sys.stderr)
        return exits.BAD_INPUT
    if args.norm_bound is not None and args.claim != "M":
        print("peftaudit certify: --norm-bound applies to --claim M only", file=sys.stderr)
        return exits.BAD_INPUT
    if (args.cells is not None or args.cell_seconds is not None) and args.claim not in ("L1", "L1+", "L2"):
        print("peftaudit certify: --cells and --cell-seconds apply to --claim L1, L1+ and L2 only", file=sys.stderr)
        return exits.BAD_INPUT
    sphere = None
    if args.cells is not None or args.cell_seconds is not None:
        from peftaudit.verify.encoders.cells import Budget
        default = Budget()
        sphere = Budget(leaves=default.leaves if args.cells is None else args.cells,
                        seconds=default.seconds if args.cell_seconds is None else args.cell_seconds)

    def run():
        if args.claim == "U":
            return _certify_u(inst)
        if args.claim == "LV":
            from peftaudit.verify.encoders.lv import certify_lv
            return certify_lv(inst, 1 if args.rank is None else args.rank, tolerance=args.tolerance)
        if args.claim == "LV-scale":
            from peftaudit.verify.encoders.lv_scale import certify_lv_scale
            return certify_lv_scale(inst, tolerance=args.tolerance)
        if args.claim == "L2":
            from peftaudit.verify.encoders.l2 import certify_l2
            return certify_l2(inst, tolerance=args.tolerance, sphere=sphere)
        if args.claim == "M":
            from peftaudit.verify.encoders.m import certify_m
            return certify_m(inst, tolerance=args.tolerance, bound=args.norm_bound)
        return certify(inst, args.claim, tolerance=args.tolerance, decide_injectivity=True, sphere=sphere)
    try:  # in a child process this one watches: the budgets hold whatever the instance does
        result = run_bounded(run, seconds=args.timeout or None, max_mb=args.max_memory or None)
    except BudgetExceeded as exc:
        if args.json:
            print(json.dumps({"claim": args.claim, "status": "unknown", "margin": None, "reason": str(exc),
                              "budget": exc.what}))
        else:
            print(f"{args.claim}: unknown\n  {exc}")
        return exits.CERTIFY["unknown"]
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
            return exits.CERTIFY[result.status]
        if result.margin is not None:
            print(f"  margin at the layer output: {float(result.margin):.6g} (tolerance {args.tolerance:g})")
        if result.best_error is not None:
            print(f"  {BEST_ERROR.get(result.claim, 'best reachable attention error of the relaxation')}: "
                  f"{result.best_error:.6g}")
        print(f"  {result.reason}")
        if args.out and result.certificate is not None:
            print(f"  certificate written to {args.out}")
        elif args.out:
            print("  no certificate to write")
    return exits.CERTIFY[result.status]


def cmd_check(args: argparse.Namespace) -> int:
    from peftaudit.verify.checkers import MalformedCertificate, check_file

    try:
        checked = check_file(args.certificate)
    except MalformedCertificate as exc:
        print(f"peftaudit check-certificate: malformed certificate: {exc}", file=sys.stderr)
        return exits.BAD_INPUT
    if args.instance is not None:
        from peftaudit import instance as instance_io

        given = instance_io.digest(instance_io.load(args.instance))
        if given != checked.instance_sha256:
            print(f"peftaudit check-certificate: the certificate is about instance {checked.instance_sha256}, "
                  f"not {args.instance} ({given})", file=sys.stderr)
            return exits.FAILED
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
    return exits.OK if checked.valid else exits.FAILED


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certify", help="certify a claim on an instance (impossibility: L1, L1+, L2, LV, LV-scale, M; "
                                       "construction: U)")
    p.add_argument("instance", help="instance file (.json, .npz, .safetensors)")
    p.add_argument("--claim", choices=["L1", "L1+", "L2", "LV", "LV-scale", "M", "U"], default="L1")
    p.add_argument("--rank", type=bounded(0, 1024, "a rank from 0"), default=None,
                   help="LV only: no update of W_v of rank <= RANK fits (default 1)")
    p.add_argument("--norm-bound", type=positive_float, default=None,
                   help="M only: the bound B on prompt tokens' 2-norms (default: the instance's "
                        "meta.prompt_norm_bound)")
    p.add_argument("--tolerance", type=nonneg_float, default=1e-9,
                   help="certified means margin > TOLERANCE at the layer output (default 1e-9)")
    p.add_argument("--cells", type=bounded(0, 100_000, "a number of cells from 0"), default=None,
                   help="L1, L1+, L2: cells per member's radius sphere in the branch and bound of the MLP's local "
                        "floor (0: the global (1 - kappa); default 250 up to d = 32, 0 beyond)")
    p.add_argument("--cell-seconds", type=nonneg_float, default=None,
                   help="L1, L1+, L2: wall-clock seconds per member for those cells (default 2); a tree cut short "
                        "is still a cover, its floor the least over its cells")
    p.add_argument("--timeout", type=nonneg_float, default=60,
                   help="wall-clock seconds before giving up with status unknown, exit 4 (0: no limit; default 60)")
    p.add_argument("--max-memory", type=bounded(0, 2**20, "a budget in MB from 0"), default=1024,
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
