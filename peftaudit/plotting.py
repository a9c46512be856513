"""What every loss figure shares (the audit's and the cards'): one colour and marker per method
across panels, losses below the solved level drawn at that level with its line, lines only
between points of the same width, curves that coincide kept visible and named, readable ticks.
"""

from __future__ import annotations

from typing import Iterable

SOLVED_LOSS = 1e-16  # a solved problem's loss is below about (1e-8)^2 per residual: drawn at this line
SOLVED_LABEL = "solved level (max error <= 1e-8): lower losses are drawn on it"
MARKERS = "osD^v<>pPX*h"


def method_styles(methods: Iterable[str], plt) -> dict[str, dict]:
    """One colour and marker per method, fixed by the sorted set of methods the figure shows."""
    ordered = sorted(set(methods))
    cmap = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20")
    return {m: {"color": cmap(k % cmap.N), "marker": MARKERS[k % len(MARKERS)]} for k, m in enumerate(ordered)}


def shown_loss(loss: float) -> float:
    return max(loss, SOLVED_LOSS)


def tidy_log_axes(ax, *, solved_line: bool = True) -> None:
    """Log axes with plain major labels (1, 2, 5 times powers of ten) and no minor labels, and the
    solved level as a dashed line."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    if solved_line:
        ax.axhline(SOLVED_LOSS, color="grey", linestyle="--", linewidth=0.8, label=SOLVED_LABEL)
    ax.tick_params(labelsize=7)


def draw_curves(ax, curves: dict[str, list[tuple[int, float, object]]], styles: dict[str, dict],
                style_of: dict[str, str], *, thick: str | None = None, losses: bool = True) -> None:
    """Draw each labelled curve: points (x, y, group); a line joins only points of the same group
    (e.g. the same width d); a curve equal to one drawn before is labelled 'same as' it and drawn
    with hollow markers a little to the right, so both stay visible. `losses`: y values are losses,
    drawn no lower than the solved level."""
    seen: dict[tuple, str] = {}
    for label, points in curves.items():
        pts = sorted((x, shown_loss(y) if losses else y, g) for x, y, g in points if y is not None)
        if not pts:
            continue
        key = tuple((x, f"{y:.6g}", g) for x, y, g in pts)  # equal to 6 digits: the same curve
        same = seen.get(key)
        seen.setdefault(key, label)
        style = styles[style_of[label]]
        shift = 1.06 if same else 1.0
        width = 2.5 if label == thick else 1.2
        for group in dict.fromkeys(g for _, _, g in pts):
            xs = [x * shift for x, _, g in pts if g == group]
            ys = [y for _, y, g in pts if g == group]
            ax.plot(xs, ys, color=style["color"], linewidth=width, marker=style["marker"], markersize=5,
                    markerfacecolor="none" if same else style["color"])
        ax.plot([], [], color=style["color"], marker=style["marker"], linewidth=width,
                markerfacecolor="none" if same else style["color"],
                label=f"{label} (same as {same})" if same else label)
