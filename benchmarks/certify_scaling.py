"""Time to certify an L1 instance and to check its certificate independently, for growing d.

Run by hand: `python benchmarks/certify_scaling.py [--dims 4,8,16,32,64,128] [--seed 0]`.
Single-threaded on purpose (the target is "d = 64 certified and checked in under 5 s on one
core"). Prints a table, then one JSON line.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    import torch

    from peftaudit.strategies.instances import l1_instance
    from peftaudit.verify.checkers import check_certificate
    from peftaudit.verify.encoders.l1 import certify

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", default="4,8,16,32,64,128")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--claim", default="L1", choices=["L1", "L1+"])
    args = parser.parse_args()
    rows = []
    print(f"{'d':>5} {'certify s':>10} {'check s':>9} {'total s':>9} {'margin':>10}  status")
    for d in [int(x) for x in args.dims.split(",")]:
        inst = l1_instance(np.random.default_rng([args.seed, d]), d, "skew")
        t0 = time.perf_counter()
        result = certify(inst, args.claim)
        t1 = time.perf_counter()
        valid = check_certificate(result.certificate).valid if result.certificate else False
        t2 = time.perf_counter()
        rows.append({"d": d, "certify_s": t1 - t0, "check_s": t2 - t1, "total_s": t2 - t0, "status": result.status,
                     "checked": valid, "margin": float(result.margin) if result.margin is not None else None})
        r = rows[-1]
        print(f"{d:>5} {r['certify_s']:>10.2f} {r['check_s']:>9.2f} {r['total_s']:>9.2f} "
              f"{r['margin'] if r['margin'] is not None else float('nan'):>10.4g}  {r['status']}, checked={valid}")
    d64 = next((r for r in rows if r["d"] == 64), None)
    print(json.dumps({"claim": args.claim, "rows": rows, "d64_total_s": d64["total_s"] if d64 else None,
                      "d64_target_s": 5.0}))


if __name__ == "__main__":
    main()
