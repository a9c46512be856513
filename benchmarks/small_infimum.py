"""Where the truth lies on small instances whose ratio floor / best found stays low (issue 27, item 5).

For claim M's d = 2 instances of the quick profile (seed 0) the least last-... error over prompts
with token norms <= B is searched exhaustively for short prompts: every 1-token prompt on a fine
polar grid of the B-ball, every 2-token prompt on a coarser one, each grid's best 8 polished
(Nelder-Mead on the ball); longer prompts by random starts, polished. The result is an upper
bound on the infimum (a prompt that reaches it exists), printed between the certified floor and
the audit's best found, with the floor's own factors (lower Lipschitz chain, sqrt(d), the pair's
1/2). The same for L2's instances whose ratio is below 0.3, over one-token prompts (unbounded:
random starts at many scales). Run by hand: `python benchmarks/small_infimum.py [--seed 0]`.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402


def _errors(inst, prompts: np.ndarray) -> np.ndarray:
    """(P,) max error over every example and target for each prompt of the batch (P, m, d), float64."""
    import torch

    from peftaudit.models.transformer import forward, to_torch

    out = []
    for chunk in np.array_split(prompts, max(1, len(prompts) // 4096)):
        P = len(chunk)
        X = torch.tensor(np.stack([np.asarray(ex.X, float) for ex in inst.dataset]))[None].expand(P, -1, -1, -1)
        Y = torch.tensor(np.stack([np.asarray(ex.Y, float) for ex in inst.dataset]))            # (E, k, d)
        with torch.no_grad():
            Z = forward(inst.spec, to_torch(inst.weights, P), X, prompt=torch.tensor(chunk), keep=Y.shape[1])
        out.append((Z - Y[None]).abs().amax(dim=(1, 2, 3)).numpy())
    return np.concatenate(out)


def _ball(n_radii: int, n_angles: int, bound: float) -> np.ndarray:
    """(n, 2) points of a polar grid of the 2-d ball of radius `bound` (centre included)."""
    r = bound * np.sqrt(np.linspace(0, 1, n_radii))[1:]
    a = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    pts = (r[:, None, None] * np.stack([np.cos(a), np.sin(a)], -1)[None]).reshape(-1, 2)
    return np.vstack([[0.0, 0.0], pts])


def _polish(inst, prompt: np.ndarray, bound: float) -> float:
    """Nelder-Mead on the prompt, kept in the ball by radial projection; the best max error."""
    from scipy.optimize import minimize

    def project(x):
        P = x.reshape(prompt.shape)
        n = np.linalg.norm(P, axis=1, keepdims=True)
        return P * np.minimum(1.0, bound / np.maximum(n, 1e-300))

    res = minimize(lambda x: float(_errors(inst, project(x)[None])[0]), prompt.ravel(), method="Nelder-Mead",
                   options={"maxiter": 2000, "xatol": 1e-9, "fatol": 1e-12})
    return min(float(res.fun), float(_errors(inst, project(res.x)[None])[0]))


def m_rows(report: dict, instances) -> list[dict]:
    claim = next(c for c in report["claims"] if c["id"] == "M")
    best = {r["instance"]: r for r in claim["sandwich"]}
    rows = []
    for i, inst in enumerate(instances):
        if inst.spec.d != 2 or i not in best:
            continue
        bound = float(inst.meta.get("bound", 1.0))
        one = _ball(120, 360, bound)[:, None, :]                                   # (n, 1, 2)
        e1 = _errors(inst, one)
        grid2 = _ball(18, 48, bound)
        pairs = np.stack(np.meshgrid(np.arange(len(grid2)), np.arange(len(grid2))), -1).reshape(-1, 2)
        pairs = pairs[pairs[:, 0] <= pairs[:, 1]]
        two = grid2[pairs]                                                        # (n, 2, 2)
        e2 = _errors(inst, two)
        by_length = {1: min(_polish(inst, one[j], bound) for j in np.argsort(e1)[:8]),
                     2: min(_polish(inst, two[j], bound) for j in np.argsort(e2)[:8])}
        rng = np.random.default_rng(i)
        for m in (3, 4, 8):
            starts = rng.normal(size=(64, m, 2))
            starts *= bound * rng.uniform(0, 1, size=(64, m, 1)) / np.linalg.norm(starts, axis=2, keepdims=True)
            e = _errors(inst, starts)
            by_length[m] = min(_polish(inst, starts[j], bound) for j in np.argsort(e)[:4])
        cert = json.load(open(os.path.join(ARGS.report, claim["certificates"][i]["certificate_file"])))
        info = cert.get("uncertified", {})
        rows.append({"claim": "M", "instance": i, "layers": len(inst.spec.layers), "attention": inst.spec.attention,
                     "floor": best[i]["floor"], "lower_lipschitz": info.get("lower_lipschitz"),
                     "sqrt_d": math.sqrt(2), "short_prompt_best": by_length, "best_found": best[i]["best_found"]})
    return rows


def l2_rows(report: dict, instances) -> list[dict]:
    from scipy.optimize import minimize

    claim = next(c for c in report["claims"] if c["id"] == "L2")
    rows = []
    for r in claim["sandwich"]:
        if r["ratio"] is None or r["ratio"] >= 0.3:
            continue
        inst = instances[r["instance"]]
        d = inst.spec.d
        rng = np.random.default_rng(r["instance"])
        best = math.inf
        for _ in range(200):
            x0 = rng.normal(size=d) * 10 ** rng.uniform(-1, 2)
            res = minimize(lambda x: float(_errors(inst, x.reshape(1, 1, d))[0]), x0, method="Nelder-Mead",
                           options={"maxiter": 3000})
            best = min(best, float(res.fun))
        rows.append({"claim": "L2", "instance": r["instance"], "d": d, "floor": r["floor"],
                     "one_token_best": best, "best_found": r["best_found"]})
    return rows


def main() -> None:
    from peftaudit.claims import get_claim
    from peftaudit.settings import get_profile

    profile = get_profile("quick")
    report = json.load(open(os.path.join(ARGS.report, "report.json")))
    rows = m_rows(report, get_claim("M").draw(profile, ARGS.seed))
    rows += l2_rows(report, get_claim("L2").draw(profile, ARGS.seed))
    for row in rows:
        if row["claim"] == "M":
            lengths = ", ".join(f"{m}: {e:.4f}" for m, e in row["short_prompt_best"].items())
            print(f"M instance {row['instance']} ({row['layers']} layer(s), {row['attention']}): floor "
                  f"{row['floor']:.4f} = lower Lipschitz {row['lower_lipschitz']:.3f} x D / (2 sqrt(d)); "
                  f"least found by prompt length {{{lengths}}}; audit's best {row['best_found']:.4f}")
        else:
            print(f"L2 instance {row['instance']} (d = {row['d']}): floor {row['floor']:.4f}; least one-token error "
                  f"from 200 starts {row['one_token_best']:.4f}; audit's best {row['best_found']:.4f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default="reports/latest", help="the quick profile's report folder (seed 0)")
    ARGS = parser.parse_args()
    main()
