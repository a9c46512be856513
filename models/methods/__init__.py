"""PEFT methods: soft prompt, prefix (two styles), LoRA, IA3 and full fine-tuning."""

from .base import Method, get_method, method_names, register_method, registered_method, unregister_method

__all__ = ["Method", "get_method", "method_names", "register_method", "registered_method", "unregister_method"]
