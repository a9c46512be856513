"""Independent checker of claim U witnesses (a transformer, a grid table and a prompt), exactly.

A U witness says: with the certificate's prompt P, the embedded instance's model g satisfies
d_p(g([P, .]), f) <= eps - margin for the instance's target f (SPEC claim U). The checker, in
Fraction arithmetic only and sharing no code with the constructor (models/universal.py):

1. reads the grid (d, m, K, gamma, eps, p) and the target f from the instance's meta, and the
   table from its dataset: one example per grid cell, X the cell's centre padded with zeros to
   the model's width, Y the required final states (the table's values in the first d channels);
2. on the good box of every cell (each coordinate in [i/K, (i+1)/K - gamma], or [(K-1)/K, 1] in
   the last cell) propagates affine forms in the m d input variables through the model: every ReLU
   must have one sign on the box, every attention logit must be constant there; hardmax attention
   must give exactly Y (coefficients 0); softmax deviates from it by at most a remainder lam * R,
   lam <= (n - 1) exp(-gap) with exp enclosed by exact Taylor bounds;
3. encloses the readout over the whole domain [0,1]^{m d} by interval arithmetic (attention
   outputs lie in the hull of the values), giving the error bound M on the bands between boxes;
4. recomputes the target's Lipschitz bound L (max-norm to max-norm) and the table's rounding
   error rho = max |Y - f(centre)| exactly, and checks
       B = V (rho + L / (2K) + lam_read)^p + V M^p V (K - 1) gamma <= (eps - margin)^p,  V = m d,
   which bounds d_p^p: on the boxes each output coordinate errs by at most rho + L delta/2 +
   lam_read, and the bands have measure at most V (K - 1) gamma.

Structure it accepts (else it refuses, naming the layer): encoder mask, residual MLPs, no layer
norm; before the last layer each attention head is off (W_v or W_o zero) or uniform (W_q or W_k
zero), and an MLP after a uniform attention is off. The last layer is general.
"""

from __future__ import annotations

from fractions import Fraction
from math import lcm
from typing import Any

from .exact import BeyondLimits, exp_bounds, get
from .instance import Instance
from .reading import MalformedCertificate, binary64, rational
from .result import CheckResult
from .u_construction import construction_mismatch, model_digest

MAX_VARIABLES = 16
MAX_CELLS = 1 << 16
MAX_WORK = 1 << 24   # look-up logits the checker computes (about a minute of integer arithmetic)
F0, F1 = Fraction(0), Fraction(1)


class Refused(Exception):
    """The witness does not pass (the message says where); not a malformed file."""


# ----------------------------------------------------------------------------- sparse exact algebra

def _sparse(M: list[list[Fraction]]) -> list[list[tuple[int, Fraction]]]:
    return [[(j, v) for j, v in enumerate(row) if v] for row in M]


def _zero(M) -> bool:
    return M is None or all(not v for row in M for v in row)


def _apply(S, forms: list[list[Fraction]], width: int) -> list[list[Fraction]]:
    """Sparse matrix times a vector of affine forms (each [const, coef_1..coef_V])."""
    out = []
    for row in S:
        acc = [F0] * width
        for j, v in row:
            f = forms[j]
            for t in range(width):
                if f[t]:
                    acc[t] += v * f[t]
        out.append(acc)
    return out


def _range(form: list[Fraction], box: list[tuple[Fraction, Fraction]]) -> tuple[Fraction, Fraction]:
    lo = hi = form[0]
    for c, (a, b) in zip(form[1:], box):
        if c > 0:
            lo, hi = lo + c * a, hi + c * b
        elif c < 0:
            lo, hi = lo + c * b, hi + c * a
    return lo, hi


def _const(c: Fraction, width: int) -> list[Fraction]:
    return [c] + [F0] * (width - 1)


def _interval_apply(S, box: list[tuple[Fraction, Fraction]]) -> list[tuple[Fraction, Fraction]]:
    out = []
    for row in S:
        lo = hi = F0
        for j, v in row:
            a, b = box[j]
            lo, hi = (lo + v * a, hi + v * b) if v > 0 else (lo + v * b, hi + v * a)
        out.append((lo, hi))
    return out


# ----------------------------------------------------------------------------- the target f

def _target(doc: Any, V: int) -> tuple[str, Any]:
    family = get(doc, "family", "meta.u.target")
    if family == "table":
        return family, None

    def mat(key, rows, cols):
        x = get(doc, key, "meta.u.target")
        if not isinstance(x, list) or len(x) != rows or any(not isinstance(r, list) or len(r) != cols for r in x):
            raise MalformedCertificate(f"meta.u.target.{key}: expected {rows} x {cols} numbers")
        return [[binary64(v, f"meta.u.target.{key}") for v in r] for r in x]

    def vecr(key, n):
        x = get(doc, key, "meta.u.target")
        if not isinstance(x, list) or len(x) != n:
            raise MalformedCertificate(f"meta.u.target.{key}: expected {n} numbers")
        return [binary64(v, f"meta.u.target.{key}") for v in x]

    if family == "affine":
        return family, (mat("A", V, V), vecr("b", V))
    if family == "piecewise-linear":
        return family, (mat("A", V, V), vecr("b", V), mat("A2", V, V), vecr("b2", V))
    if family == "quadratic-features":
        W = get(doc, "W", "meta.u.target")
        R = len(W) if isinstance(W, list) else 0
        if not 1 <= R <= 64:
            raise MalformedCertificate("meta.u.target.W: expected 1..64 feature rows")
        return family, (mat("W", R, V), mat("C", V, R), vecr("b", V))
    raise MalformedCertificate(f"meta.u.target.family: expected table, affine, piecewise-linear or "
                               f"quadratic-features, got {family!r}")


def _clip(v: Fraction) -> Fraction:
    return min(max(v, F0), F1)


def _dot(a, b) -> Fraction:
    return sum((x * y for x, y in zip(a, b)), F0)


def _evaluate(family: str, params, x: list[Fraction]) -> list[Fraction]:
    if family == "affine":
        A, b = params
        return [_clip(_dot(r, x) + c) for r, c in zip(A, b)]
    if family == "piecewise-linear":
        A, b, A2, b2 = params
        return [_clip(max(_dot(r, x) + c, _dot(r2, x) + c2)) for r, c, r2, c2 in zip(A, b, A2, b2)]
    W, C, b = params
    feats = [_dot(w, x) ** 2 for w in W]
    return [_clip(c + _dot(row, feats)) for row, c in zip(C, b)]


def _lipschitz(family: str, params) -> Fraction:
    """An upper bound on the max-norm to max-norm Lipschitz constant on [0,1]^V (clipping is 1-Lipschitz)."""
    rowsum = lambda r: sum((abs(v) for v in r), F0)  # noqa: E731
    if family == "table":
        return F0
    if family == "affine":
        return max(rowsum(r) for r in params[0])
    if family == "piecewise-linear":
        return max(max(rowsum(r), rowsum(r2)) for r, r2 in zip(params[0], params[2]))
    W, C, _ = params  # d/dx (w.x)^2 = 2 (w.x) w, |w.x| <= ||w||_1 on [0,1]^V
    norms = [rowsum(w) for w in W]
    return max(sum((abs(c) * 2 * n * n for c, n in zip(row, norms)), F0) for row in C)


# ----------------------------------------------------------------------------- the grid and the table

def _grid(inst: Instance) -> dict:
    u = get(inst.meta, "u", "instance.meta")
    out = {}
    for key in ("d", "m", "K", "p"):
        v = get(u, key, "meta.u")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise MalformedCertificate(f"meta.u.{key}: expected a positive integer")
        out[key] = v
    out["gamma"], out["eps"] = binary64(get(u, "gamma", "meta.u"), "meta.u.gamma"), binary64(get(u, "eps", "meta.u"), "meta.u.eps")
    if out["K"] < 2 or out["p"] > 64:
        raise MalformedCertificate("meta.u: expected K >= 2 and p <= 64")
    V = out["d"] * out["m"]
    if V > MAX_VARIABLES or out["K"] ** V > MAX_CELLS:
        raise MalformedCertificate(f"meta.u: {out['K']}^{V} cells exceed the checker's limit {MAX_CELLS}")
    if not 0 < out["gamma"] < Fraction(1, 2 * out["K"]) or out["eps"] <= 0:
        raise MalformedCertificate("meta.u: expected 0 < gamma < 1/(2K) and eps > 0")
    out["target"] = _target(get(u, "target", "meta.u"), V)
    return out


def _cells(inst: Instance, g: dict) -> dict[int, int]:
    """cell index -> example index, checking that the examples are the cell centres, each once."""
    d, m, K, D = g["d"], g["m"], g["K"], inst.d
    if d > D or len(inst.dataset[0][0]) != m or len(inst.dataset[0][1]) != m:
        raise Refused(f"the dataset must have m = {m} tokens and targets per example, within width {D} >= d = {d}")
    seen: dict[int, int] = {}
    for e, (X, _Y) in enumerate(inst.dataset):
        cell = 0
        for j, row in enumerate(X):
            if any(row[d:]):
                raise Refused(f"example {e}: channels beyond d of the inputs must be 0 (the embedding pads with zeros)")
            for k, x in enumerate(row[:d]):
                i = 2 * K * x - 1
                if i.denominator != 1 or i % 2 or not 0 <= i // 2 < K:
                    raise Refused(f"example {e}: input ({j}, {k}) = {x} is not a cell centre of the 1/{K} grid")
                cell += int(i // 2) * K ** (j * d + k)
        if cell in seen:
            raise Refused(f"examples {seen[cell]} and {e} are the same cell")
        seen[cell] = e
    if len(seen) != K ** (d * m):
        raise Refused(f"the dataset covers {len(seen)} of the {K ** (d * m)} cells")
    return seen


# ----------------------------------------------------------------------------- the model, on boxes

class _Plan:
    """The model's layers, classified, with everything about the prompt that no cell changes."""

    def __init__(self, inst: Instance, prompt: list[list[Fraction]]):
        if inst.attention != "encoder" or inst.layernorm or inst.mlp != "residual":
            raise Refused("the U checker handles encoder attention, residual MLPs and no layer norm")
        self.D, self.n_prompt = inst.d, len(prompt)
        self.layers = []
        base = [list(row) for row in prompt]
        mixed = False
        last = len(inst.layers) - 1
        for li, layer in enumerate(inst.layers):
            kinds = []
            for head in layer.heads:
                V = head.V
                if _zero(V):
                    kinds.append(("off", None))
                elif li < last and (_zero(head.Wq) or _zero(head.Wk)):
                    kinds.append(("uniform", (_sparse(V), [sum((v for v in col), F0) for col in
                                                           zip(*[[_dot(r, t) for r in V] for t in base])])))
                    mixed = True
                elif li == last:
                    Wv_base = [[_dot(r, t) for r in head.Wv] for t in base]
                    keys = [[_dot(r, t) for r in head.Wk] for t in base]
                    den = lcm(*(k.denominator for row in keys for k in row)) if keys else 1
                    kinds.append(("general", dict(
                        Wq=_sparse(head.Wq), Wk=_sparse(head.Wk), Wv=_sparse(head.Wv),
                        Wo=_sparse(head.Wo) if head.Wo is not None else None,
                        keys=[[int(k * den) for k in row] for row in keys], den=den, values=Wv_base,
                        value_lo=[min(col) for col in zip(*Wv_base)] if Wv_base else [],
                        value_hi=[max(col) for col in zip(*Wv_base)] if Wv_base else [])))
                else:
                    raise Refused(f"layer {li}: an attention head that mixes tokens before the last layer")
            mlp_off = _zero(layer.W2) and not any(layer.b2)
            if not mlp_off and mixed and li < last:
                raise Refused(f"layer {li}: an MLP after a uniform attention before the last layer")
            if not mlp_off and not mixed:  # prompt states are still input-independent: apply once
                base = [_mlp_exact(layer, t) for t in base]
            self.layers.append((kinds, layer, _sparse(layer.W1), _sparse(layer.W2), mlp_off))
        self.gaps: list[Fraction] = []


def _mlp_exact(layer, z: list[Fraction]) -> list[Fraction]:
    h = [max(_dot(r, z) + b, F0) for r, b in zip(layer.W1, layer.b1)]
    return [zc + _dot(r, h) + b for zc, r, b in zip(z, layer.W2, layer.b2)]


def _relu_forms(pre, rem, box, where):
    out_f, out_r = [], []
    for u, (f, r) in enumerate(zip(pre, rem)):
        lo, hi = _range(f, box)
        if lo - r >= 0:
            out_f.append(f)
            out_r.append(r)
        elif hi + r <= 0:
            out_f.append([F0] * len(f))
            out_r.append(F0)
        else:
            raise Refused(f"{where}: hidden unit {u} changes sign on the box" + (" within the softmax remainder" if
                                                                                  lo >= 0 or hi <= 0 else ""))
    return out_f, out_r


def _analyse_cell(plan: _Plan, inst: Instance, cell_box, exp_cache: dict, where: str):
    """Forms and remainders of the m final states on one good box."""
    D, m = plan.D, len(cell_box)
    V = sum(len(b) for b in cell_box)
    W = V + 1
    box = [ab for token in cell_box for ab in token]
    d = len(cell_box[0])
    tokens = []
    for j in range(m):
        row = [_const(inst.positional[j][c] if inst.positional is not None else F0, W) for c in range(D)]
        for k in range(d):
            row[k] = list(row[k])
            row[k][1 + j * d + k] += 1
        tokens.append(row)
    rem = [[F0] * D for _ in range(m)]
    shift = [[F0] * W for _ in range(D)]
    n = plan.n_prompt + m
    for li, (kinds, layer, W1, W2, mlp_off) in enumerate(plan.layers):
        add = [[[F0] * W for _ in range(D)] for _ in range(m)]
        add_rem = [[F0] * D for _ in range(m)]
        shift_add = [[F0] * W for _ in range(D)]
        for hi, (kind, data) in enumerate(kinds):
            if kind == "uniform":
                S, prompt_sum = data
                total = [list(_const(prompt_sum[c], W)) for c in range(D)]
                sv = _apply(S, shift, W)
                for c in range(D):
                    total[c] = [a + plan.n_prompt * b for a, b in zip(total[c], sv[c])]
                for tok in tokens:
                    tv = _apply(S, tok, W)
                    for c in range(D):
                        total[c] = [a + b for a, b in zip(total[c], tv[c])]
                u = [[x / n for x in f] for f in total]
                for j in range(m):
                    add[j] = [[a + b for a, b in zip(x, y)] for x, y in zip(add[j], u)]
                shift_add = [[a + b for a, b in zip(x, y)] for x, y in zip(shift_add, u)]
            elif kind == "general":
                _general_head(plan, data, tokens, shift, box, W, n, add, add_rem, exp_cache, f"{where}, layer {li} head {hi}")
        for j in range(m):
            tokens[j] = [[a + b for a, b in zip(x, y)] for x, y in zip(tokens[j], add[j])]
            rem[j] = [a + b for a, b in zip(rem[j], add_rem[j])]
        shift = [[a + b for a, b in zip(x, y)] for x, y in zip(shift, shift_add)]
        if mlp_off:
            continue
        for j in range(m):
            pre = _apply(W1, tokens[j], W)
            for u_, b in enumerate(layer.b1):
                pre[u_][0] += b
            pre_rem = [sum((abs(v) * rem[j][c] for c, v in row), F0) for row in W1]
            h, h_rem = _relu_forms(pre, pre_rem, box, f"{where}, layer {li} MLP, token {j}")
            out = _apply(W2, h, W)
            tokens[j] = [[a + b for a, b in zip(x, y)] for x, y in zip(tokens[j], out)]
            for c, b in enumerate(layer.b2):
                tokens[j][c][0] += b
            rem[j] = [rc + sum((abs(v) * h_rem[u_] for u_, v in row), F0) for rc, row in zip(rem[j], W2)]
    return tokens, rem


def _general_head(plan, data, tokens, shift, box, W, n, add, add_rem, exp_cache, where):
    m = len(tokens)
    wk_shift = _apply(data["Wk"], shift, W)
    wv_shift = _apply(data["Wv"], shift, W)
    if any(any(f[1:]) for f in wk_shift):
        raise Refused(f"{where}: prompt keys vary over the box")
    input_keys = [_apply(data["Wk"], tok, W) for tok in tokens]
    if any(any(f[1:]) for keys in input_keys for f in keys):
        raise Refused(f"{where}: input keys vary over the box")
    input_values = [_apply(data["Wv"], tok, W) for tok in tokens]
    ranges = [[_range(f, box) for f in vals] for vals in input_values]
    v_dim = len(wv_shift)
    shift_ranges = [_range(f, box) for f in wv_shift]
    all_lo = [min(([data["value_lo"][c] + shift_ranges[c][0]] if data["values"] else []) +
                  [r[c][0] for r in ranges]) for c in range(v_dim)]
    all_hi = [max(([data["value_hi"][c] + shift_ranges[c][1]] if data["values"] else []) +
                  [r[c][1] for r in ranges]) for c in range(v_dim)]
    for j in range(m):
        q = _apply(data["Wq"], tokens[j], W)
        if any(any(f[1:]) for f in q):
            raise Refused(f"{where}: the query of position {j} varies over the box")
        qc = [f[0] for f in q]
        qden = lcm(*(x.denominator for x in qc))
        qint = [int(x * qden) for x in qc]
        scale = data["den"] * qden
        common = _dot([f[0] for f in wk_shift], qc) * scale
        vals = [sum(a * b for a, b in zip(key, qint)) for key in data["keys"]]      # scaled prompt logits
        scored = [Fraction(v) + common for v in vals]
        scored += [_dot([f[0] for f in keys], qc) * scale for keys in input_keys]  # scaled input logits
        top = max(scored)
        argmax = [t for t, v in enumerate(vals) if scored[t] == top]
        inputs_at = [jj for jj in range(m) if scored[len(vals) + jj] == top]
        rest = [v for v in scored if v != top]
        ties = len(argmax) + len(inputs_at)
        hard = [[F0] * W for _ in range(v_dim)]
        for t in argmax:
            for c in range(v_dim):
                hard[c] = [a + b for a, b in zip(hard[c], wv_shift[c])]
                hard[c][0] += data["values"][t][c]
        for jj in inputs_at:
            hard = [[a + b for a, b in zip(x, y)] for x, y in zip(hard, input_values[jj])]
        hard = [[x / ties for x in f] for f in hard]
        if rest:
            gap = (top - max(rest)) / scale
            if gap not in exp_cache:
                exp_cache[gap] = exp_bounds(-gap)[1]
            lam = (n - ties) * exp_cache[gap] / ties
            hr = [_range(f, box) for f in hard]
            R = [max(all_hi[c] - hr[c][0], hr[c][1] - all_lo[c], F0) for c in range(v_dim)]
            rem_v = [lam * r for r in R]
            plan.gaps.append(gap)
        else:
            rem_v = [F0] * v_dim
        if data["Wo"] is not None:
            out = _apply(data["Wo"], hard, W)
            out_rem = [sum((abs(v) * rem_v[c] for c, v in row), F0) for row in data["Wo"]]
        else:
            out, out_rem = hard, rem_v
        add[j] = [[a + b for a, b in zip(x, y)] for x, y in zip(add[j], out)]
        add_rem[j] = [a + b for a, b in zip(add_rem[j], out_rem)]


def _readout_range(plan: _Plan, inst: Instance, d: int, m: int) -> list[list[tuple[Fraction, Fraction]]]:
    """Interval enclosure of every final state over the whole domain [0,1]^{m d}."""
    D = plan.D
    tokens = []
    for j in range(m):
        pos = inst.positional[j] if inst.positional is not None else [F0] * D
        tokens.append([(pos[c], pos[c] + (F1 if c < d else F0)) for c in range(D)])
    shift = [(F0, F0)] * D
    n = plan.n_prompt + m
    for kinds, layer, W1, W2, mlp_off in plan.layers:
        add = [[(F0, F0)] * D for _ in range(m)]
        shift_add = [(F0, F0)] * D
        for kind, data in kinds:
            if kind == "uniform":
                S, prompt_sum = data
                sv = _interval_apply(S, shift)
                total = [(p + plan.n_prompt * a, p + plan.n_prompt * b) for p, (a, b) in zip(prompt_sum, sv)]
                for tok in tokens:
                    tv = _interval_apply(S, tok)
                    total = [(a + c, b + e) for (a, b), (c, e) in zip(total, tv)]
                u = [(a / n, b / n) for a, b in total]
                add = [[(a + c, b + e) for (a, b), (c, e) in zip(row, u)] for row in add]
                shift_add = [(a + c, b + e) for (a, b), (c, e) in zip(shift_add, u)]
            elif kind == "general":
                wv_shift = _interval_apply(data["Wv"], shift)
                hull = []
                for c in range(len(wv_shift)):
                    los = [data["value_lo"][c] + wv_shift[c][0]] if data["values"] else []
                    his = [data["value_hi"][c] + wv_shift[c][1]] if data["values"] else []
                    for tok in tokens:
                        lo, hi = _interval_apply([data["Wv"][c]], tok)[0]
                        los.append(lo)
                        his.append(hi)
                    hull.append((min(los), max(his)))
                out = _interval_apply(data["Wo"], hull) if data["Wo"] is not None else hull
                add = [[(a + c, b + e) for (a, b), (c, e) in zip(row, out)] for row in add]
        tokens = [[(a + c, b + e) for (a, b), (c, e) in zip(tok, row)] for tok, row in zip(tokens, add)]
        shift = [(a + c, b + e) for (a, b), (c, e) in zip(shift, shift_add)]
        if mlp_off:
            continue
        new = []
        for tok in tokens:
            pre = _interval_apply(W1, tok)
            h = [(max(a + b0, F0), max(b + b0, F0)) for (a, b), b0 in zip(pre, layer.b1)]
            out = _interval_apply(W2, h)
            new.append([(z0 + o0 + b0, z1 + o1 + b0) for (z0, z1), (o0, o1), b0 in zip(tok, out, layer.b2)])
        tokens = new
    return tokens


# ----------------------------------------------------------------------------- the check

def check_u(cert: dict, inst: Instance) -> CheckResult:
    """Re-verify a U witness against its (validated) embedded instance."""
    g = _grid(inst)
    d, m, K, p, gamma, eps = g["d"], g["m"], g["K"], g["p"], g["gamma"], g["eps"]
    V = d * m
    margin = rational(get(cert, "margin", "certificate"), "margin")
    raw = get(cert, "prompt", "certificate")
    if not isinstance(raw, list) or not raw or len(raw) > 1 << 20:
        raise MalformedCertificate("prompt: expected a non-empty list of tokens")
    prompt = []
    for t, row in enumerate(raw):
        if not isinstance(row, list) or len(row) != inst.d:
            raise MalformedCertificate(f"prompt[{t}]: expected {inst.d} numbers")
        prompt.append([binary64(v, f"prompt[{t}]") for v in row])
    if not 0 <= margin < eps:
        raise MalformedCertificate("margin: expected 0 <= margin < eps")
    work = len(inst.dataset) * len(prompt) * g["m"]
    if work > MAX_WORK:
        raise MalformedCertificate(f"prompt: {len(prompt)} tokens against {len(inst.dataset)} cells exceed the "
                                   f"checker's limit (cells x prompt length x m <= {MAX_WORK})")
    beta = binary64(get(get(inst.meta, "u", "instance.meta"), "beta", "meta.u"), "meta.u.beta")
    if beta <= 0:
        raise MalformedCertificate("meta.u.beta: expected a positive logit scale")
    unlike = construction_mismatch(inst, d, m, K, gamma, beta)
    if unlike:  # universality is one g for every f: a g built for its target proves only an approximation
        return CheckResult(False, unlike)
    try:
        cells = _cells(inst, g)
        family, params = g["target"]
        for e, (_X, Y) in enumerate(inst.dataset):
            if any(not 0 <= y <= 1 for row in Y for y in row[:d]):
                raise Refused(f"example {e}: table values must lie in [0, 1]")
        plan = _Plan(inst, prompt)
        exp_cache: dict = {}
        lam_read, rho = F0, F0
        for cell, e in sorted(cells.items()):
            X, Y = inst.dataset[e]
            cell_box = []
            for j in range(m):
                row = []
                for k in range(d):
                    i = int(X[j][k] * K)
                    row.append((Fraction(i, K), F1 if i == K - 1 else Fraction(i + 1, K) - gamma))
                cell_box.append(row)
            tokens, rem = _analyse_cell(plan, inst, cell_box, exp_cache, f"cell {cell}")
            for j in range(m):
                for c, f in enumerate(tokens[j]):
                    if any(f[1:]) or f[0] != Y[j][c]:
                        raise Refused(f"cell {cell} (example {e}): with hardmax attention the final state ({j}, {c}) "
                                      f"is {'not constant on the box' if any(f[1:]) else float(f[0])}, the table says "
                                      f"{float(Y[j][c])}")
                lam_read = max([lam_read] + rem[j][:d])
            if family != "table":
                x = [X[j][k] for j in range(m) for k in range(d)]
                fx = _evaluate(family, params, x)
                rho = max([rho] + [abs(Y[j][k] - fx[j * d + k]) for j in range(m) for k in range(d)])
        ranges = _readout_range(plan, inst, d, m)
        M = max(max(hi, 1 - lo) for tok in ranges for lo, hi in tok[:d])
        L = _lipschitz(family, params)
    except Refused as exc:
        return CheckResult(False, str(exc))
    except BeyondLimits as exc:
        return CheckResult(False, f"cannot enclose the softmax leakage: {exc}")
    bound = V * (rho + L / (2 * K) + lam_read) ** p + V * M ** p * V * (K - 1) * gamma
    gap = min(plan.gaps, default=None)
    facts = {"cells": len(cells), "prompt_length": len(prompt), "lipschitz": float(L), "rho": float(rho),
             "softmax_remainder": float(lam_read), "band_error": float(M),
             "min_logit_gap": float(gap) if gap is not None else None,
             "dp_bound": float(bound) ** (1 / p), "dp_bound_pow_p": f"{bound.numerator}/{bound.denominator}",
             "eps": float(eps), "p": p, "g_sha256": model_digest(inst),
             "configuration": {"d": d, "m": m, "K": K, "gamma": float(gamma), "beta": float(beta)}}
    if bound > (eps - margin) ** p:
        return CheckResult(False, f"the d_p bound {float(bound) ** (1 / p):.6g} exceeds eps - margin = "
                                  f"{float(eps - margin):.6g} (hardmax exact on all {len(cells)} cells)", facts=facts)
    return CheckResult(True, f"hardmax exact on all {len(cells)} cells' boxes; d_p <= {float(bound) ** (1 / p):.6g} "
                             f"<= eps = {float(eps):.6g}", margin=margin, facts=facts)
