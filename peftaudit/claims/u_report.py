"""Claim U's report section: the size table, the d_p figures and the search outcome."""

from __future__ import annotations

from .base import StudyTable

HEADERS = ("instance", "target", "d", "m", "delta", "cells", "depth", "width", "MLP widths", "prompt length",
           "counting bound", "prompt params", "model params", "eps", "p", "d_p bound (checked)",
           "d_p Monte Carlo (95%)", "gradient search")
NOTE = ("Size anchors: counting grid prompts gives m_p >= m delta^(-dm) tokens for table-indexing constructions; "
        "Hu et al. (ICLR 2025) describe the paper's construction as O((m_p + m)(1/eps)^d) attention layers and "
        "O((1/eps)^(d(m_p + m))) MLP layers, and show 1 attention layer with 2 MLP layers suffice. This "
        "construction has depth 3 whatever delta, and its prompt meets the counting bound with equality. "
        "The gradient search starts from random prompts of the construction's length and is evidence about "
        "learnability only: universality is an existence statement, and a search miss says nothing against it.")


def _search_cell(row: dict) -> str:
    s = row.get("search")
    if s is None:
        return "not run (prompt too long)"
    fit = "fits the centres" if s["solved"] else f"centre error {s['max_abs_error']:.2g}"
    which = "the constructed prompt" if s["distance_to_constructed"] <= 1e-6 else "another prompt"
    within = "<=" if s["monte_carlo"]["dp_high"] <= row["eps"] else ">" if s["monte_carlo"]["dp_low"] > row["eps"] else "~"
    return f"{which}: {fit}; d_p ~ {s['monte_carlo']['dp']:.2g} ({within} eps)"


def universality_table(study: dict) -> StudyTable:
    rows = []
    for r in study["rows"]:
        mc = r.get("monte_carlo")
        rows.append([str(r["instance"]), r["family"], str(r["d"]), str(r["m"]), f"1/{r['K']}", str(r["cells"]),
                     str(r["depth"]), str(r["width"]), "/".join(map(str, r["mlp_widths"])), str(r["prompt_length"]),
                     str(r["counting_bound_prompt_length"]), str(r["prompt_params"]), str(r["model_params"]),
                     f"{r['eps']:g}", str(r["p"]),
                     "-" if r["dp_bound"] is None else f"{r['dp_bound']:.3g}" + ("" if r["status"] == "certified"
                                                                               else f" ({r['status']})"),
                     "-" if mc is None else f"{mc['dp']:.3g} [{mc['dp_low']:.3g}, {mc['dp_high']:.3g}]",
                     _search_cell(r)])
    return StudyTable("The construction per instance: its sizes against the counting bound, and d_p against eps "
                      "(bound checked in exact arithmetic; Monte Carlo on the float64 softmax model):", HEADERS, rows,
                      NOTE)


def universality_figures(report: dict, plt, to_png) -> dict[str, bytes]:
    """u_dp.png: per instance, eps beside the checked d_p bound and the Monte Carlo estimate;
    u_sizes.png: prompt length of the construction against the counting bound, per instance."""
    rows = [r for c in report["claims"] if (c.get("study") or {}).get("kind") == "universality"
            for r in c["study"]["rows"]]
    if not rows:
        return {}
    out = {}
    xs = list(range(len(rows)))
    labels = [f"{r['instance']} {r['family'][:9]}\nd{r['d']} m{r['m']} 1/{r['K']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 3.6))
    ax.scatter(xs, [r["eps"] for r in rows], marker="_", s=400, color="black", label="eps (target)")
    bounded = [(x, r["dp_bound"]) for x, r in zip(xs, rows) if r["dp_bound"] is not None]
    ax.scatter([x for x, _ in bounded], [b for _, b in bounded], marker="v", color="#c44", label="d_p bound (checked)")
    mc = [(x, r["monte_carlo"]) for x, r in zip(xs, rows) if r.get("monte_carlo")]
    ax.errorbar([x for x, _ in mc], [m["dp"] for _, m in mc],
                yerr=[[m["dp"] - m["dp_low"] for _, m in mc], [m["dp_high"] - m["dp"] for _, m in mc]],
                fmt="o", color="#47a", capsize=3, label="d_p Monte Carlo (95%)")
    found = [(x, r["search"]["monte_carlo"]["dp"]) for x, r in zip(xs, rows) if r.get("search")]
    ax.scatter([x for x, _ in found], [v for _, v in found], marker="x", color="#a70",
               label="gradient-search prompt, Monte Carlo")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=6)
    ax.set_ylabel("d_p(g([P, .]), f)")
    ax.set_title("U: is the constructed prompt within eps? (per instance)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    out["u_dp.png"] = to_png(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.scatter([r["counting_bound_prompt_length"] for r in rows], [r["prompt_length"] for r in rows], color="#4a7",
               label="this construction")
    top = max(r["prompt_length"] for r in rows)
    ax.plot([1, top], [1, top], color="grey", lw=0.8, label="counting bound m delta^(-dm)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("counting lower bound on prompt length")
    ax.set_ylabel("prompt length of the construction")
    ax.set_title("U: prompt length against the counting bound", fontsize=9)
    ax.legend(fontsize=7)
    out["u_sizes.png"] = to_png(fig)
    plt.close(fig)
    return out


def g_per_configuration(certificates: list[dict]) -> list[dict]:
    """One row per configuration (d, m, K, gamma, beta) of the checked U witnesses: the SHA-256 of
    its g (the checker rebuilt g and found the model equal to it) and the instances whose targets
    share it. Two digests for one configuration would mean g depends on the target."""
    rows: dict[str, dict] = {}
    for x in certificates:
        facts = x.get("established") or {}
        if x.get("status") != "certified" or "g_sha256" not in facts:
            continue
        key = repr(sorted(facts["configuration"].items()))
        row = rows.setdefault(key, {"configuration": facts["configuration"], "g_sha256": [], "instances": []})
        if facts["g_sha256"] not in row["g_sha256"]:
            row["g_sha256"].append(facts["g_sha256"])
        row["instances"].append(x["instance"])
    return list(rows.values())


def g_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "One transformer g per configuration, shared by every target: the checker rebuilt g from its "
             "documented parameters and found each witness's model equal to it (SHA-256 of g's weights):", "",
             "| configuration | g SHA-256 | targets (instances) |", "|---|---|---|"]
    for r in rows:
        conf = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["configuration"].items())
        lines.append(f"| {conf} | {' / '.join(r['g_sha256'])} | {', '.join(map(str, r['instances']))} |")
    return lines + [""]
