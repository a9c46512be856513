"""Reports: report.json (versioned schema), report.md, a self-contained report.html with figures.

Everything for one run is written into a temporary sibling folder and renamed into place at
the end, so an interrupted run never leaves a partial report posing as complete.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from statistics import median

from peftaudit.errors import PeftauditError, last_line
from peftaudit.instance import save as save_instance

from peftaudit.evidence.outcome import ClaimOutcome, file_stem, finite, log_name

from .parameters import claim_runs, parameter_cell, parameter_figure, parameter_markdown, parameter_methods, parameter_rows
from .sandwich import claim_markdown, sandwich_figure, sandwich_rows, sandwich_summary, summary_markdown

SCHEMA_VERSION = "peftaudit.report/1"
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")


def provenance(seed: int, profile: str, device: str, argv: list[str]) -> dict:
    versions = {}
    for pkg in ("peftaudit", "torch", "numpy", "z3-solver", "scipy", "hypothesis", "mpmath"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"seed": seed, "profile": profile, "device": device, "versions": versions, "git_commit": commit,
            "python": platform.python_version(), "command": ["peftaudit", *argv],
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def job_errors(failed: dict[str, str]) -> list[dict]:
    """Failed calibration and card jobs as the report lists them: one line each, the traceback in
    a log file of the report (written by write_report from "traceback")."""
    return [{"job": key, "error": last_line(trace) or "failed", "log": f"logs/job-{file_stem(key)}.log",
             "traceback": trace} for key, trace in failed.items()]


STORE_KEYS = ("certificate", "certificate_stored", "certificate_sha256")  # where a certificate is, not data


def has_certificate(summary: dict) -> bool:
    return "certificate" in summary or "certificate_stored" in summary


VOLATILE = ("started", "finished", "command", "executor")  # what may differ between runs of one plan


def comparable(report: dict, folder: str | Path | None = None) -> dict:
    """The report without what legitimately differs between two runs of the same plan (timestamps,
    wall times, the command line, the executor note), its own folder's path read as OUT: two
    backends, worker counts or a resumed run must agree on the rest exactly."""
    if folder is not None:
        report = json.loads(json.dumps(report).replace(json.dumps(str(folder))[1:-1], "OUT"))

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in VOLATILE and "seconds" not in k}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return strip(report)


def method_key(method: str, options: dict) -> str:
    """A method with its options, without sizes or norm bound: 'lora [targets=v]', 'prompt'."""
    opts = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{method} [{opts}]" if opts else method


def _attempt_rows(attempts) -> list[dict]:
    return [{"instance": a.instance, "size": a.size, "params": a.params, "best_loss": finite(a.best_loss),
             "max_abs_error": finite(a.max_abs_error), "solved": a.solved, "method": method_key(a.method, a.options),
             "witnessed": a.rigorously_solved}
            for a in attempts]


def claim_json(o: ClaimOutcome) -> dict:
    c = o.claim
    certs = [{"instance": i, **{k: v for k, v in s.items() if k not in STORE_KEYS},
              "certificate_file": f"certificates/{c.id}-{i}.json" if has_certificate(s) else None}
             for i, s in sorted(o.certificates.items())]
    out = {
        "id": c.id, "title": c.title, "source": c.source, "formalization": c.formalization, "kind": c.kind,
        "verdict": o.verdict, "reason": o.reason, "group": c.group, "expect": c.expect, "dropped": c.dropped,
        "instances": len(o.shapes), "vacuous": len(o.vacuous),
        "vacuous_reasons": {str(i): why for i, why in sorted(o.vacuous.items())},
        "instance_shapes": o.shapes,
        "certificates": certs,
        "search": {label: _attempt_rows(att) for label, att in o.searches.items()},
        "contrasts": {label: {"solved": sum(a.solved for a in att), "total": len(att), "results": _attempt_rows(att)}
                      for label, att in o.contrasts.items()},
        "comparisons": {label: _attempt_rows(att) for label, att in o.comparisons.items()},
        "counterexamples": [], "search_witnesses": [], "violations": o.violations, "errors": o.errors,
        "method_errors": dict(o.method_errors), "not_applicable": dict(o.not_applicable),
        "log": log_name(c.id) if o.tracebacks else None,
        "parameter_table": c.parameter_table,
        "evidence": c.evidence, "study": o.study,
        "study_table": asdict(c.study_table(o.study)) if c.study_table and o.study else None,
    }
    if c.parameter_table:
        out["parameters"] = parameter_rows(out)
    out["sandwich"] = sandwich_rows(out)
    out["sandwich_summary"] = sandwich_summary(out["sandwich"])
    from peftaudit.claims.u_report import g_per_configuration
    g_rows = g_per_configuration(certs) if c.evidence == "witness" else []
    if g_rows:  # claim U: one g per configuration, shared by every target
        out["g_per_configuration"] = g_rows
    return out


# ------------------------------------------------------------------ figures

def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def figures(report: dict) -> dict[str, bytes]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    claims = [c for c in report["claims"] if c["search"] or c["contrasts"]]
    if claims:
        from peftaudit.plotting import draw_curves, method_styles, tidy_log_axes

        ncols = min(3, len(claims))
        nrows = -(-len(claims) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
        for ax in axes.flat[len(claims):]:
            ax.set_visible(False)
        every = [r for c in claims for rows in claim_runs(c).values() for r in rows]
        styles = method_styles((r["method"] for r in every), plt)
        for ax, c in zip(axes.flat, claims):
            dims = [shape["d"] for shape in c["instance_shapes"]]
            curves, style_of = {}, {}
            for label, rows in claim_runs(c).items():
                by_point: dict[tuple[int, int], list[float]] = {}
                for r in rows:
                    if r["best_loss"] is not None:  # a broken method's non-finite losses are not drawn
                        by_point.setdefault((r["params"], dims[r["instance"]]), []).append(r["best_loss"])
                        style_of[label] = r["method"]
                curves[label] = [(x, median(v), d) for (x, d), v in by_point.items()]
            draw_curves(ax, {k: v for k, v in curves.items() if v}, styles, style_of)
            tidy_log_axes(ax)
            ax.set_xlabel("trainable parameters (lines join the same width d)", fontsize=8)
            ax.set_ylabel("median best replayed loss", fontsize=8)
            ax.set_title(f"{c['id']}: loss against parameters", fontsize=9)
            ax.legend(fontsize=6, loc="best")
        fig.tight_layout()
        out["loss_vs_params.png"] = _figure_png(fig)
        plt.close(fig)
    out.update(sandwich_figure(report, plt, _figure_png))  # certified floor against the best found
    cal = report.get("calibration") or {}
    if cal:
        fig, ax = plt.subplots(figsize=(4, 3))
        names = list(cal)
        ax.bar(names, [cal[n]["recall"] for n in names], color="#4a7")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("recall on planted instances")
        for i, n in enumerate(names):
            ax.text(i, cal[n]["recall"] + 0.01, f"{cal[n]['solved']}/{cal[n]['total']}", ha="center", fontsize=8)
        out["calibration.png"] = _figure_png(fig)
        plt.close(fig)
    out.update(parameter_figure(report, plt, _figure_png))
    from peftaudit.claims.u_report import universality_figures
    out.update(universality_figures(report, plt, _figure_png))
    return out


# ------------------------------------------------------------------ text reports

MAX_ROWS = 24  # per-instance tables longer than this show the worst and the median instance only
MAX_LINES = 5  # counterexample, witness and vacuous lines shown per claim (all are in report.json)


def shown_instances(c: dict) -> tuple[set[int] | None, str]:
    """Which instances a claim's per-instance tables show: all (None) up to MAX_ROWS; beyond, the
    worst (smallest certified margin) and the median instance, or the first and the middle one when
    no instance has a margin. The note says which, and that report.json has every row."""
    n = c["instances"]
    if n <= MAX_ROWS:
        return None, ""
    margins = sorted((x["margin"], x["instance"]) for x in c["certificates"] if x.get("margin") is not None)
    if margins:
        worst, middle = margins[0][1], margins[len(margins) // 2][1]
        return {worst, middle}, (f"{n} instances: shown are the worst (smallest margin, instance {worst}) and the "
                                 f"median (instance {middle}); report.json has every row.")
    return {0, n // 2}, f"{n} instances: shown are instances 0 and {n // 2}; report.json has every row."


def visible_rows(c: dict, rows: list) -> list:
    """The rows of the shown instances (a row: a dict with "instance", or a list whose first cell is it)."""
    keep, _ = shown_instances(c)
    instance_of = lambda r: r["instance"] if isinstance(r, dict) else int(r[0])  # noqa: E731
    return rows if keep is None else [r for r in rows if instance_of(r) in keep]


def capped(items: list, what: str) -> tuple[list, str]:
    """The first MAX_LINES items, and a note on the rest."""
    rest = len(items) - MAX_LINES
    return items[:MAX_LINES], (f"and {rest} more {what} (in report.json)" if rest > 0 else "")


def markdown(report: dict) -> str:
    prov = report["provenance"]
    lines = ["# peftaudit report", "",
             f"Profile `{prov['profile']}`, seed {prov['seed']}, device {prov['device']}, "
             f"commit `{(prov['git_commit'] or 'unknown')[:12]}`, peftaudit {prov['versions'].get('peftaudit')}.", "",
             "| claim | verdict | instances | vacuous | certified | smallest margin | contrast solved |",
             "|---|---|---|---|---|---|---|"]
    for c in report["claims"]:
        certified = [x for x in c["certificates"] if x["status"] == "certified"]
        smallest = min((x["margin"] for x in certified if x["margin"] is not None), default=None)
        contrast = ", ".join(f"{k}: {v['solved']}/{v['total']}" for k, v in c["contrasts"].items()) or "-"
        lines.append(f"| {c['id']} | **{c['verdict']}** | {c['instances']} | {c['vacuous']} | {len(certified)} | "
                     f"{'-' if smallest is None else f'{smallest:.3g}'} | {contrast} |")
    lines += summary_markdown(report)
    cal = report.get("calibration") or {}
    if cal:
        lines += ["", "Calibration (search recall on planted instances at the planted size): " +
                  ", ".join(f"{k} {v['recall']:.1%} ({v['solved']}/{v['total']}"
                            + (f", {v['seconds_per_instance']:.2f} s per instance" if "seconds_per_instance" in v else "")
                            + ")" for k, v in cal.items()) + "."]
    ablations = [c for c in report["claims"] if c.get("dropped")]
    if ablations:
        lines += ["", "Load-bearing conditions: each statement below drops one condition of its parent claim and is "
                  "registered to be refuted; a refutation (a replayed counterexample) shows the condition is needed.",
                  "", "| statement | parent | condition dropped | verdict | expected | counterexamples |",
                  "|---|---|---|---|---|---|"]
        for c in ablations:
            lines.append(f"| {c['id']} | {c['group']} | {c['dropped']} | **{c['verdict']}** | {c['expect']} | "
                         f"{len(c['counterexamples'])} |")
    for c in report["claims"]:
        lines += ["", f"## {c['id']}: {c['title']}", "", f"*Verdict:* **{c['verdict']}** — {c['reason']}", ""]
        if c.get("expect"):
            lines += [f"*Registered to be {c['expect'].lower()}*" + (f" (drops {c['dropped']})" if c.get("dropped")
                                                                      else "") + ": "
                      + ("the outcome matches." if c["verdict"] == c["expect"] else
                         "the outcome does not match; a search miss proves nothing, see calibration."), ""]
        lines += [f"*Source:* {c['source']}", "", f"*Formalization:* {c['formalization']}", ""]
        if c.get("parameters"):
            _, note = shown_instances(c)
            lines += parameter_markdown(visible_rows(c, c["parameters"]), note)
        rows = claim_runs(c)
        dims = [shape["d"] for shape in c["instance_shapes"]]
        if rows:
            lines += ["| method | size | d | params | median best loss | solved |", "|---|---|---|---|---|---|"]
            for label, results in rows.items():
                for size, d in sorted({(r["size"], dims[r["instance"]]) for r in results}):
                    rs = [r for r in results if r["size"] == size and dims[r["instance"]] == d]
                    losses = [r["best_loss"] if r["best_loss"] is not None else float("inf") for r in rs]
                    lines.append(f"| {label} | {size} | {d} | {rs[0]['params']} | {median(losses):.3g} | "
                                 f"{sum(r['solved'] for r in rs)}/{len(rs)} |")
        lines += claim_markdown(visible_rows(c, c.get("sandwich") or []))
        lines += study_markdown(c)
        if c.get("g_per_configuration"):
            from peftaudit.claims.u_report import g_markdown
            lines += g_markdown(c["g_per_configuration"])
        shown, more = capped(c["counterexamples"], "counterexamples")
        for ce in shown:
            lines.append(f"- counterexample: `{ce['replay']}` (max error {ce['max_abs_error']:.2e}, numerical)")
        lines += [f"- {more}"] if more else []
        shown, more = capped(c.get("search_witnesses", []), "witnesses")
        for w in shown:
            lines.append(f"- witness on instance {w['instance']} ({w['method']} size {w['size']}, exact model's max "
                         f"error <= {w['exact_max_error'][1]:.2e}): `{w['replay']}`")
        lines += [f"- {more}"] if more else []
        if c.get("recheck") and c["verdict"] in ("CERTIFIED", "NOT-SHOWN"):
            lines.append(f"- re-check every certificate and witness of this claim against the instances it draws: "
                         f"`{c['recheck']}`")
        if c["kind"] == "cannot":
            shown, more = capped(c.get("witnesses", []), "witnesses")
            for w in shown:
                lines.append(f"- counterexample witness on instance {w['instance']}, checked exactly: `{w['check']}`")
            lines += [f"- {more}"] if more else []
        for label, trace in c.get("method_errors", {}).items():
            lines.append(f"- method {label}: **ERROR** — {last_line(trace)} (traceback in report.json)")
        for method, why in c.get("not_applicable", {}).items():
            lines.append(f"- not applicable to {method}: {why}")
        reasons: dict[str, int] = {}
        for why in c["vacuous_reasons"].values():
            reasons[why] = reasons.get(why, 0) + 1
        for why, count in reasons.items():
            lines.append(f"- vacuous instance{'s' if count > 1 else ''}" + (f" ({count})" if count > 1 else "")
                         + f": {why}")
    lines += card_summaries(report)
    if report.get("job_errors"):
        lines += ["", "## Jobs that failed (ERROR)", ""]
        lines += [f"- `{e['job']}`: {e['error']} (traceback in `{e['log']}`)" for e in report["job_errors"]]
    return "\n".join(lines) + "\n"


def study_table(c: dict) -> tuple[str, tuple[str, ...], list[list[str]], str] | None:
    """(caption, headers, rows, note) of a claim's own section, as its claim built it (claim_json)."""
    t = c.get("study_table")
    return None if not t else (t["caption"], tuple(t["headers"]), t["rows"], t["note"])


def study_markdown(c: dict) -> list[str]:
    table = study_table(c)
    if table is None:
        return []
    caption, headers, rows, note = table
    rows = visible_rows(c, rows)
    shown_note = shown_instances(c)[1]
    lines = ["", caption + (f" {shown_note}" if shown_note else ""), "", "| " + " | ".join(headers) + " |",
             "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + ["", note, ""]


def card_summaries(report: dict) -> list[str]:
    """The report's "Method cards" section: one line per card, linking its folder."""
    cards = report.get("cards") or {}
    if not cards:
        return []
    lines = ["", "## Method cards", ""]
    for name, entry in cards.items():
        card = entry["card"]
        applies = [x["claim"] for x in card["impossibilities"] if x["applies"]]
        mine = [c for c in card["capacity"] if c["method"] == name]
        flags = card["conflicts"] + [f"ERROR in {k}" for k in card["errors"]]
        lines.append(f"- **{name}** (declared {card['kind'] or 'no kind'}): certified impossibilities that apply: "
                     f"{', '.join(applies) or 'none'}; capacity "
                     + ", ".join(f"{c['params']} params -> {c['examples_memorized']}" for c in mine)
                     + (f"; {'; '.join(flags)}" if flags else "") + f". Card: `{entry['folder']}/card.md`")
    return lines


def html(report: dict, figs: dict[str, bytes]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("peftaudit.audit", "."), autoescape=select_autoescape(["html", "j2"]))
    images = {name: base64.b64encode(data).decode() for name, data in figs.items()}
    env.globals.update(parameter_cell=parameter_cell, parameter_methods=parameter_methods, study_table=study_table, shown_instances=shown_instances, capped=capped,
                       visible_rows=visible_rows)
    return env.get_template("report.html.j2").render(report=report, images=images)


# ------------------------------------------------------------------ writing

def link_or_write(source: Path, data: bytes, target: Path) -> None:
    """`target` holding `data` (the checked bytes of the store's `source`): a hard link to the
    source where it is still a regular file with exactly those bytes (no second copy on disk),
    else the bytes written (a link swapped in after the check is never carried into the report)."""
    from peftaudit.errors import InputError
    from peftaudit.jsonio import read_regular_file

    try:
        os.link(source, target, follow_symlinks=False)
        if read_regular_file(target, "certificate", len(data), follow_links=False) == data:
            return
    except (OSError, InputError):
        pass
    target.unlink(missing_ok=True)
    target.write_bytes(data)


def write_report(report: dict, outcomes: list[ClaimOutcome], out_dir: Path, store=None) -> Path:
    """Write the whole report atomically: into a temporary sibling, which then takes the place of
    the run's out_dir (its store/ moved along; audit/outdir.install_run). Certificates come from
    the outcomes, or from `store`'s files (checked against their recorded SHA-256)."""
    from .outdir import install_run

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        for o, c in zip(outcomes, report["claims"]):
            for i, summary in o.certificates.items():
                if has_certificate(summary):
                    (tmp / "certificates").mkdir(exist_ok=True)
                    target = tmp / "certificates" / f"{o.claim.id}-{i}.json"
                    if "certificate" in summary:
                        target.write_text(json.dumps(summary["certificate"]))
                    else:
                        try:
                            data = store.certificate(summary)  # its name and SHA-256 checked first
                        except PeftauditError:  # changed since written: the claim's ERROR already says so
                            continue
                        link_or_write(store.folder / summary["certificate_stored"], data, target)
                    if o.claim.evidence == "witness" and summary["status"] == "certified":
                        c.setdefault("witnesses", []).append({
                            "instance": i, "certificate_file": f"certificates/{o.claim.id}-{i}.json",
                            "check": f"peftaudit check-certificate {out_dir}/certificates/{o.claim.id}-{i}.json"})
            if any(has_certificate(x) and x.get("status") == "certified" for x in o.certificates.values()) or \
                    (o.claim.kind == "can" and o.claim.evidence != "witness"):
                c["recheck"] = f"peftaudit check-report {shlex.quote(str(out_dir))} --claim {shlex.quote(o.claim.id)}"
            if o.claim.evidence != "witness":
                witnessed: set[int] = set()
                for attempts in o.searches.values():
                    for a in attempts:
                        if not a.rigorously_solved or (o.claim.kind == "can" and a.instance in witnessed):
                            continue
                        witnessed.add(a.instance)
                        from peftaudit.search.adapters import replayed_figures, save_adapter
                        stem = f"{o.claim.id}-{a.instance}-{a.method}-{a.size}"
                        (tmp / "counterexamples").mkdir(exist_ok=True)
                        save_instance(o.instances[a.instance], tmp / "counterexamples" / f"{stem}.instance.json")
                        save_adapter(tmp / "counterexamples" / f"{stem}.adapter.json", o.instances[a.instance],
                                     a.method, a.options, a.size, a.adapter,
                                     replayed_figures(a.best_loss, a.max_abs_error, a.exact_max_error),
                                     claim=o.claim.id)
                        c["counterexamples" if o.claim.kind == "cannot" else "search_witnesses"].append({
                            "instance": a.instance, "method": a.method, "size": a.size,
                            "max_abs_error": a.max_abs_error, "exact_max_error": list(a.exact_max_error),
                            "instance_file": f"counterexamples/{stem}.instance.json",
                            "adapter_file": f"counterexamples/{stem}.adapter.json",
                            "replay": f"peftaudit replay {out_dir}/counterexamples/{stem}.instance.json "
                                      f"{out_dir}/counterexamples/{stem}.adapter.json"})
            if o.tracebacks:  # the errors' tracebacks: the reason keeps one line per error
                (tmp / "logs").mkdir(exist_ok=True)
                (tmp / log_name(o.claim.id)).write_text("\n".join(o.tracebacks))
        for failure in report.get("job_errors", []):
            (tmp / "logs").mkdir(exist_ok=True)
            (tmp / failure["log"]).write_text(failure.pop("traceback"))
        for entry in report.get("cards", {}).values():
            from peftaudit.card.render import write_files
            folder = tmp / entry["folder"]
            folder.mkdir(parents=True)
            write_files(entry["card"], folder)
        report["provenance"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        figs = figures(report)
        (tmp / "figures").mkdir(exist_ok=True)
        for name, data in figs.items():
            (tmp / "figures" / name).write_bytes(data)
        report["figures"] = [f"figures/{name}" for name in figs]
        md_text = markdown(report)
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "report.md").write_text(md_text)
        (tmp / "report.html").write_text(html(report, figs))
        install_run(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
