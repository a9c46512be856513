"""The instance embedded in a certificate, validated as strictly as the loader does, in Fractions.

Any mismatch (unknown key, wrong shape, a 'p/q' string where the file needs a number, a missing
field) is MalformedCertificate naming the field: never truncated, never a traceback. The
instance's digest is the SHA-256 of its canonical encoding (docs/design.md "Certificates"): the JSON of
the instance with every default written out, keys sorted, no spaces, every array number as
the shortest round-trip decimal of its binary64 value. The loader computes the same digest
(peftaudit.instance.digest); a test holds the two to one corpus.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .exact import Mat, Vec, mul
from .reading import MalformedCertificate, binary64, shorten

FORMAT = "peftaudit.instance/1"
TOP = {"format", "model", "dataset", "meta"}
MODEL = {"d", "mlp", "attention", "positional", "layernorm", "layers"}
LAYER = {"heads", "W1", "b1", "W2", "b2"}
HEAD = {"Wq", "Wk", "Wv", "Wo"}
LIMITS = {"d": 1024, "layers": 64, "heads": 64, "examples": 100_000, "tokens": 4096, "hidden": 16384}


@dataclass(frozen=True)
class Head:
    Wq: Mat
    Wk: Mat
    Wv: Mat
    Wo: Mat | None

    @property
    def V(self) -> Mat:
        """The head's value-to-output map Wo Wv (or Wv)."""
        return mul(self.Wo, self.Wv) if self.Wo is not None else self.Wv


@dataclass(frozen=True)
class Layer:
    heads: tuple[Head, ...]
    W1: Mat
    b1: Vec
    W2: Mat
    b2: Vec


@dataclass(frozen=True)
class Instance:
    d: int
    mlp: str
    attention: str
    layernorm: bool
    positional: Mat | None
    layers: tuple[Layer, ...]
    dataset: tuple[tuple[Mat, Mat], ...]   # (X, Y) per example, raw (not positionally encoded)
    meta: dict
    digest: str

    def encoded(self, X: Mat) -> Mat:
        """Input tokens plus the positional encoding (prompt tokens are never encoded)."""
        if self.positional is None:
            return X
        return [[a + b for a, b in zip(x, e)] for x, e in zip(X, self.positional)]


def _keys(obj: Any, where: str, allowed: set[str], required: set[str]) -> dict:
    if not isinstance(obj, dict):
        raise MalformedCertificate(f"{where}: expected a JSON object")
    extra = sorted(set(obj) - allowed)
    if extra:
        raise MalformedCertificate(f"{where}.{shorten(extra[0])}: no such key")
    missing = sorted(required - set(obj))
    if missing:
        raise MalformedCertificate(f"{where}.{missing[0]}: missing")
    return obj


def _matrix(x: Any, where: str, rows: int | None, cols: int) -> Mat:
    if not isinstance(x, list) or not x or (rows is not None and len(x) != rows):
        raise MalformedCertificate(f"{where}: expected a non-empty list of {rows if rows else 'some'} rows")
    return [_vector(row, f"{where}[{i}]", cols) for i, row in enumerate(x)]


def _vector(x: Any, where: str, n: int) -> Vec:
    if not isinstance(x, list) or len(x) != n:
        raise MalformedCertificate(f"{where}: expected a list of {n} numbers")
    return [binary64(v, f"{where}[{i}]") for i, v in enumerate(x)]


def _count(x: Any, where: str, limit: str) -> int:
    """The length of a non-empty list within the checker's limit; MalformedCertificate otherwise."""
    n = len(x) if isinstance(x, list) else 0
    if n == 0:
        raise MalformedCertificate(f"{where}: expected a non-empty list")
    if n > LIMITS[limit]:
        raise MalformedCertificate(f"{where}: {n} entries exceed the checker's limit {LIMITS[limit]}")
    return n


def _plain(x: Any, floats: bool = True) -> Any:
    """Parsed JSON back to plain Python values: Fractions of binary64 values become floats, and
    so do integers in arrays (`floats`); meta keeps its integers."""
    if isinstance(x, Fraction) or (floats and isinstance(x, int) and not isinstance(x, bool)):
        return float(x)
    if isinstance(x, list):
        return [_plain(v, floats) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v, floats) for k, v in x.items()}
    return x


def canonical_digest(canonical: dict) -> str:
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_instance(doc: Any) -> Instance:
    """Validate the embedded instance and read it in exact arithmetic."""
    _keys(doc, "instance", TOP, {"format", "model", "dataset"})
    if doc["format"] != FORMAT:
        raise MalformedCertificate(f"instance.format: expected {FORMAT!r}")
    model = _keys(doc["model"], "instance.model", MODEL, {"d", "layers"})
    d = model["d"]
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= LIMITS["d"]:
        raise MalformedCertificate(f"instance.model.d: expected an integer in 1..{LIMITS['d']}")
    mlp, attention = model.get("mlp", "residual"), model.get("attention", "encoder")
    if mlp not in ("residual", "plain") or attention not in ("encoder", "causal"):
        raise MalformedCertificate("instance.model: mlp must be 'residual' or 'plain', attention 'encoder' or 'causal'")
    layernorm = model.get("layernorm", False)
    if not isinstance(layernorm, bool):
        raise MalformedCertificate("instance.model.layernorm: expected true or false")
    layers_doc = model["layers"]
    _count(layers_doc, "instance.model.layers", "layers")
    layers = []
    for li, layer in enumerate(layers_doc):
        where = f"instance.model.layers[{li}]"
        _keys(layer, where, LAYER, LAYER)
        _count(layer["heads"], f"{where}.heads", "heads")
        heads = []
        for hi, head in enumerate(layer["heads"]):
            hw = f"{where}.heads[{hi}]"
            _keys(head, hw, HEAD, {"Wq", "Wk", "Wv"})
            Wq = _matrix(head["Wq"], f"{hw}.Wq", None, d)
            Wk = _matrix(head["Wk"], f"{hw}.Wk", len(Wq), d)
            Wv = _matrix(head["Wv"], f"{hw}.Wv", None, d)
            Wo = _matrix(head["Wo"], f"{hw}.Wo", d, len(Wv)) if "Wo" in head else None
            if Wo is None and (len(layer["heads"]) > 1 or len(Wv) != d):
                raise MalformedCertificate(f"{hw}.Wo: needed (several heads, or Wv not d x d)")
            heads.append(Head(Wq, Wk, Wv, Wo))
        W1 = _matrix(layer["W1"], f"{where}.W1", None, d)
        if len(W1) > LIMITS["hidden"]:
            raise MalformedCertificate(f"{where}.W1: more than {LIMITS['hidden']} hidden units")
        layers.append(Layer(tuple(heads), W1, _vector(layer["b1"], f"{where}.b1", len(W1)),
                            _matrix(layer["W2"], f"{where}.W2", d, len(W1)), _vector(layer["b2"], f"{where}.b2", d)))
    positional = None
    if model.get("positional") is not None:
        positional = _matrix(model["positional"], "instance.model.positional", None, d)
    dataset_doc = doc["dataset"]
    _count(dataset_doc, "instance.dataset", "examples")
    dataset = []
    for i, ex in enumerate(dataset_doc):
        where = f"instance.dataset[{i}]"
        _keys(ex, where, {"X", "Y"}, {"X", "Y"})
        _count(ex["X"], f"{where}.X", "tokens")
        X, Y = _matrix(ex["X"], f"{where}.X", None, d), _matrix(ex["Y"], f"{where}.Y", None, d)
        if len(Y) > len(X) or (dataset and (len(X), len(Y)) != (len(dataset[0][0]), len(dataset[0][1]))):
            raise MalformedCertificate(f"{where}: shapes differ from dataset[0] or more targets than tokens")
        if positional is not None and len(X) > len(positional):
            raise MalformedCertificate(f"{where}.X: more tokens than rows of model.positional")
        dataset.append((X, Y))
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise MalformedCertificate("instance.meta: expected a JSON object")
    canonical = {"format": FORMAT, "dataset": [{"X": _plain(ex["X"]), "Y": _plain(ex["Y"])} for ex in dataset_doc],
                 "meta": _plain(meta, floats=False),
                 "model": {"d": d, "mlp": mlp, "attention": attention, "layernorm": layernorm,
                           "positional": _plain(model.get("positional")),
                           "layers": [{"heads": [{k: _plain(v) for k, v in h.items()} for h in layer["heads"]],
                                       **{k: _plain(layer[k]) for k in ("W1", "b1", "W2", "b2")}}
                                      for layer in layers_doc]}}
    try:
        digest = canonical_digest(canonical)
    except (TypeError, ValueError) as exc:
        raise MalformedCertificate(f"instance.meta: not plain JSON ({shorten(str(exc), 80)})") from None
    return Instance(d, mlp, attention, layernorm, positional, tuple(layers), tuple(dataset), meta, digest)
