"""Named settings profiles (quick, ci, thorough), shared by the CLI, pytest and Hypothesis."""

from __future__ import annotations

from dataclasses import dataclass

from peftaudit.errors import UnknownNameError


@dataclass(frozen=True)
class Profile:
    name: str
    hypothesis_examples: int   # max_examples of property tests
    instances: int             # instances drawn per claim in an audit
    dims: tuple[int, ...]      # model dimensions the audit draws from
    lengths: tuple[int, ...]   # prompt lengths (and LoRA ranks) the search tries
    restarts: int              # random restarts per problem
    steps: int                 # Adam steps before the second-order polish
    polish_steps: int          # Levenberg-Marquardt steps
    planted: int               # planted instances for calibration (per method)
    chunk: int                 # instances per audit job (a claim's draw is split into jobs of this many)


PROFILES = {
    "quick": Profile("quick", hypothesis_examples=25, instances=6, dims=(2, 4, 8), lengths=(1, 2, 4),
                     restarts=4, steps=200, polish_steps=100, planted=32, chunk=8),
    "ci": Profile("ci", hypothesis_examples=60, instances=12, dims=(2, 4, 8), lengths=(1, 2, 4),
                  restarts=4, steps=400, polish_steps=100, planted=96, chunk=4),
    "thorough": Profile("thorough", hypothesis_examples=400, instances=48, dims=(2, 4, 8, 16), lengths=(1, 2, 4, 8),
                        restarts=8, steps=1500, polish_steps=200, planted=512, chunk=16),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UnknownNameError("profile", name, list(PROFILES))
    return PROFILES[name]


def register_hypothesis_profiles() -> None:
    """Register quick / ci / thorough with Hypothesis (idempotent). CI's profile is derandomized."""
    from hypothesis import HealthCheck, settings

    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    for name, prof in PROFILES.items():
        extra = {"derandomize": True, "database": None, "print_blob": True} if name == "ci" else {}
        settings.register_profile(name, max_examples=prof.hypothesis_examples, **common, **extra)
