"""Torch transformers (float64 reference), PEFT methods and exact evaluation."""

if __name__ != "peftaudit.models":  # one import identity: the folder is installed as peftaudit.models
    raise ImportError(f"import peftaudit.models, not {__name__}: the folder models/ is installed as peftaudit.models "
                      "(a second copy under its bare name would hold the same classes twice)")


from .spec import HeadShape, LayerShape, ModelSpec
from .transformer import forward, to_torch

__all__ = ["HeadShape", "LayerShape", "ModelSpec", "forward", "to_torch"]
