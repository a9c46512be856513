"""Claim Z1's report section: the rank each side needs, per instance."""

from __future__ import annotations

from .base import StudyTable

HEADERS = ("instance", "D", "L", "family", "rank(E) numerical / exact", "rank needed: certificate",
           "construction", "search", "certified error bound below it", "construction's error below it",
           "construction's error at it", "search's spectral error per rank")
NOTE = ("Rank needed: the certificate proves every LoRA of one rank less errs by more than the bound (exactly); "
        "the construction (Zeng and Lee, its non-singularity assumption checked) attains the bound one rank below "
        "and matches at the threshold, both bounded exactly from its binary64 factors; the search (batched "
        "Levenberg-Marquardt from random starts) needed the rank shown to reach a spectral error <= 1e-8 ||W_bar||. "
        "Exact rank(E) is usually D: binary64 targets carry rounding in every direction, so the threshold "
        "certified is the robust one. Exact and numerical: the lower bound and both construction errors are "
        "exact; the search's errors are float64 figures.")


def _g(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def rank_table(study: dict) -> StudyTable:
    rows = []
    for r in study["rows"]:
        vacuous = r["vacuous"]
        rows.append([str(r["instance"]), str(r["D"]), str(r["L"]), r["family"] or "-",
                     f"{r['numerical_rank_e']} / {r['exact_rank_e'] if r['exact_rank_e'] is not None else '-'}",
                     "vacuous" if vacuous else str(r["rank_certificate"] or "-"),
                     "-" if vacuous else str(r["rank_construction"] or "-"),
                     str(r["rank_search"] or f"> {max(map(int, r['search_errors']), default=0)}"),
                     _g(r["lower"]), _g(r["upper_below"]), _g(r["upper_at"]),
                     ", ".join(f"R={k}: {v:.2g}" for k, v in r["search_errors"].items())])
    return StudyTable("The rank each side needs, per instance:", HEADERS, rows, NOTE)
