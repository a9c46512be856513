"""Shared test set-up: the Hypothesis profile (quick locally, ci under CI=true, or PEFTAUDIT_PROFILE)."""

import os

from hypothesis import settings

from peftaudit.settings import register_hypothesis_profiles

register_hypothesis_profiles()

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per xdist worker: n workers share the cores
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
settings.load_profile(os.environ.get("PEFTAUDIT_PROFILE") or ("ci" if os.environ.get("CI") else "quick"))
pytest_plugins = ["pytester"]
