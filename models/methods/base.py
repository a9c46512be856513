"""The contract every PEFT method meets, and the method registry.

A method takes a frozen model (spec and batched weights) and gives trainable tensors with a
leading problem dimension B, a forward that uses them, and its trainable parameter count.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Protocol

import torch
from torch import Tensor

from peftaudit.errors import PLUGIN_FAILURES, InputError, UnknownNameError, one_line
from ..spec import ModelSpec
from .abilities import ability

if TYPE_CHECKING:
    import numpy as np

    from ..interval import ExactAdapter

Params = Mapping[str, Tensor]


class Method(Protocol):
    name: str
    size_name: str  # what the size argument means: "length" or "rank"

    def init(self, spec: ModelSpec, batch: int, size: int, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        """Fresh random trainable tensors for `batch` problems (none uses knowledge of targets)."""

    def outputs(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor) -> Tensor:
        """Final states of the input positions, (B, E, n, d), for X of shape (B, E, n, d). A method
        may also take `keep=k` and return only the last k positions (B, E, k, d): the search then
        asks for the target positions only (the built-in methods do; it is optional). A method may
        also offer `outputs_and_jacobian(spec, params, trainable, X, keep=k)` -> (the outputs
        (B, E, k, d), their Jacobian (B, E*k*d, P) in the order of the trainable tensors' entries):
        Levenberg-Marquardt then takes its Jacobians from it instead of torch.func (the built-in
        prompt, prefix and LoRA methods do, through models/tangents.py)."""

    def param_count(self, spec: ModelSpec, size: int) -> int:
        """Trainable parameters of one problem at this size."""

    def project(self, trainable: dict[str, Tensor], bound: float) -> None:
        """Project in place onto the norm ball of radius `bound` (methods without one raise)."""

    def exact_adapter(self, adapter: Mapping[str, "np.ndarray"]) -> "ExactAdapter":
        """How one problem's adapter enters the exact model (prompt, prefix, W + B A, W + D), for
        the rigorous replay that decides REFUTED (models/interval.py)."""


_REGISTRY: dict[str, Callable[..., Method]] = {}
ENTRY_POINT_GROUP = "peftaudit.methods"
CONTRACT = ("name", "size_name", "init", "outputs", "param_count", "project", "exact_adapter")
_loaded = False


def register_method(name: str) -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    """Class decorator: make a method constructible by name."""
    def wrap(factory: Callable[..., Method]) -> Callable[..., Method]:
        _REGISTRY[name] = factory
        return factory
    return wrap


def _load_builtin() -> None:
    """The built-in methods, then every entry point of the group peftaudit.methods (loaded only
    when constructed, so a broken plugin does not hide the others)."""
    global _loaded
    from . import full, ia3, lora, peft_guests, prefix, prompt  # noqa: F401  (registration side effect)
    if _loaded:
        return
    _loaded = True
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _REGISTRY.setdefault(ep.name, lambda _ep=ep, **options: _ep.load()(**options))


def _import_spec(spec: str) -> Callable[..., Method]:
    """The object named by 'package.module:Name' (a method class or factory), registered under
    that string so that later calls (and other processes) find it again."""
    from importlib import import_module

    module_name, _, attr = spec.partition(":")
    try:
        obj = import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except PLUGIN_FAILURES as exc:  # a missing module, a syntax error, a module that raises or exits
        raise InputError("method", spec, f"an importable 'package.module:Name' ({one_line(exc)})") from None
    if not callable(obj):
        raise InputError("method", spec, "a method class or a factory returning a method")
    _REGISTRY[spec] = obj
    return obj


def unregister_method(name: str) -> None:
    """Remove a method registered by name (a no-op when it is not)."""
    _REGISTRY.pop(name, None)


@contextmanager
def registered_method(name: str, factory: Callable[..., Method]) -> Iterator[None]:
    """Register `factory` under `name` for the body of a `with` (tests, notebooks), then restore
    whatever was registered there before."""
    _load_builtin()
    before = _REGISTRY.get(name)
    _REGISTRY[name] = factory
    try:
        yield
    finally:
        if before is None:
            _REGISTRY.pop(name, None)
        else:
            _REGISTRY[name] = before


def method_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_method(name: str, **options: object) -> Method:
    """Construct a method: a registered name, an entry point of peftaudit.methods, or
    'package.module:Name'. Unknown names list the known ones; an object that lacks part of the
    contract is refused with the missing parts named."""
    _load_builtin()
    from .peft_config import config_guest, is_config_name
    if is_config_name(name):  # any peft config: peft:LoHaConfig with the config's fields as options
        return config_guest(name, **options)
    if isinstance(name, str) and name not in _REGISTRY and ":" in name:
        _import_spec(name)
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownNameError("method", name, list(_REGISTRY) + ["package.module:Name"])
    try:
        method = _REGISTRY[name](**options)
    except TypeError as exc:  # an option the method does not take
        raise InputError(f"{name} options", sorted(options), f"options the method takes ({exc})") from None
    except InputError:
        raise
    except PLUGIN_FAILURES as exc:  # a plugin's constructor (or its entry point's import) failed
        raise InputError("method", name, f"a method that can be constructed (it raised {one_line(exc)})") from None
    missing = [attr for attr in CONTRACT if not hasattr(method, attr)]
    if missing:
        raise InputError("method", name, f"an object with {', '.join(CONTRACT)} (it lacks {', '.join(missing)})")
    return method


def one_size(method: object) -> bool:
    """The method has a single size (full fine-tuning, IA3): it runs at size 1 only."""
    return ability(method, "sized") is False


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
