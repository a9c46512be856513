"""Audits as jobs: the plan, the results store, identical reports on every backend, and
kill-and-resume (SIGKILL at random moments, a half-written line) ending in the same report."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftaudit.audit.report import comparable
from peftaudit.cli import main
from peftaudit.errors import InputError
from peftaudit.claims import get_claim
from peftaudit.jobs import ResultStore, plan_audit
from peftaudit.jobs.plan import AuditPlan, chunks, job_seed
from peftaudit.settings import get_profile

# ci profile: chunks of 4 instances, so M-naive (6 instances) and P1-encoder span two jobs each; M-naive is refuted with
# counterexamples (adapters and instances travel through the store), P1 has a study and witnesses
AUDIT = ["--profile", "ci", "--claims", "M-naive,P1", "--no-calibration"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "peftaudit.cli", "audit", *args]


def report(folder) -> dict:
    """The report, comparable across runs (audit/report.comparable)."""
    return comparable(json.loads((folder / "report.json").read_text()), folder)


# ------------------------------------------------------------------ plan and store

def test_plan_splits_claims_by_profile_and_gives_every_job_its_own_seed():
    assert chunks(12, 6, False) == [(0, 6), (6, 12)] and chunks(12, 6, True) == [(0, 12)] and chunks(0, 6, False) == [(0, 0)]
    claims = [get_claim("M-naive"), get_claim("P1")]
    plan = plan_audit(claims, get_profile("ci"), 7, methods=None, device="cpu", calibration=True, cards=["x"],
                      card_families=None)
    keys = [j.key for j in plan.jobs]
    assert keys == ["claim:M-naive:0", "claim:M-naive:4", "claim:P1:0", "calibrate:prompt", "calibrate:lora", "card:x"]
    assert [(j.start, j.stop) for j in plan.jobs[:3]] == [(0, 4), (4, 6), (0, 11)]  # P1 has a study: one job
    assert len({j.seed for j in plan.jobs}) == len(plan.jobs)
    assert job_seed(7, "claim", "M-naive", 4) == plan.jobs[1].seed and job_seed(8, "claim", "M-naive", 4) != plan.jobs[1].seed
    assert AuditPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_store_drops_a_cut_line_and_a_tampered_one_and_keeps_the_first_result(tmp_path):
    plan = plan_audit([get_claim("P1")], get_profile("quick"), 0, methods=None, device="cpu", calibration=False,
                      cards=[], card_families=None)
    store = ResultStore.create(tmp_path / "store", plan)
    store.append("a", {"x": 1})
    store.append("b", {"x": 2})
    store.append("a", {"x": 3})  # a rerun of a finished job: the first stays
    lines = store.results_path.read_bytes().splitlines(keepends=True)
    tampered = lines[1].replace(b'"x": 2', b'"x": 5')
    store.results_path.write_bytes(lines[0] + tampered + lines[2] + b'{"job": "c", "sha')
    assert store.read() == {"a": {"x": 1}}
    assert store.dropped == 2
    assert store.results_path.read_bytes() == lines[0] + tampered + lines[2]  # the cut tail is gone
    store.append("c", {"x": 4})
    assert ResultStore(tmp_path / "store").read() == {"a": {"x": 1}, "c": {"x": 4}}


# ------------------------------------------------------------------ backends and resume

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs") / "inline"
    started = time.perf_counter()
    subprocess.run(cli(*AUDIT, "--out", str(out), "--jobs", "1"), check=True, capture_output=True, timeout=600)
    return out, time.perf_counter() - started


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_process_and_ray_backends_give_the_inline_report(uninterrupted, tmp_path):
    expected = report(uninterrupted[0])
    assert [c["verdict"] for c in expected["claims"]] == ["REFUTED", "CERTIFIED", "REFUTED"]
    assert expected["claims"][0]["counterexamples"] and expected["claims"][0]["instances"] == 6
    for backend in ("process", "ray"):
        out = tmp_path / backend
        done = subprocess.run(cli(*AUDIT, "--out", str(out), "--backend", backend, "--jobs", "2"),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]  # refuted claims here are registered to be
        assert report(out) == expected, backend
        executor = json.loads((out / "report.json").read_text())["provenance"]["executor"]
        assert executor["backend"] == backend and executor["workers"] == 2
        ce = json.loads((out / "report.json").read_text())["claims"][0]["counterexamples"][0]
        assert main(["replay", str(out / ce["instance_file"]), str(out / ce["adapter_file"])]) == 0


def _wait_for_results(path, lines: int, proc) -> None:
    """Until the store holds `lines` finished jobs (or the run ended)."""
    while proc.poll() is None and lines and (not path.exists() or path.read_bytes().count(b"\n") < lines):
        time.sleep(0.05)


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_sigkill_at_random_moments_then_resume_gives_the_same_report(uninterrupted, tmp_path):
    expected, seconds = report(uninterrupted[0]), uninterrupted[1] / len(("M-naive", "P1", "P1-encoder"))
    rng = random.Random(20261127)
    resumed = []
    for trial, backend in enumerate(("inline", "process", "inline")):
        out = tmp_path / f"killed-{trial}"
        proc = subprocess.Popen(cli(*AUDIT, "--out", str(out), "--backend", backend, "--jobs",
                                    "1" if backend == "inline" else "2"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # a random moment after the trial's number of finished jobs (0, 1, 3): early, middle, late
        _wait_for_results(out / "store" / "results.jsonl", (0, 1, 3)[trial], proc)
        time.sleep(rng.uniform(0.0, 0.3 * seconds))
        os.killpg(proc.pid, signal.SIGKILL)  # the run and any worker it spawned, no cleanup
        proc.wait(timeout=60)
        if (out / "report.json").exists():
            continue  # it finished before the kill: nothing to resume
        if not (out / "store").exists():  # killed before it planned: the folder is new or empty, run it again
            assert not out.exists() or not any(out.iterdir())
            subprocess.run(cli(*AUDIT, "--out", str(out)), check=True, capture_output=True, timeout=600)
            assert report(out) == expected
            continue
        store = out / "store" / "results.jsonl"
        with open(store, "ab") as fh:
            fh.write(b'{"job": "claim:P1:0", "result": {"kind": "cla')  # a line cut short by the kill
        done = subprocess.run(cli("--resume", str(out)), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "damaged line(s) dropped and redone" in done.stderr
        assert report(out) == expected, f"trial {trial} ({backend})"
        resumed.append(json.loads((out / "report.json").read_text())["provenance"]["executor"]["resumed"])
    assert any(resumed), f"no trial was killed after a job had finished: {resumed}"
    assert subprocess.run(cli("--resume", str(out), "--profile", "quick"), capture_output=True).returncode == 2


def test_the_plan_fixes_torch_threads_whatever_the_worker_has():
    """Float results of full fine-tuning on M's instances depend on the torch thread count (seen on
    the development machine), so every job runs with the plan's count: a worker's own default
    changes nothing, and the worker gets its own count back."""
    import torch
    from dataclasses import replace

    from peftaudit.jobs.work import run_job

    claim = replace(get_claim("M"), certify=None)  # the search alone
    plan = plan_audit([claim], get_profile("quick"), 0, methods=["full"], device="cpu", calibration=False, cards=[],
                      card_families=None, threads=2)
    before = torch.get_num_threads()
    results = []
    try:
        for own in (1, 2):
            torch.set_num_threads(own)
            results.append(run_job(plan.to_json(), plan.jobs[0].to_json(), claims={"M": claim}))
            assert torch.get_num_threads() == own
    finally:
        torch.set_num_threads(before)
    assert results[0]["contrasts"] and results[0] == results[1]


def test_certificates_leave_the_lines_for_files_checked_by_their_sha256(tmp_path):
    from peftaudit.errors import PeftauditError

    plan = plan_audit([get_claim("P1")], get_profile("quick"), 0, methods=None, device="cpu", calibration=False,
                      cards=[], card_families=None)
    store = ResultStore.create(tmp_path / "store", plan)
    result = {"kind": "claim", "claim": "P1", "certificates": {"3": {"status": "certified", "certificate": {"a": [1]}},
                                                               "4": {"status": "not-certified"}}}
    kept = store.keep_certificates(result)
    assert "certificate" not in kept["certificates"]["3"] and kept["certificates"]["4"] == {"status": "not-certified"}
    assert json.loads(store.certificate(kept["certificates"]["3"])) == {"a": [1]}
    (tmp_path / "store" / kept["certificates"]["3"]["certificate_stored"]).write_text('{"a": [2]}')
    with pytest.raises(PeftauditError, match="SHA-256"):
        store.certificate(kept["certificates"]["3"])


def test_ray_backend_without_ray_is_bad_input_naming_the_extra(monkeypatch):
    from peftaudit.audit import run_audit
    from peftaudit.errors import InputError

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(InputError, match=r"\.\[ray\]"):
        run_audit(["P1-encoder"], backend="ray", jobs=2, calibration=False, progress=False, quiet=True)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head and a second node, each a `ray start --block` process this test owns (its own
    session, stopped by its process group), with token authentication as Ray 2.59+ does by
    default. Yields (address, env for a driver). Skips, saying why, if the cluster cannot come up."""
    import secrets
    import shutil

    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    address = f"127.0.0.1:{port}"
    starts = [[ray_cli, "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
               "--block"], [ray_cli, "start", "--address", address, "--num-cpus", "1", "--block"]]
    procs = []
    try:
        for argv in starts:
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
            deadline = time.monotonic() + 90
            want = len(procs)
            while time.monotonic() < deadline:
                status = subprocess.run([ray_cli, "status", "--address", address], env=env, capture_output=True,
                                        text=True, timeout=60)
                if status.returncode == 0 and status.stdout.count(" node_") >= want:
                    break
                time.sleep(2)
            else:
                pytest.skip(f"a two-node local Ray cluster did not come up within 90 s here ({want} node(s) wanted)")
        yield address, env
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow  # a Ray cluster of its own
def test_a_two_node_ray_cluster_gives_the_inline_report(uninterrupted, two_node_cluster, tmp_path):
    address, env = two_node_cluster
    out = tmp_path / "cluster"
    done = subprocess.run(cli(*AUDIT, "--out", str(out), "--backend", "ray", "--address", address, "--jobs", "2"),
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert report(out) == report(uninterrupted[0])
    # without the cluster's token: one line naming what is missing, no traceback
    bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run(cli(*AUDIT, "--out", str(tmp_path / "no-token"), "--backend", "ray", "--address",
                                 address, "--jobs", "2"), capture_output=True, text=True, timeout=300, env=bare)
    if refused.returncode != 0:  # a token file of this user's may still let it in; if refused, say why
        assert refused.returncode == 2 and "RAY_AUTH_TOKEN" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow  # a Ray of its own
def test_the_local_ray_backend_starts_its_own_ray_beside_a_stale_cluster_file(uninterrupted, tmp_path):
    """Once any cluster ran on a machine, Ray's temp folder keeps `ray_current_cluster`; the local
    backend must start its own Ray, not try to join what that file names."""
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must stay short
    (temp / "ray").mkdir()
    (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # a cluster long gone
    out = tmp_path / "stale"
    done = subprocess.run(cli(*AUDIT, "--out", str(out), "--backend", "ray", "--jobs", "2"), capture_output=True,
                          text=True, timeout=600, env={**os.environ, "RAY_TMPDIR": str(temp)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert report(out) == report(uninterrupted[0])


def test_a_malformed_ray_runtime_env_is_bad_input(monkeypatch):
    from peftaudit.jobs.executors import RUNTIME_ENV_VARIABLE, ray_runtime_env

    monkeypatch.setenv(RUNTIME_ENV_VARIABLE, "[1, 2]")
    with pytest.raises(InputError, match="a JSON object"):
        ray_runtime_env()
    monkeypatch.setenv(RUNTIME_ENV_VARIABLE, '{"pip": ["my-plugin"]}')
    assert ray_runtime_env() == {"pip": ["my-plugin"]}
