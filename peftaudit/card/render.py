"""A method card on disk: card.json, card.md, card.html and its figures, written atomically.

Two figures, each answering one question: "which method reaches zero loss with the fewest
parameters, family by family?" (median best replayed loss against trainable parameters) and
"how many random examples does each parameter budget memorize?" (the capacity curve).
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path



def _png(fig) -> bytes:
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def figures(card: dict) -> dict[str, bytes]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from peftaudit.plotting import draw_curves, method_styles, tidy_log_axes

    families = list(card["families"])
    methods = list(dict.fromkeys(r["method"] for r in card["rows"]))
    styles = method_styles(methods, plt)  # one colour and marker per method in every panel
    ncols = 3
    nrows = -(-len(families) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(families):]:
        ax.set_visible(False)
    for ax, family in zip(axes.flat, families):
        curves = {m: [(r["params"], r["median_best_loss"], card["d"]) for r in card["rows"]
                      if r["family"] == family and r["method"] == m] for m in methods}
        draw_curves(ax, {m: v for m, v in curves.items() if v}, styles, {m: m for m in methods}, thick=card["method"])
        tidy_log_axes(ax)
        ax.set_xlabel("trainable parameters", fontsize=8)
        ax.set_ylabel("median best replayed loss", fontsize=8)
        ax.set_title(family, fontsize=9)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"{card['method']}: loss against parameters, beside the built-in methods (d = {card['d']})")
    fig.tight_layout()
    out = {"loss_vs_params.png": _png(fig)}
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    capacity = {m: [(c["params"], c["examples_memorized"], card["d"]) for c in card["capacity"] if c["method"] == m]
                for m in methods}
    draw_curves(ax, {m: v for m, v in capacity.items() if v}, styles, {m: m for m in methods}, thick=card["method"],
                losses=False)
    tidy_log_axes(ax, solved_line=False)
    ax.set_yscale("linear")
    ax.set_xlabel("trainable parameters", fontsize=8)
    ax.set_ylabel("random examples memorized (all instances)", fontsize=8)
    ax.set_title("capacity: how many random examples a budget memorizes", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out["capacity.png"] = _png(fig)
    plt.close(fig)
    return out


def markdown(card: dict) -> str:
    lines = [f"# Method card: {card['method']}", "",
             f"Declared kind: **{card['kind'] or 'none'}**; options {json.dumps(card['options'])}; width d = "
             f"{card['d']}, {card['instances_per_family']} instances per family, profile `{card['profile']}`, seed "
             f"{card['seed']}. Search results are evidence, never proofs: a budget that did not memorize a family "
             "may still be able to.", ""]
    for problem in card["conflicts"]:
        lines += [f"**ERROR: {problem}**", ""]
    for mname, trace in card["errors"].items():
        lines += [f"**ERROR in {mname}**: {trace.strip().splitlines()[-1]} (traceback in card.json)", ""]
    lines += ["## Certified impossibilities", "", "| claim | statement | applies | why |", "|---|---|---|---|"]
    lines += [f"| {x['claim']} | {x['statement']} | {'yes' if x['applies'] else 'no'} | {x['why']} |"
              for x in card["impossibilities"]]
    if card["declaration"]:
        dec = card["declaration"]
        lines += ["", f"Declaration check ({'confirmed' if dec['confirmed'] else 'FLAGGED'}): {dec['detail']}."]
    if card.get("class_certificate"):
        lines += ["", class_certificate_line(card["class_certificate"])]
    lines += ["", "## Best replayed loss by family and budget", "",
              "| family | method | size | params | median best loss | best max error | solved |",
              "|---|---|---|---|---|---|---|"]
    for r in card["rows"]:
        lines.append(f"| {r['family']} | {r['method']} | {r['size']} | {r['params']} | {r['median_best_loss']:.3g} | "
                     f"{r['best_max_error']:.2e} | {r['solved']}/{r['total']} |")
    lines += ["", "## Capacity", "", "| method | params | random examples memorized |", "|---|---|---|"]
    lines += [f"| {c['method']} | {c['params']} | {c['examples_memorized']} |" for c in card["capacity"]]
    lines += ["", "Families:", ""] + [f"- `{k}`: {v}" for k, v in card["families"].items()]
    lines += ["", "![loss against parameters](figures/loss_vs_params.png)", "",
              "![capacity](figures/capacity.png)", ""]
    return "\n".join(lines)


def class_certificate_line(x: dict) -> str:
    """One sentence: the certificate the method's update class brings, and its search against it."""
    where = f"{x['claim']} on the card's instance (d = {x['d']}, N = {x['N']})"
    if x["status"] != "certified":
        return f"{where}: {x['status']} ({x['reason']}); nothing to compare."
    verdict = "BELOW the margin: the declaration is false" if x["below_margin"] else "above the margin, as it must be"
    return (f"{where}: certified margin {x['margin']:.4g} (certificate `{x['certificate_file']}`, re-check: "
            f"`{x['check']}`); the method's best search result at size {x['method_size']}: max error "
            f"{x['method_best_error']:.4g}, {verdict}.")


def html(card: dict, figs: dict[str, bytes]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape
    env = Environment(loader=PackageLoader("peftaudit.card", "."), autoescape=select_autoescape(["html", "j2"]))
    images = {name: base64.b64encode(data).decode() for name, data in figs.items()}
    return env.get_template("card.html.j2").render(card=card, images=images, class_certificate_line=class_certificate_line)


def write_files(card: dict, folder: Path) -> None:
    """card.json, card.md, card.html and figures/ into an existing folder (a report's cards/ entry,
    or write_card's temporary folder)."""
    figs = figures(card)
    (folder / "figures").mkdir(exist_ok=True)
    for name, data in figs.items():
        (folder / "figures" / name).write_bytes(data)
    by_class = card.get("class_certificate") or {}
    if by_class.get("certificate"):  # beside the card, so `peftaudit check-certificate FILE` re-checks it
        (folder / by_class["certificate_file"]).write_text(json.dumps(by_class["certificate"]) + "\n")
        card = {**card, "class_certificate": {k: v for k, v in by_class.items() if k != "certificate"}}
    (folder / "card.json").write_text(json.dumps(card, indent=1))
    (folder / "card.md").write_text(markdown(card))
    (folder / "card.html").write_text(html(card, figs))


def write_card(card: dict, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write the card into out_dir (new or empty, or with force a previous card), atomically."""
    from peftaudit.audit.outdir import check_out_dir, install

    out_dir = Path(out_dir)
    check_out_dir(out_dir, force, "card")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        write_files(card, tmp)
        install(tmp, out_dir, force, "card")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
