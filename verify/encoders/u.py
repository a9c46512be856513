"""Encoder for claim U: the prompt that indexes an instance's table in the constructed transformer
(models/universal.py), as a witness for the independent checker (verify/checkers/u.py)."""

from __future__ import annotations

import math

import numpy as np

from peftaudit.instance import Instance, digest, to_dict
from peftaudit.models import universal

from ..checkers import CERT_FORMAT
from .l1 import CertifyResult


def grid_of(inst: Instance) -> universal.Grid:
    u = inst.meta["u"]
    return universal.Grid(int(u["d"]), int(u["m"]), int(u["K"]))


def hypotheses(inst: Instance) -> str | None:
    u = inst.meta.get("u")
    if not isinstance(u, dict) or not {"d", "m", "K", "gamma", "beta", "eps", "p", "L", "target"} <= set(u):
        return "a U instance names its grid, eps, p, L and target in meta.u"
    try:
        grid = grid_of(inst)
    except (TypeError, ValueError) as exc:
        return f"meta.u: {exc}"
    if len(inst.dataset) != grid.cells:
        return f"the dataset must hold one example per cell ({grid.cells}), not {len(inst.dataset)}"
    return None


def table_of(inst: Instance, grid: universal.Grid) -> np.ndarray:
    """(cells, m, d) table values, in cell order, from the dataset (cell centres -> targets)."""
    X, Y = inst.inputs()[..., : grid.d], inst.targets()[..., : grid.d]                   # (C,m,d) (C,m,d)
    out = np.full((grid.cells, grid.m, grid.d), np.nan)
    out[universal.cell_of(grid, X)] = Y
    return out


def estimated_bound(inst: Instance) -> float:
    """The float estimate of the checker's d_p bound (rounding rho <= delta/2, band error 2)."""
    u, grid = inst.meta["u"], grid_of(inst)
    V, K, p = grid.d * grid.m, grid.K, int(u["p"])
    rho = 0.0 if u["target"]["family"] == "table" else 1 / (2 * K)
    L = 0.0 if u["target"]["family"] == "table" else float(u["L"])
    lam = universal.leakage_bound(grid, float(u["beta"]))
    return (V * (rho + L / (2 * K) + lam) ** p + V * 2.0 ** p * V * (K - 1) * float(u["gamma"])) ** (1 / p)


def witness(inst: Instance, prompt: np.ndarray, margin: float = 0.0, estimate: float | None = None) -> dict:
    estimate = estimated_bound(inst) if estimate is None else estimate
    return {"format": CERT_FORMAT, "claim": "U", "instance": to_dict(inst), "instance_sha256": digest(inst),
            "margin": margin, "prompt": np.asarray(prompt, dtype=np.float64).tolist(),
            "uncertified": {"estimated_dp_bound": estimate}}


def certify_u(inst: Instance, tolerance: float = 0.0) -> CertifyResult:
    """Build the constructive witness (the indexing prompt); the runner has it checked exactly."""
    why = hypotheses(inst)
    if why:
        return CertifyResult("U", "not-applicable", why)
    grid = grid_of(inst)
    table = table_of(inst, grid)
    if np.isnan(table).any():
        return CertifyResult("U", "not-applicable", "the dataset does not hold every cell centre")
    eps = float(inst.meta["u"]["eps"])
    estimate = estimated_bound(inst)
    margin = max(0.0, (eps - estimate) / 2) if math.isfinite(estimate) else 0.0
    cert = witness(inst, universal.build_prompt(grid, table), margin, estimate)
    return CertifyResult("U", "certified", f"witness built: prompt of {grid.prompt_length} tokens, estimated d_p "
                         f"bound {estimate:.3g} against eps {eps:g}", margin=None, best_error=estimate,
                         certificate=cert)
