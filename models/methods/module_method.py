"""PEFT methods given as module transforms, run by the batched engine like the built-in ones.

A researcher's method is usually a function that takes a frozen `nn.Module` and returns it
adapted, with new trainable parameters (huggingface peft's `inject_adapter_in_model`, a wrapper
around some `nn.Linear`, ...). `ModuleMethod` turns such a transform into the `Method`
contract of base.py, so search, Levenberg-Marquardt, restarts and the float64 replay work
unchanged:

- the transform runs once per (spec, size) on the module view of the reference transformer
  (models/module.py) holding seeded template weights, under a fixed torch seed (so its own
  initialisation is reproducible);
- the frozen weights are found again after the transform by identity (the same Parameter
  objects, wherever the transform moved them, e.g. `v_proj.base_layer.weight`); a transform that
  copies or replaces them is refused, as is one that leaves them trainable;
- B problems run as one program: `torch.func.vmap` over `functional_call` with each problem's
  own frozen weights and trainable tensors (the `stack_module_state` layout: a leading B axis);
- trainable tensors start at the transform's own values plus seeded normal noise, one draw per
  problem, so restarts differ and the same seed gives the same start;
- the adapted module runs in eval mode (no dropout): the forward must be a deterministic
  function of its inputs, and vmap refuses a random operation inside it.

The exact model (for the rigorous replay that decides REFUTED) is the method's to declare, by
`exact(adapter)` returning an ExactAdapter in functional weight names; a method without
one can still be searched, but its float64 solutions are never counted as counterexamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from peftaudit.errors import InputError, PeftauditError
from peftaudit.limits import MAX_SIZE
from ..interval import ExactAdapter
from ..module import TransformerModule, module_name
from ..spec import ModelSpec

from .base import Params, check_size, randn

TEMPLATE_SEED = 0  # torch seed under which every transform runs (its own init is then reproducible)


class MethodContractError(PeftauditError):
    """A user method broke a rule of the method contract; the message names the rule."""

    def __init__(self, method: str, rule: str, detail: str):
        self.method, self.rule = method, rule
        super().__init__(f"method {method!r} breaks the rule '{rule}': {detail}")


class NoExactModel(PeftauditError):
    """The method declares no exact model, so its solutions cannot be replayed rigorously."""


@dataclass(frozen=True)
class ExactContext:
    """What `exact(adapter, context)` may need beside the adapter's own tensors."""
    spec: ModelSpec
    size: int
    weight_shapes: dict[str, tuple[int, ...]]   # functional weight name -> shape (e.g. layers.0.heads.0.Wv)
    constants: dict[str, np.ndarray]            # the transform's frozen tensors (buffers, frozen params) by module name
    base: dict[str, str]                        # functional weight name -> where the transform moved it


def _takes_context(exact: Callable) -> bool:
    """`exact` takes (adapter, context), not (adapter) alone (the older form, still accepted)."""
    import inspect
    try:
        params = [p for p in inspect.signature(exact).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


@dataclass(frozen=True)
class Prepared:
    """One transformed module and where its tensors come from."""
    module: nn.Module
    base: dict[str, str]             # functional weight name -> module parameter name
    trainable: dict[str, Tensor]     # module parameter name -> the transform's initial value
    constants: dict[str, Tensor]     # frozen tensors the transform added (buffers, frozen params)
    refusal: str = ""                # why torch.func refuses the module ("": vmap and jvp run it)


def template_weights(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Seeded random weights of this spec (scale 1/sqrt(fan in)): a transform that reads the
    weights (DoRA's magnitudes) sees no zero rows."""
    rng = np.random.default_rng(TEMPLATE_SEED)
    return {name: rng.normal(size=shape) / math.sqrt(shape[-1]) for name, shape in spec.weight_shapes()}


class ModuleMethod:
    """The Method contract for a transform `module, size -> adapted module`.

    Subclass and set `name`, `size_name` and `transform` (or use `module_method`). Optional:
    `exact(adapter)` (the exact model of one problem's tensors), `identity` (True when the transform's own init
    leaves the outputs unchanged, as LoRA's B = 0 does), `sized` (False: the method has no size
    and takes only size 1), `start_scale` (standard deviation of the start noise, per tensor,
    times 1/sqrt(its last dimension)), `kind` ("input-space" for methods that only prepend
    trainable tokens, "weight-space" otherwise; method cards use it), `declared_params(spec, size)`
    (a count the author claims, checked against the trainable tensors by the conformance tests).
    """

    name = "module-method"
    size_name = "rank"
    sized = True
    identity = False
    start_scale = 1.0
    kind = "weight-space"

    def transform(self, module: TransformerModule, size: int) -> nn.Module:
        raise NotImplementedError

    def exact(self, adapter: Mapping[str, np.ndarray], context: "ExactContext | None" = None) -> ExactAdapter | None:
        """The exact model of one problem's tensors (module parameter names -> arrays), in the
        functional weight names of models/spec.py; None: no exact model declared."""
        return None

    # -- the Method contract ------------------------------------------------------------------
    def init(self, spec: ModelSpec, batch: int, size: int, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        prepared = self.prepare(spec, size)
        out = {}
        for key, t0 in prepared.trainable.items():
            scale = self.start_scale * (t0.shape[-1] if t0.dim() else 1) ** -0.5
            noise = randn(generator, batch, *t0.shape, scale=scale, dtype=torch.float64, device="cpu")  # (B,...)
            out[key] = (t0[None] + noise).to(device=device, dtype=dtype)
        return out

    def outputs(self, spec: ModelSpec, params: Params, trainable: Params, X: Tensor) -> Tensor:
        """Final states of the input positions, (B, E, n, d): vmap over problems of the module."""
        prepared = self.prepare(spec, self.size_of(spec, trainable))
        base = {prepared.base[name]: t for name, t in params.items() if name in prepared.base}  # (B,...)
        constants = {k: v.to(device=X.device, dtype=X.dtype) if v.is_floating_point() else v.to(X.device)
                     for k, v in prepared.constants.items()}
        missing = sorted(set(prepared.base) - set(params))
        if missing:
            raise InputError("frozen weights", missing, "every weight of the spec")

        def one(base_b: dict, train_b: dict, x: Tensor) -> Tensor:
            return functional_call(prepared.module, (base_b, train_b, constants), (x,))  # (E,n,d)

        if prepared.refusal:  # the correct slower path: one problem at a time, plain autograd
            return torch.stack([one({k: v[b] for k, v in base.items()}, {k: v[b] for k, v in trainable.items()}, X[b])
                                for b in range(X.shape[0])])                          # (B,E,n,d)
        return vmap(one)(base, dict(trainable), X)                                      # (B,E,n,d)

    def refusal(self, spec: ModelSpec, size: int) -> str:
        """Why torch.func's vmap or jvp refuses this method's module ("" when they run it): the
        search then runs it problem by problem, with Jacobians by plain autograd."""
        return self.prepare(spec, size).refusal

    def param_count(self, spec: ModelSpec, size: int) -> int:
        return sum(t.numel() for t in self.prepare(spec, size).trainable.values())

    def project(self, trainable: dict[str, Tensor], bound: float) -> None:
        raise InputError("norm bound", bound, f"no norm bound for {self.name} (it applies to prompts and prefixes)")

    def identity_adapter(self, spec: ModelSpec, size: int) -> tuple[dict, dict[str, Tensor]] | None:
        """(frozen weights, one problem's tensors) that leave the outputs unchanged: the transform's
        own init on the weights it saw, where the method declares `identity`."""
        if not self.identity:
            return None
        return template_weights(spec), {k: t[None] for k, t in self.prepare(spec, size).trainable.items()}

    def exact_adapter(self, adapter: Mapping[str, np.ndarray], spec: ModelSpec | None = None) -> ExactAdapter:
        """The declared exact model of one problem's tensors. Given the instance's spec, `exact`
        is called on this object's prepared module for that spec and size (the one conformance and
        the search used) and may take a second argument, the ExactContext (shapes, frozen tensors)."""
        if spec is not None and _takes_context(self.exact):
            size = self.size_of(spec, {k: torch.as_tensor(np.asarray(v))[None] for k, v in adapter.items()})
            prepared = self.prepare(spec, size)
            context = ExactContext(spec, size, dict(spec.weight_shapes()),
                                   {k: v.detach().cpu().numpy() for k, v in prepared.constants.items()},
                                   dict(prepared.base))
            exact = self.exact(adapter, context)
        else:
            exact = self.exact(adapter)
        if exact is None:
            raise NoExactModel(f"method {self.name!r} declares no exact model; its solutions are float64 only")
        return exact

    # -- preparation --------------------------------------------------------------------------
    def prepare(self, spec: ModelSpec, size: int) -> Prepared:
        """The transformed module for this spec and size (cached)."""
        if not self.sized and size != 1:
            raise InputError(f"{self.name} size", size, "1 (this method has no size)")
        check_size(self.name, size)
        cache = self.__dict__.setdefault("_prepared", {})
        if (spec, size) not in cache:
            cache[(spec, size)] = self._prepare(spec, size)
        return cache[(spec, size)]

    def _prepare(self, spec: ModelSpec, size: int) -> Prepared:
        module = TransformerModule(spec, template_weights(spec))
        by_id = {id(p): name for name, p in
                 ((w, module.get_parameter(module_name(w))) for w in [*spec.weight_names(), "positional"]
                  if w != "positional" or spec.positions)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TEMPLATE_SEED)
            adapted = self.transform(module, size)
        if not isinstance(adapted, nn.Module):
            raise MethodContractError(self.name, "the transform returns an nn.Module",
                                      f"it returned {type(adapted).__name__}")
        adapted.eval()  # no dropout: the forward must be a function of its inputs (vmap refuses randomness)
        base, trainable, constants = {}, {}, {}
        for key, p in adapted.named_parameters(remove_duplicate=False):
            if id(p) in by_id:
                if p.requires_grad:
                    raise MethodContractError(self.name, "only the declared parameters receive gradients",
                                              f"{key} (the model's {by_id[id(p)]}) is trainable after the transform")
                base[by_id[id(p)]] = key
            elif p.requires_grad:
                trainable[key] = p.detach().to(torch.float64).clone()
            else:
                constants[key] = p.detach()
        for key, b in adapted.named_buffers(remove_duplicate=False):
            constants[key] = b.detach()
        lost = sorted(set(by_id.values()) - set(base))
        if lost:
            raise MethodContractError(self.name, "the transform wraps the frozen weights, never copies them",
                                      f"{lost} are no longer parameters of the adapted module")
        if not trainable:
            raise MethodContractError(self.name, "the transform adds trainable parameters",
                                      "the adapted module has none")
        prepared = Prepared(adapted, base, trainable, constants)
        refusal = _torch_func_refusal(prepared, spec)
        if refusal and not self.__dict__.get("_refusal_said"):  # said once per method object
            from peftaudit.log import log_stderr
            self.__dict__["_refusal_said"] = True
            log_stderr(f"{self.name}: torch.func refuses its module ({refusal}); it runs problem by problem, with "
                       "Jacobians by plain autograd (correct, slower)")
        return Prepared(adapted, base, trainable, constants, refusal)

    def size_of(self, spec: ModelSpec, trainable: Params) -> int:
        """The size whose prepared module has these trainable shapes (leading B axis dropped)."""
        shapes = {k: tuple(v.shape[1:]) for k, v in trainable.items()}
        cache = self.__dict__.setdefault("_prepared", {})
        prepared = [size for (s, size) in cache if s == spec]
        mentioned = sorted({1, *(n for shape in shapes.values() for n in shape)}) if self.sized else [1]
        for size in prepared + [s for s in mentioned if s not in prepared]:  # prepared sizes first
            if size <= MAX_SIZE and {k: tuple(v.shape) for k, v in self.prepare(spec, size).trainable.items()} == shapes:
                return size
        raise InputError(f"{self.name} adapter", sorted(shapes), "tensors of the shapes this method makes")


def _torch_func_refusal(prepared: Prepared, spec: ModelSpec) -> str:
    """One probe of what the search asks of torch.func (vmap over problems, a jvp inside): ""
    when it runs, else the refusal's first sentence (it names the torch operation)."""
    weights = {n: torch.as_tensor(w)[None] for n, w in template_weights(spec).items() if n in prepared.base}
    base = {prepared.base[n]: w for n, w in weights.items()}                             # (1,...)
    trainable = {k: t[None] for k, t in prepared.trainable.items()}                       # (1,...)
    X = torch.zeros(1, 1, 2, spec.d, dtype=torch.float64)                                # (B,E,n,d)

    def one(b: dict, t: dict, x: Tensor) -> Tensor:
        return functional_call(prepared.module, (b, t, prepared.constants), (x,))

    try:
        torch.func.jvp(lambda train: vmap(one)(base, train, X), (trainable,),
                       ({k: torch.ones_like(t) for k, t in trainable.items()},))
    except Exception as exc:  # noqa: BLE001 - whatever torch.func raises; the plain forward decides below
        try:  # a forward that fails without torch.func too is the method's own error, not a refusal
            one({k: v[0] for k, v in base.items()}, {k: t[0] for k, t in trainable.items()}, X[0])
        except Exception:  # noqa: BLE001 - it surfaces where the method is used, as that method's error
            return ""
        return str(exc).split(". ")[0].strip()[:200]
    return ""


def module_method(name: str, transform: Callable[[TransformerModule, int], nn.Module], *,
                  size_name: str = "rank", sized: bool = True, identity: bool = False,
                  kind: str = "weight-space",
                  exact: Callable[..., ExactAdapter | None] | None = None) -> type:
    """A ModuleMethod class from a plain transform, e.g.
    `module_method("my-lora", lambda m, r: inject_adapter_in_model(LoraConfig(r=r, ...), m))`."""
    attrs = {"name": name, "size_name": size_name, "sized": sized, "identity": identity, "kind": kind,
             "transform": lambda self, module, size: transform(module, size)}
    if exact is not None:
        attrs["exact"] = (lambda self, adapter, context: exact(adapter, context)) if _takes_context(exact) \
            else (lambda self, adapter: exact(adapter))
    return type(f"ModuleMethod[{name}]", (ModuleMethod,), attrs)
