"""Adapter files: a found prompt, prefix or LoRA, written so `peftaudit replay` can check it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from peftaudit import jsonio
from peftaudit.errors import InputError
from peftaudit.instance import Instance, atomic_write_bytes, digest
from peftaudit.limits import LIMITS, MAX_ARRAY_ELEMENTS
from peftaudit.models.methods import get_method

ADAPTER_FORMAT = "peftaudit.adapter/1"
ADAPTER_KEYS = {"format", "claim", "method", "options", "size", "instance_sha256", "replayed", "tensors"}
MAX_ADAPTER_BYTES = 64 * 2**20


def save_adapter(path: str | Path, inst: Instance, method: str, options: dict, size: int,
                 tensors: dict[str, np.ndarray], replayed: dict, claim: str | None = None) -> None:
    """Write an adapter bound to its instance (SHA-256) and, for a counterexample, to its claim."""
    doc = {"format": ADAPTER_FORMAT, **({"claim": claim} if claim else {}), "method": method, "options": options,
           "size": size,
           "instance_sha256": digest(inst), "replayed": replayed,
           "tensors": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in tensors.items()}}
    atomic_write_bytes(Path(path), (json.dumps(doc) + "\n").encode())


def load_adapter(path: str | Path, inst: Instance) -> tuple[str, dict, int, dict[str, np.ndarray]]:
    """Read an adapter, check it is bound to this instance and fits its model; InputError otherwise."""
    doc = jsonio.load(path, "adapter", MAX_ADAPTER_BYTES)
    if not isinstance(doc, dict) or doc.get("format") != ADAPTER_FORMAT:
        raise InputError("adapter format", doc.get("format") if isinstance(doc, dict) else type(doc).__name__,
                         repr(ADAPTER_FORMAT))
    extra = sorted(set(doc) - ADAPTER_KEYS)
    if extra:
        raise InputError(f"adapter {extra[0]}", doc[extra[0]], f"no such key (allowed: {', '.join(sorted(ADAPTER_KEYS))})")
    method_name, options, size = doc.get("method"), doc.get("options", {}), doc.get("size")
    if not isinstance(method_name, str):
        raise InputError("adapter method", method_name, "a method name (a string)")
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise InputError("adapter options", options, "a JSON object of named options")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= LIMITS["tokens"]:
        raise InputError("adapter size", size, f"an integer from 1 to {LIMITS['tokens']}")
    from peftaudit.models.methods import method_names
    if ":" in method_name and method_name not in method_names():
        raise InputError("adapter method", method_name, "a registered method (adapter files never import code: "
                         "load the plugin first, e.g. `peftaudit replay --method " + method_name + " ...`)")
    bound = doc.get("instance_sha256")
    if bound is not None and bound != digest(inst):
        raise InputError("adapter instance_sha256", bound, f"the digest of the given instance ({digest(inst)})")
    method = get_method(method_name, **options)
    if method.param_count(inst.spec, size) > MAX_ARRAY_ELEMENTS:
        raise InputError("adapter size", size, f"a size whose parameters fit in {MAX_ARRAY_ELEMENTS} numbers")
    template = method.init(inst.spec, 1, size, torch.Generator())
    tensors = doc.get("tensors")
    if not isinstance(tensors, dict) or set(tensors) != set(template):
        raise InputError("adapter tensors", sorted(tensors) if isinstance(tensors, dict) else tensors,
                         f"exactly the tensors {sorted(template)} for this model")
    out = {}
    for name, value in tensors.items():
        want = tuple(template[name].shape[1:])
        try:
            arr = np.array(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"adapter tensors.{name}", "ragged or non-numeric", "a numeric array") from None
        if arr.shape != want:
            raise InputError(f"adapter tensors.{name}", f"shape {arr.shape}", f"shape {want}")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"adapter tensors.{name}", "non-finite entries", "finite numbers")
        out[name] = arr
    return method_name, options, size, out


def replayed_figures(loss: float, err: float, exact: tuple[float, float] | None = None) -> dict:
    """What the replay found: float64 figures, and the exact model's enclosure where computed."""
    out = {"best_loss": loss if math.isfinite(loss) else None, "max_abs_error": err if math.isfinite(err) else None,
           "kind": "numerical (float64 reference forward)"}
    if exact is not None:
        out["exact_max_error"] = list(exact)
        out["kind"] = "exact model enclosed by interval arithmetic; float64 figures beside it"
    return out
