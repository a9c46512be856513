"""Shared test set-up: the Hypothesis profile (quick locally, ci under CI=true, or PEFTAUDIT_PROFILE)."""

import os

import pytest
from hypothesis import settings

from peftaudit.settings import register_hypothesis_profiles

register_hypothesis_profiles()

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per xdist worker: n workers share the cores
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
settings.load_profile(os.environ.get("PEFTAUDIT_PROFILE") or ("ci" if os.environ.get("CI") else "quick"))
pytest_plugins = ["pytester"]


@pytest.fixture
def installed_entry_point(tmp_path, monkeypatch):
    """installed_entry_point(group, "name = module:attr"): a distribution on sys.path that declares
    that entry point, as a pip-installed plugin would."""
    def install(group: str, line: str) -> None:
        dist = tmp_path / "demo_plugin-0.1.dist-info"
        dist.mkdir(exist_ok=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugin\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[{group}]\n{line}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
    return install

