"""Adapter files: a found prompt, prefix or LoRA, written so `peftaudit replay` can check it."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from peftaudit.errors import InputError
from peftaudit.instance import Instance, atomic_write_bytes, to_dict
from peftaudit.models.methods import get_method

ADAPTER_FORMAT = "peftaudit.adapter/1"


def instance_digest(inst: Instance) -> str:
    return hashlib.sha256(json.dumps(to_dict(inst), sort_keys=True).encode()).hexdigest()


def save_adapter(path: str | Path, inst: Instance, method: str, options: dict, size: int,
                 tensors: dict[str, np.ndarray], replayed: dict) -> None:
    doc = {"format": ADAPTER_FORMAT, "method": method, "options": options, "size": size,
           "instance_sha256": instance_digest(inst), "replayed": replayed,
           "tensors": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in tensors.items()}}
    atomic_write_bytes(Path(path), (json.dumps(doc) + "\n").encode())


def load_adapter(path: str | Path, inst: Instance) -> tuple[str, dict, int, dict[str, np.ndarray]]:
    """Read an adapter and check that its tensors fit the instance's model; InputError otherwise."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError("adapter", str(path), f"a readable JSON adapter file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != ADAPTER_FORMAT:
        raise InputError("adapter format", doc.get("format") if isinstance(doc, dict) else doc, repr(ADAPTER_FORMAT))
    method_name, options, size = doc.get("method"), doc.get("options", {}), doc.get("size")
    if not isinstance(options, dict):
        raise InputError("adapter options", options, "a JSON object")
    method = get_method(method_name, **options)
    template = method.init(inst.spec, 1, size, torch.Generator())
    tensors = doc.get("tensors")
    if not isinstance(tensors, dict) or set(tensors) != set(template):
        raise InputError("adapter tensors", sorted(tensors) if isinstance(tensors, dict) else tensors,
                         f"exactly the tensors {sorted(template)} for this model")
    out = {}
    for name, value in tensors.items():
        try:
            arr = np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"adapter tensors.{name}", "ragged or non-numeric", "a numeric array") from None
        if arr.shape != tuple(template[name].shape[1:]):
            raise InputError(f"adapter tensors.{name}", f"shape {arr.shape}", f"shape {tuple(template[name].shape[1:])}")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"adapter tensors.{name}", "non-finite entries", "finite numbers")
        out[name] = arr
    return method_name, options, size, out


def replayed_figures(loss: float, err: float) -> dict:
    return {"best_loss": loss if math.isfinite(loss) else None, "max_abs_error": err if math.isfinite(err) else None,
            "kind": "numerical (float64 reference forward)"}
