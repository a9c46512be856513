"""Instances: a model (spec and weights) and a dataset, as data only.

An Instance round-trips through JSON (`peftaudit.instance/1`, numbers as JSON floats, which are
exact binary64 values) and through .npz / .safetensors for large ones. Loading validates the
whole file before anything is returned: nothing is partly loaded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from peftaudit import jsonio
from peftaudit.errors import InputError
from peftaudit.limits import LIMITS, MAX_ARRAY_ELEMENTS, MAX_BINARY_BYTES
from peftaudit.models.spec import ATTENTION_KINDS, MLP_KINDS, HeadShape, LayerShape, ModelSpec

FORMAT = "peftaudit.instance/1"
TOP_KEYS = {"format", "model", "dataset", "meta"}
MODEL_KEYS = {"d", "mlp", "attention", "positional", "layernorm", "layers"}
LAYER_KEYS = {"heads", "W1", "b1", "W2", "b2"}
HEAD_KEYS = {"Wq", "Wk", "Wv", "Wo"}
EXAMPLE_KEYS = {"X", "Y"}


@dataclass(frozen=True)
class Example:
    X: np.ndarray  # (n, d) input tokens, one per row
    Y: np.ndarray  # (k, d) required outputs on the last k input positions


@dataclass(frozen=True)
class Instance:
    spec: ModelSpec
    weights: Mapping[str, np.ndarray]
    dataset: tuple[Example, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return self.dataset[0].X.shape[0]

    @property
    def n_targets(self) -> int:
        return self.dataset[0].Y.shape[0]

    def inputs(self) -> np.ndarray:
        """(E, n, d) stacked inputs."""
        return np.stack([ex.X for ex in self.dataset])

    def targets(self) -> np.ndarray:
        """(E, k, d) stacked targets."""
        return np.stack([ex.Y for ex in self.dataset])


def make_instance(spec: ModelSpec, weights: Mapping[str, np.ndarray], dataset: list[tuple[np.ndarray, np.ndarray]],
                  meta: Mapping[str, Any] | None = None) -> Instance:
    """Build and validate an instance from arrays (the same checks as loading a file)."""
    return from_dict(to_dict(Instance(spec, dict(weights), tuple(Example(np.asarray(X, float), np.asarray(Y, float))
                                                                   for X, Y in dataset), dict(meta or {}))))


# ----------------------------------------------------------------------------- to / from dict

def _matrix(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def to_dict(inst: Instance) -> dict:
    """The JSON structure of an instance (floats are exact binary64 values)."""
    w = inst.weights
    layers = []
    for li, layer in enumerate(inst.spec.layers):
        heads = []
        for hi, head in enumerate(layer.heads):
            p = f"layers.{li}.heads.{hi}."
            entry = {name: _matrix(w[p + name]) for name in ("Wq", "Wk", "Wv")}
            if head.has_wo:
                entry["Wo"] = _matrix(w[p + "Wo"])
            heads.append(entry)
        p = f"layers.{li}."
        layers.append({"heads": heads, **{name: _matrix(w[p + name]) for name in ("W1", "b1", "W2", "b2")}})
    model = {"d": inst.spec.d, "mlp": inst.spec.mlp, "attention": inst.spec.attention,
             "positional": _matrix(w["positional"]) if inst.spec.positions else None,
             "layernorm": inst.spec.layernorm, "layers": layers}
    return {"format": FORMAT, "model": model,
            "dataset": [{"X": _matrix(ex.X), "Y": _matrix(ex.Y)} for ex in inst.dataset],
            "meta": copy.deepcopy(dict(inst.meta))}  # no aliasing: editing the dict never edits the instance


def canonical_json(inst: Instance) -> str:
    """The canonical encoding: every default written out, keys sorted, no spaces, numbers as the
    shortest round-trip decimals of their binary64 values (docs/design.md "Certificates")."""
    return json.dumps(_no_negative_zero(to_dict(inst)), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _no_negative_zero(x: Any) -> Any:
    """-0.0 and 0.0 are one rational: the canonical encoding writes 0.0."""
    if isinstance(x, float):
        return x + 0.0
    if isinstance(x, list):
        return [_no_negative_zero(v) for v in x]
    if isinstance(x, dict):
        return {k: _no_negative_zero(v) for k, v in x.items()}
    return x


def digest(inst: Instance) -> str:
    """SHA-256 of the canonical encoding: what certificates and adapter files bind to."""
    return hashlib.sha256(canonical_json(inst).encode()).hexdigest()


def _limit(obj: Any, where: str, what: str) -> None:
    if isinstance(obj, (list, np.ndarray)) and len(obj) > LIMITS[what]:
        raise InputError(where, f"{len(obj)} entries", f"at most {LIMITS[what]} ({what})")


def _keys(obj: Any, where: str, allowed: set[str], required: set[str]) -> dict:
    if not isinstance(obj, dict):
        raise InputError(where, obj, "a JSON object")
    unknown = set(obj) - allowed
    if unknown:
        raise InputError(f"{where}.{sorted(unknown)[0]}", obj[sorted(unknown)[0]],
                         f"no such key (allowed: {', '.join(sorted(allowed))}; extra keys belong under 'meta')")
    missing = required - set(obj)
    if missing:
        raise InputError(f"{where}.{sorted(missing)[0]}", None, "a required key")
    return obj


def _array(obj: Any, where: str, ndim: int, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """A JSON number list -> float64 array, rejecting ragged lists, non-numbers and non-finite values."""
    def check(x: Any, depth: int, path: str) -> None:
        if depth == ndim:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise InputError(path, x, "a JSON number")
            if isinstance(x, int) and not _exact_int(x):
                raise InputError(path, x, "a number that is exactly a binary64 value (docs/design.md 'Numbers')")
            if not math.isfinite(x):
                raise InputError(path, x, "a finite number (no NaN or infinity)")
            return
        if not isinstance(x, list):
            raise InputError(path, x, f"a list nested {ndim} deep")
        for i, item in enumerate(x):
            check(item, depth + 1, f"{path}[{i}]")
    if isinstance(obj, np.ndarray):
        arr = binary64_array(obj, where)
        if arr.ndim != ndim:
            raise InputError(where, f"array of shape {arr.shape}", f"{ndim} dimensions")
        if not np.all(np.isfinite(arr)):
            raise InputError(where, "array with NaN or infinite entries", "finite numbers")
    else:
        check(obj, 0, where)
        if ndim == 2:
            lengths = {len(row) for row in obj}
            if len(lengths) > 1:
                raise InputError(where, f"rows of lengths {sorted(lengths)}", "rows of equal length (not ragged)")
        arr = np.array(obj, dtype=np.float64)
        if ndim == 2 and arr.size == 0:
            arr = arr.reshape(len(obj), 0)
    if shape is not None:
        for axis, want in enumerate(shape):
            if want is not None and arr.shape[axis] != want:
                raise InputError(where, f"shape {arr.shape}", f"shape {tuple('*' if s is None else s for s in shape)}")
    if any(s == 0 for s in arr.shape):
        raise InputError(where, f"shape {arr.shape}", "a non-empty array")
    arr.setflags(write=False)
    return arr


def _exact_int(x: int) -> bool:
    return abs(x) < 2**1024 and int(float(x)) == x


def binary64_array(arr: np.ndarray, where: str) -> np.ndarray:
    """A stored array as float64 under the number rule: real floats of at most 64 bits, or
    integers that float64 holds exactly; booleans, complex, strings, dates and objects refused."""
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "f" and size <= 8:
        return arr.astype(np.float64)
    if kind in "iu":
        out = arr.astype(np.float64)
        big = np.abs(out) >= 2.0**53
        with np.errstate(invalid="ignore"):  # a float beyond the integer type casts to garbage: then unequal
            back = out[big].astype(arr.dtype)
        if big.any() and not np.array_equal(back, arr[big]):
            raise InputError(where, f"{arr.dtype} array", "integers that float64 holds exactly (docs/design.md 'Numbers')")
        return out
    raise InputError(where, f"{arr.dtype} array", "an array of real numbers (float16/32/64 or exact integers)")


def _choice(obj: Any, where: str, options: tuple[str, ...]) -> str:
    if not isinstance(obj, str) or obj not in options:  # an array (from a binary file) is no name
        raise InputError(where, obj, "one of " + ", ".join(repr(o) for o in options))
    return obj


def from_dict(doc: Any) -> Instance:
    """Validate a JSON structure and build the instance; raises InputError naming the field."""
    if not isinstance(doc, dict) or "format" not in doc:
        raise InputError("format", doc.get("format") if isinstance(doc, dict) else type(doc).__name__,
                         f"a peftaudit instance file with format {FORMAT!r}")
    if not isinstance(doc["format"], str) or doc["format"] != FORMAT:
        raise InputError("format", doc["format"], repr(FORMAT))
    _keys(doc, "instance", TOP_KEYS, {"format", "model", "dataset"})
    model = _keys(doc["model"], "model", MODEL_KEYS, {"d", "layers"})
    d = model["d"]
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= LIMITS["d"]:
        raise InputError("model.d", d, f"an integer from 1 to {LIMITS['d']}")
    mlp = _choice(model.get("mlp", "residual"), "model.mlp", MLP_KINDS)
    attention = _choice(model.get("attention", "encoder"), "model.attention", ATTENTION_KINDS)
    layernorm = model.get("layernorm", False)
    if not isinstance(layernorm, bool):
        raise InputError("model.layernorm", layernorm, "true or false")
    weights: dict[str, np.ndarray] = {}
    layers_doc = model["layers"]
    if not isinstance(layers_doc, list) or not layers_doc:
        raise InputError("model.layers", layers_doc, "a non-empty list of layers")
    _limit(layers_doc, "model.layers", "layers")
    layer_shapes = []
    for li, layer in enumerate(layers_doc):
        where = f"model.layers[{li}]"
        _keys(layer, where, LAYER_KEYS, LAYER_KEYS)
        heads_doc = layer["heads"]
        if not isinstance(heads_doc, list) or not heads_doc:
            raise InputError(f"{where}.heads", heads_doc, "a non-empty list of heads")
        _limit(heads_doc, f"{where}.heads", "heads")
        head_shapes = []
        for hi, head in enumerate(heads_doc):
            hw = f"{where}.heads[{hi}]"
            _keys(head, hw, HEAD_KEYS, {"Wq", "Wk", "Wv"})
            p = f"layers.{li}.heads.{hi}."
            Wq = _array(head["Wq"], f"{hw}.Wq", 2, (None, d))
            Wk = _array(head["Wk"], f"{hw}.Wk", 2, (Wq.shape[0], d))
            Wv = _array(head["Wv"], f"{hw}.Wv", 2, (None, d))
            weights.update({p + "Wq": Wq, p + "Wk": Wk, p + "Wv": Wv})
            has_wo = "Wo" in head
            if has_wo:
                weights[p + "Wo"] = _array(head["Wo"], f"{hw}.Wo", 2, (d, Wv.shape[0]))
            elif len(heads_doc) > 1:
                raise InputError(f"{hw}.Wo", None, "an output map Wo for every head when a layer has several heads")
            elif Wv.shape[0] != d:
                raise InputError(f"{hw}.Wv", f"shape {Wv.shape}", f"shape ({d}, {d}) when Wo is absent")
            head_shapes.append(HeadShape(k=Wq.shape[0], v=Wv.shape[0], has_wo=has_wo))
        p = f"layers.{li}."
        _limit(layer["W1"], f"{where}.W1", "hidden")
        W1 = _array(layer["W1"], f"{where}.W1", 2, (None, d))
        hidden = W1.shape[0]
        weights.update({p + "W1": W1, p + "b1": _array(layer["b1"], f"{where}.b1", 1, (hidden,)),
                        p + "W2": _array(layer["W2"], f"{where}.W2", 2, (d, hidden)),
                        p + "b2": _array(layer["b2"], f"{where}.b2", 1, (d,))})
        layer_shapes.append(LayerShape(heads=tuple(head_shapes), hidden=hidden))
    positions = 0
    if model.get("positional") is not None:
        weights["positional"] = _array(model["positional"], "model.positional", 2, (None, d))
        positions = weights["positional"].shape[0]
    spec = ModelSpec(d=d, layers=tuple(layer_shapes), mlp=mlp, attention=attention,  # type: ignore[arg-type]
                     layernorm=layernorm, positions=positions)
    dataset_doc = doc["dataset"]
    if not isinstance(dataset_doc, list) or not dataset_doc:
        raise InputError("dataset", dataset_doc, "a non-empty list of examples")
    _limit(dataset_doc, "dataset", "examples")
    examples = []
    for i, ex in enumerate(dataset_doc):
        where = f"dataset[{i}]"
        _keys(ex, where, EXAMPLE_KEYS, EXAMPLE_KEYS)
        _limit(ex["X"], f"{where}.X", "tokens")
        X = _array(ex["X"], f"{where}.X", 2, (None, d))
        Y = _array(ex["Y"], f"{where}.Y", 2, (None, d))
        if Y.shape[0] > X.shape[0]:
            raise InputError(f"{where}.Y", f"{Y.shape[0]} rows", f"at most as many rows as X ({X.shape[0]})")
        if examples and (X.shape != examples[0].X.shape or Y.shape != examples[0].Y.shape):
            raise InputError(f"{where}", f"X {X.shape}, Y {Y.shape}",
                             f"the shapes of dataset[0] (X {examples[0].X.shape}, Y {examples[0].Y.shape})")
        if positions and X.shape[0] > positions:
            raise InputError(f"{where}.X", f"{X.shape[0]} tokens", f"at most {positions} (rows of model.positional)")
        examples.append(Example(X, Y))
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise InputError("meta", meta, "a JSON object")
    return Instance(spec, weights, tuple(examples), meta)


# ----------------------------------------------------------------------------- files

def _array_refs(doc: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """Replace numeric lists by {"$array": name} references, collecting the arrays."""
    if isinstance(doc, dict):
        return {k: (v if k == "meta" and prefix == "" else _array_refs(v, f"{prefix}{k}.", arrays))
                for k, v in doc.items()}
    if isinstance(doc, list) and doc and isinstance(doc[0], (list, float, int)) and not isinstance(doc[0], bool):
        name = prefix.rstrip(".")
        arrays[name] = np.asarray(doc, dtype=np.float64)
        return {"$array": name}
    if isinstance(doc, list):
        return [_array_refs(v, f"{prefix}{i}.", arrays) for i, v in enumerate(doc)]
    return doc


def _resolve_refs(doc: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(doc, dict):
        if set(doc) == {"$array"}:
            name = doc["$array"]
            if name not in arrays:
                raise InputError("array reference", name, "an array stored in the file")
            return np.asarray(arrays[name])
        return {k: _resolve_refs(v, arrays) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_resolve_refs(v, arrays) for v in doc]
    return doc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a whole file or nothing: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(inst: Instance, path: str | Path) -> None:
    """Write an instance as .json, .npz or .safetensors (chosen by the file name)."""
    path = Path(path)
    doc = to_dict(inst)
    if path.suffix == ".json":
        atomic_write_bytes(path, (json.dumps(doc) + "\n").encode())
        return
    arrays: dict[str, np.ndarray] = {}
    skeleton = _array_refs(doc, "", arrays)
    header = json.dumps(skeleton)
    if path.suffix == ".npz":
        import io
        buf = io.BytesIO()
        np.savez(buf, __header__=np.frombuffer(header.encode(), dtype=np.uint8), **arrays)
        atomic_write_bytes(path, buf.getvalue())
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save as st_save
        atomic_write_bytes(path, st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                         metadata={"peftaudit": header}))
    else:
        raise InputError("path", str(path), "a file name ending in .json, .npz or .safetensors")


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read an .npz after checking every member's declared dtype, shape and size (no bombs)."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if sum(info.file_size for info in infos) > MAX_BINARY_BYTES:
            raise InputError("instance", str(path), f"arrays of at most {MAX_BINARY_BYTES} bytes uncompressed")
        arrays, elements = {}, 0
        for info in infos:
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with zf.open(info) as fh:  # the header first: dtype and shape before any data
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(fh)
            if dtype.hasobject:
                raise InputError(f"array {name}", str(dtype), "a numeric array (no objects)")
            elements += int(np.prod(shape, dtype=object))
            if elements > MAX_ARRAY_ELEMENTS:
                raise InputError(f"array {name}", f"shape {shape}", f"at most {MAX_ARRAY_ELEMENTS} numbers in all")
            with zf.open(info) as fh:
                arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
        return arrays


def _safetensors_arrays(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        header = (fh.metadata() or {}).get("peftaudit", "")
        elements = 0
        for key in fh.keys():
            elements += int(np.prod(fh.get_slice(key).get_shape(), dtype=object))
            if elements > MAX_ARRAY_ELEMENTS:
                raise InputError(f"array {key}", "too many numbers", f"at most {MAX_ARRAY_ELEMENTS} in all")
        return header, {k: fh.get_tensor(k) for k in fh.keys()}


def load(path: str | Path) -> Instance:
    """Read and validate an instance file; raises InputError (nothing partly loaded)."""
    path = Path(path)
    jsonio.regular_file(path, "instance", jsonio.MAX_JSON_BYTES if path.suffix == ".json" else MAX_BINARY_BYTES)
    if path.suffix == ".json":
        return from_dict(jsonio.load(path, "instance"))
    if path.suffix not in (".npz", ".safetensors"):
        raise InputError("instance", str(path), "a file name ending in .json, .npz or .safetensors")
    try:
        if path.suffix == ".npz":
            arrays = _npz_arrays(path)
            raw = arrays.pop("__header__", np.zeros(0, np.uint8))
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise InputError("__header__", f"{raw.dtype} array of shape {raw.shape}", "uint8 bytes of JSON")
            header = bytes(raw).decode()
        else:
            header, arrays = _safetensors_arrays(path)
    except InputError:
        raise
    except Exception as exc:  # a corrupt archive is bad input, not a crash
        raise InputError("instance", str(path), f"a readable {path.suffix} instance file ({str(exc)[:120]})") from None
    skeleton = jsonio.loads(header, "instance header") if header else None
    return from_dict(_resolve_refs(skeleton, arrays) if skeleton is not None else {})
