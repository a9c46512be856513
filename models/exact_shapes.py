"""Whether an ExactAdapter fits the instance it is replayed on: every name a weight of the model,
every array of the shape its place in the exact model needs, every number finite.

The interval forward zips rows and columns, so a wrong-shaped array would silently truncate the
model (a (1 x d) delta for a d x d W_v leaves one coordinate); a declared exact model is a
method's claim about itself, checked here before any enclosure (SPEC section 4: declarations
are hypotheses, checked).
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from .spec import ModelSpec

PREFIX_KEY = re.compile(r"layers\.(\d+)\.heads\.(\d+)\.(K|V)$|layers\.(\d+)\.states$")


def adapter_mismatch(spec: ModelSpec, weights: Mapping[str, np.ndarray], adapter) -> str | None:
    """None when the adapter fits; else what does not, naming the field, the name and the shapes."""
    shapes = {name: tuple(np.shape(w)) for name, w in weights.items()}
    checks = [_prompt(spec, adapter.prompt), _prefix(spec, shapes, adapter.prefix)]
    for name, (B, A, *scale) in _items(adapter.low_rank, "low_rank"):
        rows, cols = _matrix_shape(shapes, name)
        checks.append(_known(shapes, "low_rank", name) or _shaped("low_rank", name + " B", B, (rows, None))
                      or _shaped("low_rank", name + " A", A, (np.shape(B)[1] if np.ndim(B) == 2 else None, cols))
                      or (_shaped("low_rank", name + " s", scale[0], ()) if scale else None))
    for name, D in _items(adapter.delta, "delta"):
        checks.append(_known(shapes, "delta", name) or _shaped("delta", name, D, shapes.get(name)))
    for field in ("row_norm", "row_scale"):
        for name, r in _items(getattr(adapter, field), field):
            checks.append(_known(shapes, field, name) or _shaped(field, name, r, (shapes.get(name, (0,))[0],)))
    for name, c in _items(adapter.col_scale, "col_scale"):
        checks.append(_known(shapes, "col_scale", name) or _shaped("col_scale", name, c, (_matrix_shape(shapes, name)[1],)))
    for name, (first, second, s) in _items(adapter.kron, "kron"):
        checks.append(_known(shapes, "kron", name) or _kron(shapes, name, first, second, s))
    return next((c for c in checks if c), None)


def _items(mapping, field: str):
    try:
        return list(mapping.items())
    except AttributeError:
        return [(f"<{field} is {type(mapping).__name__}, expected a mapping>", None)]


def _matrix_shape(shapes: dict, name: str) -> tuple:
    shape = shapes.get(name, ())
    return shape if len(shape) == 2 else (None, None)


def _known(shapes: dict, field: str, name: str) -> str | None:
    if name not in shapes:
        return f"{field}: {name!r} is not a weight of the model (known: {', '.join(sorted(shapes))})"
    if field in ("low_rank", "col_scale", "kron") and len(shapes[name]) != 2:
        return f"{field}: {name!r} is a vector of shape {shapes[name]}, {field} needs a matrix"
    return None


def _shaped(field: str, name: str, value, want: tuple | None) -> str | None:
    """`value` is a finite array of shape `want` (None entries: any size)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return f"{field}: {name} is not an array of numbers"
    if want is None or arr.ndim != len(want) or any(w is not None and w != n for w, n in zip(want, arr.shape)):
        shown = tuple("any" if w is None else w for w in want) if want is not None else "?"
        return f"{field}: {name} has shape {arr.shape}, the model needs {shown}"
    if not np.isfinite(arr).all():
        return f"{field}: {name} holds NaN or Inf"
    return None


def _prompt(spec: ModelSpec, prompt) -> str | None:
    if prompt is None:
        return None
    problem = _shaped("prompt", "prompt", prompt, (None, spec.d))
    if problem is None and np.shape(prompt)[0] < 1:
        return "prompt: no tokens"
    return problem


def _prefix(spec: ModelSpec, shapes: dict, prefix) -> str | None:
    for key, value in _items(prefix, "prefix"):
        match = PREFIX_KEY.match(str(key))
        if not match:
            return f"prefix: {key!r} is no prefix key (layers.L.heads.H.K / .V, or layers.L.states)"
        if match.group(4) is not None:
            if int(match.group(4)) >= len(spec.layers):
                return f"prefix: {key!r} names a layer the model lacks"
            problem = _shaped("prefix", key, value, (None, spec.d))
        else:
            weight = f"layers.{match.group(1)}.heads.{match.group(2)}.W{match.group(3).lower()}"
            if weight not in shapes:
                return f"prefix: {key!r} names a head the model lacks"
            problem = _shaped("prefix", key, value, (None, shapes[weight][0]))
        if problem:
            return problem
    keys = {str(k) for k in getattr(prefix, "keys", lambda: [])()}
    unpaired = sorted(k for k in keys if k.endswith((".K", ".V")) and (k[:-1] + ("V" if k.endswith("K") else "K")) not in keys)
    if unpaired:
        return f"prefix: {unpaired[0]!r} has no matching key or value"
    return None


def _kron(shapes: dict, name: str, first, second, s) -> str | None:
    rows, cols = _matrix_shape(shapes, name)
    sides = []
    for label, factors in (("first", first), ("second", second)):
        try:
            mats = [np.asarray(f, dtype=np.float64) for f in factors]
        except (TypeError, ValueError):
            return f"kron: {name} {label} factors are not arrays of numbers"
        if not mats or any(m.ndim != 2 for m in mats) or any(a.shape[1] != b.shape[0] for a, b in zip(mats, mats[1:])):
            return f"kron: {name} {label} factors {[m.shape for m in mats]} do not chain into one matrix"
        if not all(np.isfinite(m).all() for m in mats):
            return f"kron: {name} {label} factors hold NaN or Inf"
        sides.append((mats[0].shape[0], mats[-1].shape[1]))
    (p, q), (r, t) = sides
    if (p * r, q * t) != (rows, cols):
        return f"kron: {name} makes a {p * r}x{q * t} update, the weight is {rows}x{cols}"
    return _shaped("kron", name + " s", s, ())


BEYOND_PROMPT = ("prefix", "low_rank", "delta", "row_norm", "row_scale", "col_scale", "kron")


def beyond_prompt(adapter) -> list[str]:
    """The fields of the adapter that do more than prepend tokens (empty for a pure prompt)."""
    return [f for f in BEYOND_PROMPT if getattr(adapter, f)]


def is_pure_prompt(adapter) -> bool:
    """The adapter only prepends tokens: what an input-space method's exact model must be."""
    return adapter.prompt is not None and not beyond_prompt(adapter)


def declared_update(exact, weight: str) -> np.ndarray | None:
    """The dense update an exact model makes to `weight` (its low_rank, delta and kron parts summed)."""
    total = None
    if weight in exact.low_rank:
        B, A, *scale = exact.low_rank[weight]
        total = (scale[0] if scale else 1.0) * (np.asarray(B) @ np.asarray(A))
    if weight in exact.delta:
        total = np.asarray(exact.delta[weight]) + (0 if total is None else total)
    if weight in exact.kron:
        first, second, scale = exact.kron[weight]
        product = lambda fs: np.linalg.multi_dot([*map(np.asarray, fs), np.eye(np.shape(fs[-1])[1])])  # noqa: E731
        total = scale * np.kron(product(first), product(second)) + (0 if total is None else total)
    return total


def value_rank_problem(exact, size: int) -> str | None:
    """Why the exact model is not an update of the value maps W_v alone of rank <= size (the
    update class 'value-rank' a method may declare, for claim LV), or None."""
    others = ["prompt"] if exact.prompt is not None else []
    others += [f"{field} of {w}" for field in ("prefix", "row_norm", "row_scale", "col_scale")
               for w in getattr(exact, field)]
    touched = set(exact.low_rank) | set(exact.delta) | set(exact.kron)
    others += sorted(w for w in touched if not w.endswith(".Wv"))
    if others:
        return f"it declares updates of W_v only, its exact model also changes {', '.join(others[:4])}"
    for weight in sorted(touched):
        rank = int(np.linalg.matrix_rank(declared_update(exact, weight)))
        if rank > size:
            return f"it declares rank <= {size}, its update of {weight} has rank {rank}"
    return None



def value_scale_problem(exact, size: int = 1) -> str | None:
    """Why the exact model is not a scaling of the rows of W_v alone, diag(l) W_v (the update
    class 'value-scale' a method may declare, IA3 on v, for claim LV-scale), or None."""
    others = ["prompt"] if exact.prompt is not None else []
    others += [f"{field} of {w}" for field in ("prefix", "row_norm", "col_scale", "low_rank", "delta", "kron")
               for w in getattr(exact, field)]
    others += sorted(f"row_scale of {w}" for w in exact.row_scale if not w.endswith(".Wv"))
    if others:
        return f"it declares row scalings of W_v only, its exact model also changes {', '.join(others[:4])}"
    return None


UPDATE_CLASSES = {"value-rank": value_rank_problem, "value-scale": value_scale_problem}


def update_class_problem(exact, declared: str, size: int) -> str | None:
    """Why the exact model breaks the update class the method declared (see UPDATE_CLASSES), or None."""
    if declared not in UPDATE_CLASSES:
        return f"it declares update_class {declared!r}, which is none of {', '.join(map(repr, UPDATE_CLASSES))}"
    return UPDATE_CLASSES[declared](exact, size)
