"""The contract every PEFT method meets, and the method registry.

A method takes a frozen model (spec and batched weights) and gives trainable tensors with a
leading problem dimension B, a forward that uses them, and its trainable parameter count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Protocol

import torch
from torch import Tensor

from peftaudit.errors import InputError, UnknownNameError
from peftaudit.models.spec import ModelSpec

if TYPE_CHECKING:
    import numpy as np

    from peftaudit.models.interval import ExactAdapter

Params = Mapping[str, Tensor]


class Method(Protocol):
    name: str
    size_name: str  # what the size argument means: "length" or "rank"

    def init(self, spec: ModelSpec, batch: int, size: int, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        """Fresh random trainable tensors for `batch` problems (none uses knowledge of targets)."""

    def outputs(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor) -> Tensor:
        """Final states of the input positions, (B, E, n, d), for X of shape (B, E, n, d)."""

    def param_count(self, spec: ModelSpec, size: int) -> int:
        """Trainable parameters of one problem at this size."""

    def project(self, trainable: dict[str, Tensor], bound: float) -> None:
        """Project in place onto the norm ball of radius `bound` (methods without one raise)."""

    def exact_adapter(self, adapter: Mapping[str, "np.ndarray"]) -> "ExactAdapter":
        """How one problem's adapter enters the exact model (prompt, prefix, W + B A, W + D), for
        the rigorous replay that decides REFUTED (models/interval.py)."""


_REGISTRY: dict[str, Callable[..., Method]] = {}


def register_method(name: str) -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    """Class decorator: make a method constructible by name."""
    def wrap(factory: Callable[..., Method]) -> Callable[..., Method]:
        _REGISTRY[name] = factory
        return factory
    return wrap


def _load_builtin() -> None:
    from . import full, lora, prefix, prompt  # noqa: F401  (registration side effect)


def method_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_method(name: str, **options: object) -> Method:
    """Construct a registered method; unknown names list the known ones."""
    _load_builtin()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownNameError("method", name, list(_REGISTRY))
    try:
        return _REGISTRY[name](**options)
    except TypeError as exc:  # an option the method does not take
        raise InputError(f"{name} options", sorted(options), f"options the method takes ({exc})") from None


def check_size(method: str, size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"{method} size", size, "a positive integer")
    return size


def randn(generator: torch.Generator, *shape: int, scale: float, dtype: torch.dtype,
          device: str | torch.device) -> Tensor:
    """Seeded normal draws made on the CPU (reproducible on every device), then moved."""
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def project_rows(t: Tensor, bound: float) -> None:
    """Scale each token (last axis) of t in place to Euclidean norm at most `bound`."""
    with torch.no_grad():
        norms = t.norm(dim=-1, keepdim=True).clamp_min(bound)
        t.mul_(bound / norms)
