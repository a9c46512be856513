"""The folders show the rule: the checkers import nothing from the encoders, the models, numpy,
torch, z3 or mpmath; they import only the standard library and each other."""

import ast
import sys
from pathlib import Path

import peftaudit.verify.checkers as checkers

ALLOWED_STDLIB = set(sys.stdlib_module_names)
FORBIDDEN = ("numpy", "torch", "z3", "mpmath", "scipy", "peftaudit")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) for every import statement in a file, at any depth (lazy imports too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level))
    return out


def test_checker_package_imports_only_the_standard_library_and_itself():
    files = sorted(Path(checkers.__file__).parent.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        for module, level in _imports(path):
            if level:  # relative: only within the checker package (level 1), never ..encoders
                assert level == 1, f"{path.name}: from {'.' * level}{module}"
                continue
            top = module.split(".")[0]
            assert top not in FORBIDDEN and top in ALLOWED_STDLIB, f"{path.name}: import {module}"


def test_checker_runs_in_a_fresh_interpreter_without_numpy_or_torch(tmp_path):
    """Importing and using the checker loads none of the forbidden modules."""
    import subprocess

    code = ("import sys, peftaudit.verify.checkers as c; "
            "bad = [m for m in ('numpy', 'torch', 'z3', 'mpmath', 'scipy', 'peftaudit.verify.encoders', "
            "'peftaudit.models') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_layers_import_only_downwards():
    """evidence/ (the record, gathering, re-check, verdicts) is below jobs/ (plan, executors, store,
    merge), which is below audit/ (entry points, reports): nothing imports what is above it."""
    import peftaudit

    root = Path(peftaudit.__file__).parent
    above = {"evidence": ("peftaudit.jobs", "peftaudit.audit", "peftaudit.cli"),
             "jobs": ("peftaudit.audit", "peftaudit.cli")}
    for layer, forbidden in above.items():
        files = sorted((root / layer).glob("*.py"))
        assert files
        for path in files:
            for module, level in _imports(path):
                assert level <= 1, f"{layer}/{path.name}: from {'.' * level}{module}"
                assert not module.startswith(forbidden), f"{layer}/{path.name} imports {module}"


def test_the_mapped_folders_refuse_their_bare_names(tmp_path):
    """verify/, models/ and strategies/ are installed as peftaudit.*; with the checkout on the path,
    importing them under their bare names is refused, naming the one import that is meant."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    for folder in ("verify", "models", "strategies"):
        proc = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=tmp_path, capture_output=True,
                              text=True, env={**__import__("os").environ, "PYTHONPATH": str(root)})
        assert proc.returncode != 0 and f"import peftaudit.{folder}, not {folder}" in proc.stderr
