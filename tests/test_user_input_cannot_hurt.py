"""Nothing the user gives can hurt (issue 23): methods, claims plugins, stores, plans, options and
files that fail end as their own ERROR or as a usage error with one line, bounded, with the
report written, no traceback, and no file of the user's touched."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from peftaudit.audit import run_audit
from peftaudit.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _fixtures_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]))


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# ------------------------------------------------------------------ methods that fail

@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_exiting_and_worker_only_failing_methods_are_their_own_errors(tmp_path, capsys):
    """On the process backend: a method calling sys.exit(5) and one that cannot be built in a
    worker are ERRORs of those methods (in the claim, on the card, as a failed card job); the
    report is written and the audit exits 3, never 5 or with a traceback."""
    out = tmp_path / "r"
    code, stdout, _ = _run(capsys, "audit", "--claims", "L1", "--no-calibration", "--jobs", "2", "--backend", "process",
                           "--methods", "prompt,user_methods:Exiting,user_methods:FailsInWorkers",
                           "--card-families", "l1", "--out", out)
    assert code == 3
    report = json.loads((out / "report.json").read_text())
    claim = report["claims"][0]
    assert claim["verdict"] == "CERTIFIED", claim["reason"]
    assert "SystemExit" in claim["method_errors"]["user_methods:Exiting@1"]
    assert "only fails in a worker" in claim["method_errors"]["user_methods:FailsInWorkers"]
    assert "SystemExit" in report["cards"]["user_methods:Exiting"]["card"]["errors"]["user_methods:Exiting"]
    failed, = report["job_errors"]
    assert failed["job"] == "card:user_methods:FailsInWorkers" and (out / failed["log"]).is_file()
    assert "ERROR job card:user_methods:FailsInWorkers" in stdout


def test_a_nan_method_is_an_error_on_its_card_not_a_capacity_figure():
    from peftaudit.evidence import search_config
    from peftaudit.card import run_battery
    from peftaudit.settings import get_profile

    profile = get_profile("quick")
    card = run_battery("user_methods:NaNOutputs", {}, profile, 0, search_config(profile, 0, "cpu"), families=["l1"])
    assert "non-finite" in card["errors"]["user_methods:NaNOutputs"]
    assert not [r for r in card["rows"] if r["method"] == "user_methods:NaNOutputs"]


def test_a_method_whose_import_exits_is_a_usage_error(tmp_path, capsys):
    code, _, err = _run(capsys, "audit", "--claims", "L1", "--methods", "sys:exit", "--out", tmp_path / "r")
    assert code == 2 and "sys.exit" in err and not (tmp_path / "r").exists()


def test_z1_is_not_applicable_to_added_methods():
    result = run_audit(["Z1"], methods=["prompt", "lora"], calibration=False, cards=False, progress=False, quiet=True)
    claim = result.report["claims"][0]
    assert claim["verdict"] == "CERTIFIED" and not claim["method_errors"]
    assert set(claim["not_applicable"]) == {"prompt", "lora"} and "LinearInstance" in claim["not_applicable"]["lora"]
    assert not result.errors


def test_the_standalone_card_and_the_audits_card_agree(tmp_path, capsys):
    code, stdout, _ = _run(capsys, "card", "user_methods:GatedValues", "--families", "l1", "--json",
                           "--out", tmp_path / "card")
    assert code == 0
    alone = json.loads(stdout)
    result = run_audit(["Z1-relu"], methods=["user_methods:GatedValues"], card_families=["l1"], calibration=False,
                       progress=False, quiet=True)
    in_audit = result.report["cards"]["user_methods:GatedValues"]["card"]
    assert alone["rows"] == in_audit["rows"] and alone["rows"]
    assert alone["capacity"] == in_audit["capacity"]


# ------------------------------------------------------------------ claims that fail

def _claim_whose_draw_raises():
    from peftaudit.claims import Claim

    def draw(profile, seed):
        raise RuntimeError("the user's strategy is broken\nwith a second line")
    return Claim(id="user-broken", title="t", source="s", formalization="f", kind="cannot", draw=draw,
                 hypotheses=lambda inst: None, falsifiers=())


def test_a_claims_exception_is_one_line_with_its_traceback_in_a_log(tmp_path):
    result = run_audit([_claim_whose_draw_raises()], out=tmp_path / "r", calibration=False, progress=False, quiet=True)
    claim = result.report["claims"][0]
    assert claim["verdict"] == "ERROR" and "Traceback" not in claim["reason"]
    assert "RuntimeError: the user's strategy is broken" in claim["reason"] and "second line" not in claim["reason"]
    assert "Traceback" in (tmp_path / "r" / claim["log"]).read_text()
    assert "Traceback" not in (tmp_path / "r" / "report.md").read_text()


def test_a_failed_calibration_job_is_that_jobs_error_and_the_report_is_written(tmp_path, monkeypatch):
    import peftaudit.search.calibrate as calibrate

    def broken(*args, **kwargs):
        raise RuntimeError("calibration broke")
    monkeypatch.setattr(calibrate, "calibrate", broken)
    result = run_audit(["Z1-relu"], out=tmp_path / "r", progress=False, quiet=True)
    assert result.verdicts == {"Z1-relu": "CERTIFIED"}
    assert {e["job"] for e in result.report["job_errors"]} == {"calibrate:prompt", "calibrate:lora"}
    assert any("calibration broke" in line for line in result.errors)
    assert "Jobs that failed" in (tmp_path / "r" / "report.md").read_text()


def test_a_broken_claims_entry_point_affects_only_its_own_claim(installed_entry_point, monkeypatch):
    import peftaudit.claims.base as base

    installed_entry_point("peftaudit.claims", "broken-claim = no_such_module_here:claim")
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_AT_LOAD", {})
    monkeypatch.setattr(base, "_loaded", False)
    assert "broken-claim" in base.claim_ids() and "L1" in base.claim_ids()
    result = run_audit(["broken-claim", "Z1-relu"], calibration=False, progress=False, quiet=True)
    assert result.verdicts == {"broken-claim": "ERROR", "Z1-relu": "CERTIFIED"}
    reason = result.report["claims"][0]["reason"]
    assert "no_such_module_here" in reason and "Traceback" not in reason


# ------------------------------------------------------------------ the store and the plan are input

@pytest.fixture(scope="module")
def finished_store(tmp_path_factory):
    """The store of a small finished audit (Z1-relu: six certificates in files)."""
    out = tmp_path_factory.mktemp("done") / "r"
    run_audit(["Z1-relu"], out=out, calibration=False, progress=False, quiet=True)
    return out / "store"


def _unfinished(tmp_path, store: Path) -> Path:
    import shutil

    folder = tmp_path / "unfinished"
    folder.mkdir()
    shutil.copytree(store, folder / "store", symlinks=True)
    return folder


def test_resume_never_writes_through_a_linked_results_file(tmp_path, capsys, finished_store):
    folder = _unfinished(tmp_path, finished_store)
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's file\n")
    (folder / "store" / "results.jsonl").unlink()
    (folder / "store" / "results.jsonl").symlink_to(mine)
    code, _, err = _run(capsys, "audit", "--resume", folder, "--jobs", "1")
    assert code == 2 and "symbolic link" in err and mine.read_text() == "the user's file\n"


def test_resume_never_writes_into_a_linked_certificates_folder(tmp_path, capsys, finished_store):
    import shutil

    folder = _unfinished(tmp_path, finished_store)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "Z1-relu-0.json").write_text("keep")
    shutil.rmtree(folder / "store" / "certificates")
    (folder / "store" / "certificates").symlink_to(mine)
    code, _, err = _run(capsys, "audit", "--resume", folder, "--jobs", "1")
    assert code == 2 and "certificates" in err
    assert [p.name for p in mine.iterdir()] == ["Z1-relu-0.json"] and (mine / "Z1-relu-0.json").read_text() == "keep"


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_resume_does_not_block_on_a_fifo(tmp_path, finished_store):
    folder = _unfinished(tmp_path, finished_store)
    (folder / "store" / "results.jsonl").unlink()
    os.mkfifo(folder / "store" / "results.jsonl")
    proc = subprocess.run([sys.executable, "-m", "peftaudit.cli", "audit", "--resume", str(folder), "--jobs", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "regular file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_stored_line_naming_a_file_outside_the_store_is_dropped_and_redone(tmp_path, capsys, finished_store):
    folder = _unfinished(tmp_path, finished_store)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy me")
    results = folder / "store" / "results.jsonl"
    lines = []
    for raw in results.read_text().splitlines():
        entry = json.loads(raw)
        for summary in entry["result"].get("certificates", {}).values():
            summary["certificate_stored"] = os.path.relpath(secret, folder / "store")
        entry["sha256"] = hashlib.sha256(json.dumps(entry["result"], sort_keys=True).encode()).hexdigest()
        lines.append(json.dumps(entry, sort_keys=True) + "\n")
    results.write_text("".join(lines))
    code, _, err = _run(capsys, "audit", "--resume", folder, "--jobs", "1")
    assert code == 0 and "dropped and redone" in err
    for path in folder.rglob("*"):
        assert path.is_dir() or path.is_symlink() or b"do not copy me" not in path.read_bytes()


@pytest.mark.parametrize("change,expect", [(("instances", 10_000_000), "plan instances"), (("seed", -1), "plan seed"),
                                           (("profile", "ci"), "store/plan.json was changed"),
                                           (("stop", -3), "plan job stop"), (("stop", 3), "was changed"),
                                           (("threads", 100_000), "plan threads")])
def test_a_hostile_plan_is_refused(tmp_path, capsys, finished_store, change, expect):
    folder = _unfinished(tmp_path, finished_store)
    plan_file = folder / "store" / "plan.json"
    plan = json.loads(plan_file.read_text())
    key, value = change
    if key == "stop":
        plan["jobs"][0]["stop"] = value
    else:
        plan[key] = value
    plan_file.write_text(json.dumps(plan))
    code, _, err = _run(capsys, "audit", "--resume", folder, "--jobs", "1")
    assert code == 2 and expect in err


# ------------------------------------------------------------------ options

@pytest.mark.parametrize("argv,expect", [(["--seed", "1" * 30], "--seed"), (["--threads", "100000"], "--threads"),
                                         (["--jobs", "100000"], "--jobs"), (["--instances", "10000000"], "--instances"),
                                         (["--backend", "ray", "--address", "127.0.0.1:1"], "nothing answers"),
                                         (["--address", "127.0.0.1:1"], "--backend ray")])
def test_options_out_of_bounds_are_refused_before_any_work(tmp_path, capsys, argv, expect):
    code, _, err = _run(capsys, "audit", "--claims", "L1", "--out", tmp_path / "r", *argv)
    assert code == 2 and expect in err and len(err.strip().splitlines()) <= 3
    assert not (tmp_path / "r").exists()


def test_the_python_api_bounds_its_settings_too():
    from peftaudit.errors import InputError

    with pytest.raises(InputError, match="seed"):
        run_audit(["Z1-relu"], seed=10**30, calibration=False, progress=False, quiet=True)
    with pytest.raises(InputError, match="threads"):
        run_audit(["Z1-relu"], threads=100_000, calibration=False, progress=False, quiet=True)


def test_pytest_option_errors_are_usage_errors(pytester):
    pytester.makepyfile(broken_plugin="def oops(:\n    pass\n")
    pytester.syspathinsert()
    for argv in (["--peftaudit-conformance", ":"], ["--peftaudit-conformance", "broken_plugin:Method"],
                 ["--peftaudit", "--peftaudit-seed", "1e40", "--peftaudit-claims", "L1"],
                 ["--peftaudit", "--peftaudit-claims", "L1", "--peftaudit-methods", "sys:exit"]):
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *argv)
        text = result.stdout.str() + result.stderr.str()
        assert result.ret == pytest.ExitCode.USAGE_ERROR, (argv, text[-800:])
        assert "INTERNALERROR" not in text


# ------------------------------------------------------------------ files and budgets

@pytest.mark.parametrize("field", ["mlp", "attention", "format"])
def test_npz_names_that_are_arrays_are_bad_input(tmp_path, capsys, field):
    from peftaudit.instance import save
    from peftaudit.strategies.instances import l1_instance

    path = tmp_path / "i.npz"
    save(l1_instance(np.random.default_rng(0), 2), path)
    arrays = dict(np.load(path))
    header = json.loads(bytes(arrays["__header__"]).decode())
    (header if field == "format" else header["model"])[field] = {"$array": "model.layers.0.W1"}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    code, _, err = _run(capsys, "certify", path)
    assert code == 2 and field in err


def test_certify_stops_at_its_memory_budget(tmp_path, capsys):
    """X scaled by 1e200 made exact certification grow without bound (18 GB in 300 s): the
    watched child is stopped at --max-memory, status unknown, exit 4."""
    from peftaudit.instance import load, to_dict
    from peftaudit.strategies.instances import l1_instance

    doc = to_dict(l1_instance(np.random.default_rng(0), 4))
    for example in doc["dataset"]:
        example["X"] = [[x * 1e200 for x in row] for row in example["X"]]
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(doc))
    load(path)  # a valid instance: only its size in exact arithmetic is hostile
    code, out, _ = _run(capsys, "certify", path, "--max-memory", "150", "--timeout", "300", "--json")
    result = json.loads(out)
    assert code == 4 and result["status"] == "unknown" and result["budget"] == "memory"


def test_certify_stops_at_its_time_budget(tmp_path, capsys):
    from peftaudit.instance import to_dict
    from peftaudit.strategies.instances import l1_instance

    doc = to_dict(l1_instance(np.random.default_rng(0), 4))
    rng = np.random.default_rng(1)
    last = doc["dataset"][0]["X"][-1]
    doc["dataset"] = [{"X": [*rng.standard_normal((1, 4)).tolist(), last], "Y": rng.standard_normal((1, 4)).tolist()}
                      for _ in range(2000)]
    path = tmp_path / "many.json"
    path.write_text(json.dumps(doc))
    code, out, _ = _run(capsys, "certify", path, "--timeout", "2", "--json")
    result = json.loads(out)
    assert code == 4 and result["budget"] == "time"


# ------------------------------------------------------------------ pool workers end with their parent

def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the workers (Linux)")
def test_pool_workers_end_when_the_audit_is_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "peftaudit.cli", "audit", "--claims", "L1", "--no-calibration",
                             "--jobs", "2", "--backend", "process", "--out", str(tmp_path / "r")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        workers = {c for c in _children(proc.pid)
                   if "multiprocessing" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")}
        time.sleep(0.2)
    assert workers, "no pool worker was seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive
