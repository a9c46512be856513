"""Certify + independent check time on the quick profile's instances (issue 27's budget: at most 3x).

For each claim with a certifier that issue 27 tightened (L1, L1+, L2) and M beside them, draws the
quick profile's instances (seed 0), certifies each and checks the certificate, and prints per
claim the seconds spent and the median margin, then one JSON line. Run it on two checkouts to
compare (the installed peftaudit is the one measured):
    PYTHONPATH=/path/to/other/site python benchmarks/certify_budget.py
Single-threaded on purpose, like certify_scaling.py.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

CLAIMS = ("L1", "L1+", "L2", "M")


def main() -> None:
    import torch

    import peftaudit
    from peftaudit.claims import get_claim
    from peftaudit.settings import get_profile
    from peftaudit.verify.checkers import check_certificate

    torch.set_num_threads(1)
    profile = get_profile("quick")
    rows = []
    print(f"peftaudit from {os.path.dirname(peftaudit.__file__)}")
    print(f"{'claim':>6} {'certify s':>10} {'check s':>9} {'median margin':>14}")
    for cid in CLAIMS:
        claim = get_claim(cid)
        certify_s = check_s = 0.0
        margins = []
        for inst in claim.draw(profile, 0):
            t0 = time.perf_counter()
            result = claim.certify(inst, 1e-9)
            t1 = time.perf_counter()
            if result.certificate is not None:
                assert check_certificate(result.certificate).valid
                margins.append(float(result.margin))
            check_s += time.perf_counter() - t1
            certify_s += t1 - t0
        rows.append({"claim": cid, "certify_s": certify_s, "check_s": check_s,
                     "median_margin": statistics.median(margins) if margins else None})
        r = rows[-1]
        print(f"{cid:>6} {certify_s:>10.2f} {check_s:>9.2f} {r['median_margin'] or float('nan'):>14.4g}")
    total = sum(r["certify_s"] + r["check_s"] for r in rows)
    print(f"total {total:.2f} s")
    print(json.dumps({"rows": rows, "total_s": total}))


if __name__ == "__main__":
    main()
