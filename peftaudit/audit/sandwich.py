"""Where the truth lies, per certified instance of a "cannot" claim: between the certified floor
(no adapter of the claim's class gets the error below it) and the best error the audit's own
search reached (an adapter that gets there exists, replayed in float64). The ratio floor / best
found says how much of the gap a certificate closes: 1 is tight. In report.json (`sandwich`,
`sandwich_summary`), report.md, report.html and one figure (issue 27).
"""

from __future__ import annotations

from statistics import median


def sandwich_rows(c: dict) -> list[dict]:
    """Per certified instance: floor, best found by the claim's falsifiers (its replayed max
    error, any size) or by the claim's own attack (L1, L1+: the reduced prompt attack, replayed in
    interval arithmetic: claims/prompt_attack.py), the run that found it, and the ratio."""
    if c["kind"] != "cannot":
        return []
    best: dict[int, tuple[float, str]] = {}
    candidates = [(r["instance"], r["max_abs_error"], label) for label, rows in c["search"].items() for r in rows]
    study = c.get("study") or {}
    attacks = study["rows"] if study.get("kind") == "prompt-attack" else study.get("attack_rows", [])
    candidates += [(r["instance"], r["attack"], r["label"]) for r in attacks]  # the claim's own, replayed exactly
    for instance, e, label in candidates:
        if e is not None and (instance not in best or e < best[instance][0]):
            best[instance] = (e, label)
    out = []
    for x in c["certificates"]:
        if x["status"] != "certified" or x.get("margin") is None or x["instance"] not in best:
            continue
        found, label = best[x["instance"]]
        out.append({"instance": x["instance"], "floor": x["margin"], "best_found": found, "found_by": label,
                    "ratio": x["margin"] / found if found > 0 else None})
    return out


def sandwich_summary(rows: list[dict]) -> dict | None:
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    if not ratios:
        return None
    return {"instances": len(ratios), "median_ratio": median(ratios), "worst_ratio": min(ratios),
            "best_ratio": max(ratios)}


NOTE = ("Where the truth lies, per certified instance: the certified floor (no adapter of the claim's class gets "
        "the last-position max error below it, checked in exact arithmetic) and the best max error the audit's "
        "falsifiers reached (replayed in float64); the least error any adapter can reach lies between them. "
        "floor / best found is 1 where the certificate is tight.")


def summary_markdown(report: dict) -> list[str]:
    claims = [c for c in report["claims"] if c.get("sandwich_summary")]
    if not claims:
        return []
    lines = ["", NOTE, "", "| claim | certified instances searched | median floor / best found | worst | best |",
             "|---|---|---|---|---|"]
    for c in claims:
        s = c["sandwich_summary"]
        lines.append(f"| {c['id']} | {s['instances']} | {s['median_ratio']:.2f} | {s['worst_ratio']:.2f} | "
                     f"{s['best_ratio']:.2f} |")
    return lines


def claim_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "Certified floor against the best found, per instance:", "",
             "| instance | certified floor | best found | by | floor / best found |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['instance']} | {r['floor']:.4g} | {r['best_found']:.4g} | {r['found_by']} | {ratio} |")
    return lines


def sandwich_figure(report: dict, plt, png) -> dict[str, bytes]:
    """One figure: per certified instance, the certified floor against the best found, one colour
    and marker per claim; the diagonal is tightness (no point can lie above it)."""
    from peftaudit.plotting import method_styles

    claims = [c for c in report["claims"] if c.get("sandwich")]
    if not claims:
        return {}
    styles = method_styles((c["id"] for c in claims), plt)
    fig, ax = plt.subplots(figsize=(5.4, 4.2))
    low, high = float("inf"), 0.0
    for c in claims:
        xs = [r["best_found"] for r in c["sandwich"] if r["best_found"] > 0]
        ys = [r["floor"] for r in c["sandwich"] if r["best_found"] > 0]
        if not xs:
            continue
        low, high = min(low, *xs, *ys), max(high, *xs, *ys)
        s = c["sandwich_summary"]
        ax.scatter(xs, ys, color=styles[c["id"]]["color"], marker=styles[c["id"]]["marker"], s=24,
                   label=f"{c['id']} (median ratio {s['median_ratio']:.2f})")
    if high > 0:
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=0.8, label="tight: floor = best found")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("best max error the search found (an upper side)", fontsize=8)
    ax.set_ylabel("certified floor (the lower side)", fontsize=8)
    ax.set_title("Where the truth lies, per certified instance", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    out = {"sandwich.png": png(fig)}
    plt.close(fig)
    return out
