"""Torch transformers (float64 reference), PEFT methods and exact evaluation."""

from .spec import HeadShape, LayerShape, ModelSpec
from .transformer import forward, to_torch

__all__ = ["HeadShape", "LayerShape", "ModelSpec", "forward", "to_torch"]
