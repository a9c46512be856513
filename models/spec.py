"""Static structure of a transformer: dimensions and options, apart from the arrays.

Weights live in a flat mapping from names to arrays, so that LoRA, full fine-tuning and the
search address matrices by name:

    layers.{l}.heads.{h}.Wq   (k, d)     query map, acts as Wq @ x
    layers.{l}.heads.{h}.Wk   (k, d)     key map
    layers.{l}.heads.{h}.Wv   (v, d)     value map
    layers.{l}.heads.{h}.Wo   (d, v)     output map (absent for a single head with v == d)
    layers.{l}.W1 (h, d)  layers.{l}.b1 (h,)  layers.{l}.W2 (d, h)  layers.{l}.b2 (d,)
    positional                (n_pos, d) added to the input tokens by their position
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

MLP_KINDS = ("residual", "plain")
ATTENTION_KINDS = ("encoder", "causal")
HEAD_MATRICES = ("Wq", "Wk", "Wv", "Wo")
MLP_MATRICES = ("W1", "b1", "W2", "b2")


@dataclass(frozen=True)
class HeadShape:
    k: int  # query/key dimension
    v: int  # value dimension
    has_wo: bool


@dataclass(frozen=True)
class LayerShape:
    heads: tuple[HeadShape, ...]
    hidden: int  # MLP width


@dataclass(frozen=True)
class ModelSpec:
    d: int
    layers: tuple[LayerShape, ...]
    mlp: Literal["residual", "plain"] = "residual"
    attention: Literal["encoder", "causal"] = "encoder"
    layernorm: bool = False
    positions: int = 0  # rows of the positional encoding; 0 means none

    def weight_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """Every weight name with its shape, in a fixed order."""
        d = self.d
        for li, layer in enumerate(self.layers):
            for hi, head in enumerate(layer.heads):
                p = f"layers.{li}.heads.{hi}."
                yield p + "Wq", (head.k, d)
                yield p + "Wk", (head.k, d)
                yield p + "Wv", (head.v, d)
                if head.has_wo:
                    yield p + "Wo", (d, head.v)
            p = f"layers.{li}."
            yield p + "W1", (layer.hidden, d)
            yield p + "b1", (layer.hidden,)
            yield p + "W2", (d, layer.hidden)
            yield p + "b2", (d,)
        if self.positions:
            yield "positional", (self.positions, d)

    def weight_names(self) -> list[str]:
        return [name for name, _ in self.weight_shapes()]

    @property
    def single_head_single_layer(self) -> bool:
        return len(self.layers) == 1 and len(self.layers[0].heads) == 1


def simple_spec(
    d: int,
    *,
    layers: int = 1,
    heads: int = 1,
    hidden: int | None = None,
    mlp: str = "residual",
    attention: str = "encoder",
    layernorm: bool = False,
    positions: int = 0,
) -> ModelSpec:
    """A spec with square heads (k = v = d) and an output map only when heads > 1."""
    head = HeadShape(k=d, v=d, has_wo=heads > 1)
    layer = LayerShape(heads=(head,) * heads, hidden=hidden or 2 * d)
    return ModelSpec(d=d, layers=(layer,) * layers, mlp=mlp, attention=attention,
                     layernorm=layernorm, positions=positions)  # type: ignore[arg-type]
