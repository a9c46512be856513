"""huggingface peft's own methods as guests: peft-lora, peft-dora, peft-ia3.

Each is peft's `inject_adapter_in_model` on the module view (models/module.py), run by the
engine through ModuleMethod, so what is searched is peft's code, not a re-implementation.
Parameter counts are read from the wrapped module. Each declares its exact model (in the
functional weight names of models/spec.py) for the rigorous replay:

    peft-lora  W + s B A, s = lora_alpha / r as peft computes it (a binary64 number)
    peft-dora  rows of W + s B A rescaled to the magnitudes m (DoRA; peft detaches the norm from
               the gradient, so the search sees an approximate Jacobian, never a wrong value)
    peft-ia3   diag(l) W and l * b for attention maps and fc2; W diag(l) for fc1 (feedforward)
    peft-lokr  W + s kron(W_1, W_2), s = alpha / r, each factor a full matrix or the product of
               its two low-rank parts, as peft builds them from the shapes and the rank

VeRA is not a guest: peft's inject_adapter_in_model refuses it (its projections are shared
state kept on the tuner, which needs get_peft_model and a transformers model).

Options: targets (letters q, k, v, o, 1, 2 as for the built-in LoRA; IA3 defaults to v and 1)
and, for LoRA and DoRA, alpha (peft's lora_alpha; default: the rank, so s = 1). LoKr runs with
alpha = r (s = 1): its full Kronecker factors do not show r, so its exact model could not.
The extra is `pip install 'peftaudit[peft]'`; peft is imported only when a guest is built, with
huggingface's offline switches set so that importing it makes no network call.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
from torch import nn

from peftaudit.errors import InputError
from ..interval import ExactAdapter
from ..module import TransformerModule, linear_weight_name

from .base import register_method
from .lora import parse_targets
from .module_method import ModuleMethod, NoExactModel

MODULE_OF = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "1": "fc1", "2": "fc2"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}


def import_peft():
    """peft, imported with the offline switches set; a clear error when the extra is missing."""
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    try:
        import peft
    except ImportError:
        raise InputError("method", "peft-*", "the peft extra installed: pip install 'peftaudit[peft]'") from None
    return peft


def _linears(adapter: Mapping[str, np.ndarray], marker: str) -> dict[str, str]:
    """Functional weight name -> parameter key, for every adapter key containing `marker`."""
    out = {}
    for key in adapter:
        if marker in key:
            out[linear_weight_name(key.split(marker)[0])] = key
    return out


class _PeftGuest(ModuleMethod):
    default_targets = "v"
    class_on_v = ""  # its update class on W_v alone: 'value-rank' (peft-lora, LV), 'value-scale' (peft-ia3)

    @property
    def update_class(self) -> str:
        return self.class_on_v if self.targets == ("v",) else ""

    def __init__(self, targets: str | tuple[str, ...] | None = None, alpha: float | None = None):
        self.peft = import_peft()
        self.targets = parse_targets(targets if targets is not None else self.default_targets)
        if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0):
            raise InputError(f"{self.name} alpha", alpha, "a positive number")
        self.alpha = alpha

    def _modules(self, module: TransformerModule) -> list[str]:
        wanted = [MODULE_OF[t] for t in self.targets]
        found = [name for name, _ in module.named_modules() if name.rsplit(".", 1)[-1] in wanted]
        if not found:
            raise InputError(f"{self.name} targets", ",".join(self.targets), "targets naming maps this model has")
        return wanted

    def _lora(self, module: TransformerModule, size: int, dora: bool) -> nn.Module:
        config = self.peft.LoraConfig(r=size, lora_alpha=self.alpha if self.alpha is not None else size,
                                      target_modules=self._modules(module), lora_dropout=0.0, use_dora=dora)
        return self.peft.inject_adapter_in_model(config, module)

    def _low_rank(self, adapter: Mapping[str, np.ndarray]) -> dict[str, tuple]:
        """name -> (B, A, s) with s = lora_alpha / r as peft computes it (r: A's rows)."""
        out = {}
        for name, key in _linears(adapter, ".lora_A.").items():
            r = np.shape(adapter[key])[0]
            out[name] = (adapter[key.replace(".lora_A.", ".lora_B.")], adapter[key],
                         (self.alpha if self.alpha is not None else r) / r)
        return out


@register_method("peft-lora")
class PeftLoRA(_PeftGuest):
    name = "peft-lora"
    identity = True  # peft starts B at zero
    class_on_v = "value-rank"

    def transform(self, module: TransformerModule, size: int) -> nn.Module:
        return self._lora(module, size, dora=False)

    def exact(self, adapter: Mapping[str, np.ndarray]) -> ExactAdapter:
        return ExactAdapter(low_rank=self._low_rank(adapter))


@register_method("peft-dora")
class PeftDoRA(_PeftGuest):
    name = "peft-dora"
    identity = True  # B = 0 and magnitudes = the rows' norms

    def transform(self, module: TransformerModule, size: int) -> nn.Module:
        return self._lora(module, size, dora=True)

    def exact(self, adapter: Mapping[str, np.ndarray]) -> ExactAdapter:
        magnitudes = {name: adapter[key] for name, key in _linears(adapter, ".lora_magnitude_vector.").items()}
        return ExactAdapter(low_rank=self._low_rank(adapter), row_norm=magnitudes)


@register_method("peft-ia3")
class PeftIA3(_PeftGuest):
    name = "peft-ia3"
    size_name = "none"
    sized = False
    identity = True  # peft starts every scale at one
    default_targets = "v,1"
    class_on_v = "value-scale"

    def __init__(self, targets: str | tuple[str, ...] | None = None):
        super().__init__(targets)

    def transform(self, module: TransformerModule, size: int) -> nn.Module:
        wanted = self._modules(module)
        config = self.peft.IA3Config(target_modules=wanted, feedforward_modules=[m for m in wanted if m == "fc1"])
        return self.peft.inject_adapter_in_model(config, module)

    def exact(self, adapter: Mapping[str, np.ndarray]) -> ExactAdapter:
        rows, cols = {}, {}
        for name, key in _linears(adapter, ".ia3_l.").items():
            scale = np.asarray(adapter[key]).reshape(-1)
            if name.endswith(".W1"):  # feedforward: the input is scaled, W diag(l)
                cols[name] = scale
            else:                     # the output is scaled, bias included: diag(l) W, l * b
                rows[name] = scale
                if name.endswith(".W2"):
                    rows[name[:-2] + "b2"] = scale
        return ExactAdapter(row_scale=rows, col_scale=cols)


@register_method("peft-lokr")
class PeftLoKr(_PeftGuest):
    name = "peft-lokr"
    identity = True  # peft starts one Kronecker factor at zero

    def __init__(self, targets: str | tuple[str, ...] | None = None):
        super().__init__(targets)

    def transform(self, module: TransformerModule, size: int) -> nn.Module:
        config = self.peft.LoKrConfig(r=size, alpha=size, target_modules=self._modules(module))  # s = 1
        return self.peft.inject_adapter_in_model(config, module)

    def exact(self, adapter: Mapping[str, np.ndarray]) -> ExactAdapter:
        out = {}
        layers = {key.split(".lokr_")[0] for key in adapter if ".lokr_" in key}
        for layer in layers:
            def factors(which: str) -> tuple:
                full = f"{layer}.lokr_{which}.default"
                if full in adapter:
                    return (adapter[full],)
                if f"{layer}.lokr_t2.default" in adapter:
                    raise NoExactModel("peft-lokr with a CP-decomposed factor has no declared exact model")
                return adapter[f"{layer}.lokr_{which}_a.default"], adapter[f"{layer}.lokr_{which}_b.default"]
            out[linear_weight_name(layer)] = (factors("w1"), factors("w2"), 1.0)  # s = alpha / r = 1
        return ExactAdapter(kron=out)
