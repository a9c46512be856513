"""Claim U (SPEC section 3): universality of prompt tuning, made executable.

For each instance (d, m, L, eps, p and a target f) the strategy picks the grid from the documented
bound (models.universal.choose), builds the fixed transformer g and the table of f; certify builds
the prompt that indexes the table; the independent checker proves, exactly, that hardmax g([P, .])
equals the table on every cell away from the bands and that the softmax model is within eps in
d_p. The study adds what the proof does not need but a reader asks: the construction's sizes
beside the counting bound, a Monte Carlo estimate of d_p with a 95% interval, and whether a
gradient search from random prompts finds a prompt that works (existence is not learnability).
"""

from __future__ import annotations

import math

import numpy as np

from peftaudit.settings import Profile

from .base import Claim, register_claim
from .u_report import universality_table

SOURCE = "Wang, Chauhan, Wang, Hsieh, 'Universality and Limitations of Prompt Tuning', NeurIPS 2023 (universality)"

# (d, m, L, eps, p, family): d m up to 4, delta down to 1/4 (and 1/8 for d m = 1)
QUICK = ((1, 1, 1.0, 0.25, 1, "affine"), (2, 1, 1.0, 0.8, 2, "piecewise-linear"),
         (1, 2, 0.5, 0.8, 1, "quadratic-features"), (1, 1, 1.0, 0.3, 2, "table"),
         (2, 2, 1.0, 1.0, 2, "table"), (4, 1, 0.5, 1.0, 2, "quadratic-features"))
MORE = ((1, 4, 0.5, 1.0, 2, "affine"), (2, 2, 0.5, 1.0, 2, "piecewise-linear"), (1, 2, 1.0, 0.4, 1, "affine"),
        (1, 3, 0.5, 0.9, 2, "table"), (3, 1, 0.5, 0.9, 1, "affine"), (1, 1, 2.0, 0.1, 2, "quadratic-features"))
SEARCH_MAX_PROMPT = 32   # gradient search runs where the construction's prompt has at most this many tokens
MONTE_CARLO = {"quick": 2000, "ci": 4000, "thorough": 20000}


def _configs(profile: Profile) -> tuple:
    return (QUICK + MORE)[: max(profile.instances, len(QUICK))]


def _draw(profile: Profile, seed: int):
    from peftaudit.strategies.lipschitz import u_instance
    rng = np.random.default_rng([seed, 21])
    return [u_instance(rng, *config) for config in _configs(profile)]


def _hypotheses(inst):
    from peftaudit.verify.encoders.u import hypotheses
    return hypotheses(inst)


def _certify(inst, tolerance: float):
    from peftaudit.verify.encoders.u import certify_u
    return certify_u(inst, tolerance)


def monte_carlo(inst, prompt: np.ndarray, samples: int, seed: int) -> dict:
    """d_p of the softmax model (float64) against f, estimated on uniform inputs, with a 95% interval."""
    import torch

    from peftaudit.models import universal
    from peftaudit.models.transformer import forward, to_torch
    from peftaudit.strategies.lipschitz import evaluate
    from peftaudit.verify.encoders.u import grid_of, table_of

    u, grid = inst.meta["u"], grid_of(inst)
    p = int(u["p"])
    X = np.random.default_rng([seed, 22]).random((samples, grid.m, grid.d))               # (S,m,d)
    params, P = to_torch(inst.weights), torch.as_tensor(prompt)[None]                   # P: (1,m_p,D)
    chunk = max(1, 2 ** 22 // (prompt.shape[0] + grid.m) ** 2)  # attention maps of about 32 MB per chunk
    with torch.no_grad():
        out = np.concatenate([forward(inst.spec, params, torch.as_tensor(universal.embed(grid, X[i:i + chunk]))[None],
                                      prompt=P, keep=grid.m)[0, ..., : grid.d].numpy()  # (chunk,m,d)
                              for i in range(0, samples, chunk)])                        # (S,m,d)
    if u["target"]["family"] == "table":
        f = table_of(inst, grid)[universal.cell_of(grid, X)]                             # (S,m,d)
    else:
        f = evaluate(u["target"], X)                                                     # (S,m,d)
    e = (np.abs(out - f) ** p).sum(axis=(1, 2))                                          # (S,)
    mean, half = float(e.mean()), 1.96 * float(e.std(ddof=1)) / math.sqrt(samples)
    return {"samples": samples, "dp": mean ** (1 / p), "dp_low": max(mean - half, 0.0) ** (1 / p),
            "dp_high": (mean + half) ** (1 / p)}


def _search(inst, constructed: np.ndarray, profile: Profile, seed: int, log) -> dict:
    """Prompt search from random starts at the construction's length, to the table at the cell
    centres; the best prompt found is compared with the constructed one (up to token order, to
    which attention is blind) and its d_p is estimated like the construction's. It is not checked
    as a witness: a float64 fit is never exactly the table, which the hardmax check demands."""
    from peftaudit.search.engine import SearchConfig, search

    size = constructed.shape[0]
    config = SearchConfig(method="prompt", sizes=(size,), restarts=profile.restarts, rounds=1, steps=profile.steps,
                          polish_steps=profile.polish_steps, seed=seed, device="auto")
    attempt = search([inst], config, progress=False)[0]
    found = attempt.adapter["prompt"]
    gaps = np.abs(found[:, None, :] - constructed[None, :, :]).max(axis=2)              # (m_p,m_p)
    nearest = float(max(gaps.min(axis=0).max(), gaps.min(axis=1).max()))
    mc = monte_carlo(inst, found, MONTE_CARLO.get(profile.name, 2000), seed)
    log(f"U: search at prompt length {size}: max error {attempt.max_abs_error:.2e} at the cell centres, "
        f"d_p ~ {mc['dp']:.3g} (eps {inst.meta['u']['eps']:g})")
    return {"size": size, "max_abs_error": attempt.max_abs_error, "solved": attempt.solved,
            "distance_to_constructed": nearest, "monte_carlo": mc}


def _study(instances, certificates: dict, profile: Profile, seed: int, log=lambda s: None) -> dict:
    from peftaudit.models import universal
    from peftaudit.verify.encoders.u import grid_of

    rows = []
    for i, inst in enumerate(instances):
        u, grid = inst.meta["u"], grid_of(inst)
        cert = certificates.get(i) or {}
        row = {"instance": i, "family": u["target"]["family"], "L": u["L"], "eps": u["eps"], "p": u["p"],
               "gamma": u["gamma"], "beta": u["beta"], **universal.sizes(grid),
               "status": cert.get("status"), "dp_bound": (cert.get("established") or {}).get("dp_bound"),
               "check": cert.get("reason", "")}
        witness = cert.get("certificate")
        if witness is not None:
            prompt = np.asarray(witness["prompt"], dtype=np.float64)
            row["monte_carlo"] = monte_carlo(inst, prompt, MONTE_CARLO.get(profile.name, 2000), seed + i)
            if grid.prompt_length <= SEARCH_MAX_PROMPT:
                row["search"] = _search(inst, prompt, profile, seed + i, log)
        rows.append(row)
    return {"kind": "universality", "rows": rows}


U = register_claim(Claim(
    id="U",
    title="A fixed transformer with a prompt approximates every L-Lipschitz map to eps in d_p",
    source=SOURCE,
    formalization=(
        "For L, eps and integer p >= 1, with V = m d and delta = 1/K (K a power of two from the bound "
        "V^(1/p) (L + 1) delta / 2 <= eps / 2), a three-layer transformer g of width 2d + m + 5 (input padded with "
        "zeros, readout the first d channels) and, for every L-Lipschitz f: [0,1]^{m x d} -> [0,1]^{m x d} "
        "(max-norm to max-norm), the prompt of m K^{dm} tokens that indexes f's grid table, satisfy "
        "d_p(g([P, .]), f) <= eps. The checker proves, in exact arithmetic, d_p^p <= V (rho + L delta/2 + lam)^p + V M^p V (K - 1) gamma <= eps^p, with rho the table's "
        "rounding error, lam the softmax leakage (hardmax: 0, and g equals the table on every cell's box), M the "
        "readout's error bound on the bands of width gamma below the grid lines. A constructive witness: "
        "CERTIFIED when every instance's witness passes the exact check."),
    kind="can",
    draw=_draw,
    hypotheses=_hypotheses,
    falsifiers=(),
    certify=_certify,
    refuted_by="a constructive witness that fails its exact check",
    evidence="witness",
    study=_study,
    study_table=universality_table,
))
