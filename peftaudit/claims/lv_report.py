"""Claim LV's report section: per instance, the rank a W_v update needs, certified from below and
witnessed from above (the construction, confirmed by interval replay), in LoRA parameters."""

from __future__ import annotations

from .base import StudyTable

HEADERS = ("instance", "d", "N", "family", "certified: no update of W_v of rank below", "construction memorizes at rank",
           "LoRA on v params: certified lower", "witnessed upper", "tight")
NOTE = ("Certified lower: the smallest rank r the certificate does not rule out, so every update of W_v of rank < r "
        "leaves an error above a checked margin; LoRA on W_v needs at least 2 d r parameters. Witnessed upper: the "
        "construction Delta = R U^+ truncated to rank r, its memorization confirmed by the interval replay of the "
        "exact model (max error <= 1e-8); '-' when no rank up to min(d, N) memorizes (generic targets with N > d "
        "cannot be fitted by any update of W_v). Tight: the two meet.")


def rank_table(study: dict) -> StudyTable:
    rows = []
    for r in study["rows"]:
        upper = r["witness_rank"]
        rows.append([str(r["instance"]), str(r["d"]), str(r["N"]), r["family"] or "-", str(r["certified_below"]),
                     "-" if upper is None else str(upper), str(r["params_lower"]),
                     "-" if upper is None else str(r["params_upper"]), "yes" if r["tight"] else "no"])
    return StudyTable("The rank an update of W_v needs, per instance: certified lower and witnessed upper:", HEADERS,
                      rows, NOTE)


SCALE_HEADERS = ("instance", "d", "N", "family", "certified floor", "construction reaches", "floor / construction")
SCALE_NOTE = ("Certified floor: no scaling of W_v's rows gets the last-position max error below it (checked in exact "
              "arithmetic). Construction: the per-coordinate Chebyshev scales, their max error enclosed by the "
              "interval replay of the exact model (upper end shown), so the best scaling's error lies between the "
              "two. The ratio stays below 1 by the MLP's inversion factor (1 - kappa) and the enclosures. Planted "
              "controls (targets from a hidden scaling) must never be certified, and their construction memorizes.")


def scale_table(study: dict) -> StudyTable:
    rows = [[str(r["instance"]), str(r["d"]), str(r["N"]), r["family"] or "-",
             "-" if r["floor"] is None else f"{r['floor']:.4g}", f"{r['construction']:.3g}",
             "-" if r["ratio"] is None else f"{r['ratio']:.2f}"] for r in study["rows"]]
    return StudyTable("The best row scaling's error, per instance: certified floor and construction:", SCALE_HEADERS,
                      rows, SCALE_NOTE)
