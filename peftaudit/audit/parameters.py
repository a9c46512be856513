"""The parameter table of a claim (L2, L2-lora, LV): per instance and method, the trainable
parameters it needs as a sandwich [certified lower, witnessed upper], in report.json, report.md,
report.html and one figure.

Certified lower: for prompts, N d from a checked L2 certificate; for LoRA on W_v, 2 d r with r the
smallest rank that checked LV certificates do not rule out (the claim's value-rank study). Witnessed
upper: the fewest parameters with which a searched adapter memorized, confirmed by the interval
replay of the exact model, or LoRA on W_v at the rank where the construction Delta = R U^+ does.
A cell is tight where the two meet. Full fine-tuning and other methods have no certified lower side.
"""

from __future__ import annotations

VALUE_LORA = ("lora [targets=v]", "peft-lora [targets=v]")  # 2 d r parameters at rank r, the LV floor's columns


def claim_runs(c: dict) -> dict[str, list[dict]]:
    """A claim's search, contrast and comparison rows (report.json form) by run label."""
    return {**c["search"], **{label: v["results"] for label, v in c["contrasts"].items()}, **c.get("comparisons", {})}


def _series(c: dict) -> dict[str, list[dict]]:
    series: dict[str, list[dict]] = {}
    for rows in claim_runs(c).values():
        for r in rows:  # keyed by the method each row names, never by parsing a run's display label
            series.setdefault(r["method"], []).append(r)
    return series


def _value_rank(c: dict) -> dict[int, dict]:
    study = c.get("study") or {}
    if study.get("kind") != "lv-sandwich":
        return {}
    return {r["instance"]: r for r in study["rows"]}


def parameter_rows(c: dict) -> list[dict]:
    """Per instance, per method: certified_lower (None: none certified), witnessed_params,
    solved_params (float64 only), tried_params and tight; and the prompt's certified count."""
    series = _series(c)
    needed = {x["instance"]: (x.get("established") or {}).get("prompt_params_needed") for x in c["certificates"]
              if x["status"] == "certified"}
    value_rank = _value_rank(c)
    if value_rank:
        series.setdefault(VALUE_LORA[0], [])
    out = []
    for i, shape in enumerate(c["instance_shapes"]):
        row = {"instance": i, "d": shape["d"], "family": shape["family"], "certified_prompt_params": needed.get(i),
               "methods": {}}
        floor = value_rank.get(i, {})
        for method, rows in series.items():
            mine = [r for r in rows if r["instance"] == i]
            lower = needed.get(i) if method == "prompt" else \
                (floor.get("params_lower") or None) if method in VALUE_LORA else None
            built = floor.get("params_upper") if method in VALUE_LORA else None   # the construction's witness
            if not mine and built is None:
                continue
            solved = [r["params"] for r in mine if r["solved"]]
            witnessed = [r["params"] for r in mine if r.get("witnessed")] + ([built] if built is not None else [])
            upper = min(witnessed) if witnessed else None
            row["methods"][method] = {"certified_lower": lower, "witnessed_params": upper,
                                      "solved_params": min(solved) if solved else None,
                                      "tried_params": max((r["params"] for r in mine), default=None),
                                      "tight": lower is not None and upper == lower}
        out.append(row)
    return out


def parameter_cell(x: dict | None) -> str:
    """One method's cell: [certified lower, witnessed upper], 'tight' where they meet; the upper
    side is a float64-only solution, or '> n' when search never memorized up to n."""
    if x is None:
        return "-"
    lower = "-" if x.get("certified_lower") is None else str(x["certified_lower"])
    if x.get("witnessed_params") is not None:
        upper = str(x["witnessed_params"])
    elif x["solved_params"] is not None:
        upper = f"{x['solved_params']} (float64 only)"
    else:
        upper = f"> {x['tried_params']}"
    return f"[{lower}, {upper}]" + (" tight" if x.get("tight") else "")


NOTE = ("Trainable parameters each method needs, per instance, as [certified lower, witnessed upper]: the lower side "
        "is checked in exact arithmetic (prompts: N d from the L2 certificate; LoRA on W_v: 2 d r, r the smallest "
        "rank the LV certificates do not rule out, for built-in and peft's LoRA on W_v); the upper side is the fewest parameters with which an adapter "
        "memorized, confirmed by the interval replay of the exact model (a searched adapter, or for LoRA on W_v "
        "the construction Delta = R U^+); 'float64 only' where it was not confirmed, '> n' when nothing memorized "
        "up to n, '-' where nothing is certified; 'tight' where the two meet")


def parameter_methods(rows: list[dict]) -> list[str]:
    return sorted({m for r in rows for m in r["methods"]})


def parameter_markdown(rows: list[dict], note: str) -> list[str]:
    methods = parameter_methods(rows)
    lines = [NOTE + (f". {note}" if note else "") + ":", "",
             "| instance | d | family | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for r in rows:
        lines.append(f"| {r['instance']} | {r['d']} | {r['family']} | "
                     + " | ".join(parameter_cell(r["methods"].get(m)) for m in methods) + " |")
    return lines + [""]


def parameter_figure(report: dict, plt, png) -> dict[str, bytes]:
    """One figure: per claim with a parameter table, per instance and method, the certified lower
    (upward triangle) and the witnessed upper (downward triangle, black edge where tight) on one
    log axis, joined by a bar; an open circle where search tried up to that many parameters and
    memorized nothing. One colour per method across panels, one legend for all."""
    from matplotlib.lines import Line2D

    claims = [c for c in report["claims"] if c.get("parameters")]
    if not claims:
        return {}
    methods = sorted({m for c in claims for r in c["parameters"] for m in r["methods"]})
    colour = {m: plt.get_cmap("tab10")(k % 10) for k, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(claims), figsize=(5.2 * len(claims), 3.6), squeeze=False)
    for ax, c in zip(axes.flat, claims):
        rows = c["parameters"]
        shown = [m for m in methods if any(m in r["methods"] for r in rows)]
        width = 0.8 / max(1, len(shown))
        for k, m in enumerate(shown):
            for r in rows:
                x = r["methods"].get(m)
                if x is None:
                    continue
                pos = r["instance"] - 0.4 + width * (k + 0.5)
                lo, hi = x.get("certified_lower"), x.get("witnessed_params")
                if lo is not None and hi is not None:
                    ax.plot([pos, pos], [lo, hi], color=colour[m], linewidth=2)
                if lo is not None:
                    ax.scatter([pos], [lo], marker="^", color=colour[m], s=36, zorder=3)
                if hi is not None:
                    ax.scatter([pos], [hi], marker="v", color=colour[m], s=36, zorder=3,
                               edgecolors="black" if x.get("tight") else "none")
                elif x.get("tried_params"):
                    ax.scatter([pos], [x["tried_params"]], marker="o", facecolors="none", edgecolors=[colour[m]],
                               s=36, zorder=3)
        ax.set_yscale("log")
        ax.set_xticks([r["instance"] for r in rows])
        ax.set_xlabel("instance")
        ax.set_ylabel("trainable parameters")
        ax.set_title(f"{c['id']}: parameters needed per method", fontsize=9)
    handles = [Line2D([], [], color=colour[m], marker="s", linestyle="none", label=m) for m in methods] + [
        Line2D([], [], color="grey", marker="^", linestyle="none", label="certified lower"),
        Line2D([], [], color="grey", marker="v", linestyle="none", markeredgecolor="black",
               label="witnessed upper (black edge: tight)"),
        Line2D([], [], color="grey", marker="o", markerfacecolor="none", linestyle="none",
               label="searched up to here, nothing memorized")]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    buf = png(fig)
    plt.close(fig)
    return {"parameters.png": buf}
