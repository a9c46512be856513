"""Shared test set-up: the Hypothesis profile (quick locally, ci under CI=true, or PEFTAUDIT_PROFILE)."""

import os

from hypothesis import settings

from peftaudit.settings import register_hypothesis_profiles

register_hypothesis_profiles()
settings.load_profile(os.environ.get("PEFTAUDIT_PROFILE") or ("ci" if os.environ.get("CI") else "quick"))
pytest_plugins = ["pytester"]
