"""Caps on untrusted input, in one place for the loader, the search and the CLI.

The independent checker keeps its own copy (verify/checkers/instance.py) on purpose.
"""

LIMITS = {"d": 1024, "layers": 64, "heads": 64, "examples": 100_000, "tokens": 4096, "hidden": 16384}
MAX_SIZE = LIMITS["tokens"]         # prompt lengths and LoRA ranks
MAX_RESTARTS = 4096
MAX_ARRAY_ELEMENTS = 2**26          # numbers in all arrays of one binary file together
MAX_BINARY_BYTES = 1024 * 2**20     # a .npz / .safetensors file larger than this is refused
