"""Caps on untrusted input, in one place for the loader, the search and the CLI.

The independent checker keeps its own copy (verify/checkers/instance.py) on purpose.
"""

LIMITS = {"d": 1024, "layers": 64, "heads": 64, "examples": 100_000, "tokens": 4096, "hidden": 16384}
MAX_SIZE = LIMITS["tokens"]         # prompt lengths and LoRA ranks
MAX_RESTARTS = 4096
MAX_ARRAY_ELEMENTS = 2**26          # numbers in all arrays of one binary file together
MAX_BINARY_BYTES = 1024 * 2**20     # a .npz / .safetensors file larger than this is refused
MAX_SEED = 2**32 - 1                # every --seed: seeds numpy, torch and SeedSequence alike
MAX_THREADS = 256                   # torch threads per job (--threads)
MAX_JOBS = 256                      # --jobs (the process backend also stays within max(4, 2 x CPUs))
MAX_INSTANCES = 100_000             # --instances: per claim


def bounded_int(field: str, value: object, low: int, high: int, what: str) -> int:
    """`value` as an int in [low, high], or InputError naming the field (bools are not ints)."""
    from peftaudit.errors import InputError

    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(field, value, f"{what}, an integer in {low}..{high}")
    return value
