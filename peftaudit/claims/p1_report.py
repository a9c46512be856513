"""Claim P1's report section: per layer, the identity's float64 residuals, the prefix mass and how far
the prefix moves the attention output, beside a random rank-1 LoRA on W_v of the same layer."""

from __future__ import annotations

from .base import StudyTable

HEADERS = ("instance", "method", "mask", "certificate", "layer", "head", "weight identity residual",
           "output identity residual", "prefix mass (mean / max)", "output move by the prefix",
           "output move by rank-1 LoRA on W_v")
NOTE = ("The prefix moves each output towards a convex combination of the prefix values, by the prefix mass: "
        "the direction comes from input-independent vectors (except soft prompts in encoder mode after layer 1, "
        "see P1-encoder), where LoRA changes the value map itself. Residuals are float64 figures (relative to "
        "the largest output); the identity itself is certified exactly as a polynomial identity. Prefixes and "
        "LoRA factors are random (seeded), of unit-variance entries (LoRA's scaled by 1/sqrt(d)).")


def prefix_table(study: dict) -> StudyTable:
    rows = [[str(r["instance"]), r["method"], r["mask"], r["status"], str(r["layer"]), str(r["head"]),
             f"{r['weight_residual']:.1e}", f"{r['output_residual']:.1e}",
             f"{r['prefix_mass_mean']:.3f} / {r['prefix_mass_max']:.3f}", f"{r['move_mean']:.3g}",
             f"{r['lora_move_mean']:.3g}"] for r in study["rows"]]
    return StudyTable("Per layer and head: the identity in float64, the prefix mass and the output's move:", HEADERS,
                      rows, NOTE)
