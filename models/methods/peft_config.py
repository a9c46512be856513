"""Any huggingface peft config as a guest: `peft:LoHaConfig`, `peft:OFTConfig`, ... with the
config's fields as options (`--option r=2 --option target_modules=v_proj`).

The guest builds the config, injects it with peft's `inject_adapter_in_model` into the module
view (models/module.py), and runs it through ModuleMethod like the named guests of
peft_guests.py. The method's size is the config's natural size field (SIZE_FIELDS: r for the
LoRA family, the block count for OFT, the block size for BOFT, n_frequency for FourierFT,
init_r for AdaLoRA); a config without one (IA3, LN tuning), or one whose size field is given as an
option (`--option r=2`), has one size. Target modules are
given by the module view's names (q_proj, k_proj, v_proj, o_proj, fc1, fc2) or the letters
q, k, v, o, 1, 2; the default is v_proj. A generic guest declares no exact model, so its
solutions stay float64 evidence (never counterexamples or witnesses). A trainable tensor the
config did not ask for (AdaLoRA's `ranknum`, which peft keeps as a Parameter) is frozen here, and
named by the conformance rule 'only the declared parameters receive gradients' if it reappears.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from peftaudit.errors import PLUGIN_FAILURES, InputError, one_line
from ..module import TransformerModule

from .module_method import ModuleMethod
from .peft_guests import MODULE_OF, import_peft

PREFIX = "peft:"
SIZE_FIELDS = {"LoraConfig": "r", "LoHaConfig": "r", "LoKrConfig": "r", "HRAConfig": "r", "VeraConfig": "r",
               "OFTConfig": "r", "BOFTConfig": "boft_block_size", "FourierFTConfig": "n_frequency",
               "AdaLoraConfig": "init_r", "IA3Config": None, "LNTuningConfig": None}
FIXED = {  # fields a config needs beside its size, so that the size alone decides the shapes
    "OFTConfig": {"oft_block_size": 0},
    "BOFTConfig": {"boft_block_num": 0},
    "AdaLoraConfig": {"total_step": 1},
}
NOT_ASKED = ("ranknum",)  # trainable tensors peft keeps that no config asks to train
NOT_INJECTABLE = {"VeraConfig": "VeRA's shared projections live on peft's tuner, which needs get_peft_model and a "
                                "transformers model; inject_adapter_in_model refuses it"}


def is_config_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def _targets(value: Any) -> list[str]:
    """target_modules as the module view's names (letters q, k, v, o, 1, 2 accepted)."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise InputError("target_modules", value, "module names (q_proj, v_proj, fc1, ...) or letters q,k,v,o,1,2")
    names = [MODULE_OF.get(x.strip(), x.strip()) for x in items]
    unknown = [n for n in names if n not in MODULE_OF.values()]
    if unknown:
        raise InputError("target_modules", unknown, f"names among {', '.join(MODULE_OF.values())}")
    return names


class PeftConfigGuest(ModuleMethod):
    """One peft config class as a method; `fields` are the config's own fields."""
    identity = False  # whether the config's own init leaves the outputs unchanged varies: not declared

    def __init__(self, config: str, **fields: Any):
        peft = import_peft()
        cls = getattr(peft, config, None)
        if not (isinstance(cls, type) and issubclass(cls, peft.PeftConfig)):
            known = sorted(n for n in dir(peft) if n.endswith("Config") and n != "PeftConfig")
            raise InputError("peft config", config, f"a peft config class ({', '.join(known)})")
        if config in NOT_INJECTABLE:
            raise InputError("peft config", config, f"a config peft can inject ({NOT_INJECTABLE[config]})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise InputError(f"{config} options", unknown, f"fields of {config} ({', '.join(sorted(known))})")
        self.name = PREFIX + config
        self.config_class = cls
        self.size_field = SIZE_FIELDS.get(config, "r" if "r" in known else None)
        if self.size_field in fields:  # the size given as an option: the method has that one size
            self.size_field = None
        self.sized = self.size_field is not None
        self.size_name = self.size_field or "none"
        self.fields = {**FIXED.get(config, {}), **fields}
        if "target_modules" in known:
            self.fields["target_modules"] = _targets(fields.get("target_modules", "v"))

    def transform(self, module: TransformerModule, size: int) -> nn.Module:
        values = {**self.fields, **({self.size_field: size} if self.sized else {})}
        if self.size_field == "init_r":
            values.setdefault("target_r", size)
        try:
            config = self.config_class(**values)
            adapted = import_peft().inject_adapter_in_model(config, module)
        except PLUGIN_FAILURES as exc:
            raise InputError(self.name, values, f"a config peft can inject here (it raised {one_line(exc)})") from None
        for key, p in adapted.named_parameters():
            if any(part in NOT_ASKED for part in key.split(".")):
                p.requires_grad_(False)
        if not any(p.numel() for p in adapted.parameters() if p.requires_grad):
            raise InputError(self.name, values, f"a config with trainable entries at d = {module.spec.d} (these "
                             "values leave none: choose a smaller size)")
        return adapted


def config_guest(name: str, **options: Any) -> PeftConfigGuest:
    """`peft:XConfig` -> the guest of peft's XConfig with `options` as its fields."""
    return PeftConfigGuest(name[len(PREFIX):], **options)
