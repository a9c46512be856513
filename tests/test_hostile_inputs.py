"""The classes of hostile input a review found (issue 8), each ending in its documented exit code
with a short message naming the field, never a traceback, a hang or lost data."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from peftaudit.cli import main
from peftaudit.instance import digest, save, to_dict
from peftaudit.strategies.instances import l1_instance, planted_prompt_instance


@pytest.fixture
def inst():
    return l1_instance(np.random.default_rng(0), 3)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert len(err) < 2000  # a short message, values shortened
    return code, out, err


def _write(tmp_path, doc, name="i.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


# ------------------------------------------------------------------ numbers and parsing

@pytest.mark.parametrize("token", [str(2**53 + 1), "1" + "0" * 310, "1" * 4400, "1e999", "0.1000000000000000000001"])
def test_numbers_that_are_not_binary64_are_refused(tmp_path, capsys, inst, token):
    text = json.dumps(to_dict(inst)).replace(repr(to_dict(inst)["dataset"][0]["X"][0][0]), token, 1)
    code, _, err = _run(capsys, "certify", _write(tmp_path, text))
    assert code == 2 and "binary64" in err


@pytest.mark.parametrize("text,expect", [("[" * 100000 + "]" * 100000, "nesting"),
                                         ('{"format": "peftaudit.instance/1", "format": "x"}', "duplicate"),
                                         ('{"format": NaN}', "binary64")])
def test_parsing_limits(tmp_path, capsys, text, expect):
    code, _, err = _run(capsys, "certify", _write(tmp_path, text))
    assert code == 2 and expect in err


def test_certificate_with_a_large_integer_token_cannot_disagree_with_replay(tmp_path, capsys, inst):
    """The class-1 hole: an integer above 2^53 in a token is refused by checker and loader alike."""
    code, _, _ = _run(capsys, "certify", save_and(tmp_path, inst), "--out", tmp_path / "c.json")
    assert code == 0
    text = (tmp_path / "c.json").read_text()
    cert = json.loads(text)
    x = cert["instance"]["dataset"][0]["X"][0][0]
    (tmp_path / "bad.json").write_text(text.replace(repr(x), str(2**53 + 1), 1))
    code, _, err = _run(capsys, "check-certificate", tmp_path / "bad.json")
    assert code == 2 and "binary64" in err


def save_and(tmp_path, inst, name="i.json"):
    path = tmp_path / name
    save(inst, path)
    return path


# ------------------------------------------------------------------ binary files

def _npz(tmp_path, arrays, name="i.npz"):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = tmp_path / name
    path.write_bytes(buf.getvalue())
    return path


def _npz_instance(tmp_path, inst, change):
    save(inst, tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as data:
        arrays = {k: data[k] for k in data.files}
    name = next(k for k in arrays if k.endswith("X"))
    arrays[name] = change(arrays[name])
    return _npz(tmp_path, arrays)


@pytest.mark.parametrize("change,expect", [
    (lambda a: a.astype(np.complex128), "complex"),
    (lambda a: a.astype("U20"), "<U20"),
    (lambda a: (a > 0), "bool"),
    (lambda a: np.zeros(a.shape, dtype="datetime64[s]"), "datetime64"),
    (lambda a: np.full(a.shape, 2**63 + 1, dtype=np.uint64), "uint64"),
])
def test_npz_dtypes_outside_the_number_rule_are_refused(tmp_path, capsys, inst, change, expect):
    code, _, err = _run(capsys, "certify", _npz_instance(tmp_path, inst, change))
    assert code == 2 and expect in err


def test_npz_bomb_is_refused_before_decompression(tmp_path, capsys):
    """A member that declares 3 GB uncompressed is refused from the zip directory alone."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("X.npy", "w", force_zip64=True) as fh:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                          "shape": (400_000_000,)})
            fh.write(header.getvalue())
            chunk = bytes(2**24)
            for _ in range(8):  # 128 MB of zeros compresses to about 128 KB; the header says 3.2 GB
                fh.write(chunk)
    started = time.perf_counter()
    code, _, err = _run(capsys, "certify", path)
    assert code == 2 and ("at most" in err or "readable" in err)
    assert time.perf_counter() - started < 20


# ------------------------------------------------------------------ paths and arguments

@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("command", ["certify", "check-certificate"])
def test_devices_are_not_read(capsys, command):
    code, _, err = _run(capsys, command, "/dev/zero")
    assert code == 2 and "regular file" in err


def test_a_fifo_is_not_opened(tmp_path, capsys):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    code, _, err = _run(capsys, "certify", fifo)
    assert code == 2 and "regular file" in err


@pytest.mark.parametrize("argv", [
    ["generate", "--kind", "l1", "--d", "1000000000", "--out", "x.json"],
    ["generate", "--kind", "l1", "--d", "3", "--seed", "-1", "--out", "x.json"],
    ["audit", "--claims", ",", "--no-calibration"],
    ["audit", "--methods", ",", "--no-calibration"],
    ["audit", "--claims", "NOPE", "--no-calibration"],
])
def test_bad_arguments_exit_2_before_any_work(tmp_path, capsys, argv):
    os.chdir(tmp_path)
    code, _, err = _run(capsys, *argv)
    assert code == 2 and err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "reports").exists()


def test_search_sizes_are_checked_against_max_memory(tmp_path, capsys):
    path = save_and(tmp_path, planted_prompt_instance(np.random.default_rng(0), 4, 1))
    code, _, err = _run(capsys, "search", path, "--lengths", "4000", "--max-memory", "1")
    assert code == 2 and "max-memory" in err
    code, _, err = _run(capsys, "search", path, "--restarts", "1000000000")
    assert code == 2


@pytest.mark.parametrize("doc,expect", [
    ({"method": "prompt", "size": 1, "options": {"bogus": 1}}, "options"),
    ({"method": ["prompt"], "size": 1}, "method"),
    ({"method": "prompt", "size": 10**9}, "size"),
    ({"method": "prompt", "size": 1, "extra": 1}, "extra"),
    ({"method": "prompt", "size": 1, "instance_sha256": "0" * 64}, "instance_sha256"),
])
def test_hostile_adapter_files(tmp_path, capsys, inst, doc, expect):
    path = save_and(tmp_path, inst)
    adapter = {"format": "peftaudit.adapter/1", "tensors": {"prompt": [[0.0, 0.0, 0.0]]}, **doc}
    code, _, err = _run(capsys, "replay", path, _write(tmp_path, adapter, "a.json"))
    assert code == 2 and expect in err


# ------------------------------------------------------------------ certificates

@pytest.fixture
def certificate(tmp_path, capsys, inst):
    path = save_and(tmp_path, inst)
    assert main(["certify", str(path), "--claim", "L1+", "--out", str(tmp_path / "c.json")]) == 0
    capsys.readouterr()
    return json.loads((tmp_path / "c.json").read_text())


@pytest.mark.parametrize("field,value,expect", [
    ("delta", "1e100000000", "rational"),
    ("margin", "1" * 30000, "rational"),
    ("logit_shift", "-100000000", "limit"),
    ("unknown_key", 1, "no such key"),
    ("instance_sha256", "0" * 64, "instance_sha256"),
])
def test_hostile_certificates_end_in_exit_2_quickly(tmp_path, capsys, certificate, field, value, expect):
    certificate[field] = value
    started = time.perf_counter()
    code, _, err = _run(capsys, "check-certificate", _write(tmp_path, certificate, "bad.json"))
    assert code == 2 and expect in err
    assert time.perf_counter() - started < 20


@pytest.mark.parametrize("mutate,expect", [
    (lambda i: i["model"]["layers"][0]["heads"][0]["Wk"].append([0.0, 0.0, 0.0]), "Wk"),
    (lambda i: i["dataset"].__setitem__(0, 5), "dataset[0]"),
    (lambda i: i["model"]["layers"][0]["heads"][0].__setitem__("Wo", [[1.0, 0.0, 0.0]]), "Wo"),
    (lambda i: i["dataset"][0]["X"][0].__setitem__(0, "1/3"), "JSON number"),
    (lambda i: i["model"].__setitem__("extra", 1), "no such key"),
])
def test_checker_validates_the_embedded_instance(tmp_path, capsys, certificate, mutate, expect):
    mutate(certificate["instance"])
    code, _, err = _run(capsys, "check-certificate", _write(tmp_path, certificate, "bad.json"))
    assert code == 2 and expect in err


def test_check_certificate_names_claim_subject_digest_and_binds_to_an_instance(tmp_path, capsys, inst, certificate):
    cert_path = _write(tmp_path, certificate, "c2.json")
    code, out, _ = _run(capsys, "check-certificate", cert_path)
    assert code == 0 and "claim L1+" in out and "members" in out and digest(inst) in out
    code, out, _ = _run(capsys, "check-certificate", cert_path, "--instance", tmp_path / "i.json")
    assert code == 0 and "matches" in out
    other = save_and(tmp_path, l1_instance(np.random.default_rng(1), 3), "other.json")
    code, _, err = _run(capsys, "check-certificate", cert_path, "--instance", other)
    assert code == 1 and "not" in err


# ------------------------------------------------------------------ nothing the user had is lost

def test_audit_out_never_replaces_user_data(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2")
    for target, force in ((a_file, False), (a_file, True), (folder, False), (folder, True)):
        argv = ["audit", "--claims", "L1", "--no-calibration", "--out", target] + (["--force"] if force else [])
        started = time.perf_counter()
        code, _, err = _run(capsys, *argv)
        assert code == 2 and "--out" in err
        assert time.perf_counter() - started < 10  # refused before any work
    assert a_file.read_text() == "mine" and (folder / "data.csv").read_text() == "1,2"


def test_generate_and_certify_do_not_overwrite_without_force(tmp_path, capsys):
    target = tmp_path / "mine.json"
    target.write_text("keep")
    code, _, err = _run(capsys, "generate", "--kind", "l1", "--d", "3", "--out", target)
    assert code == 2 and target.read_text() == "keep"
    assert _run(capsys, "generate", "--kind", "l1", "--d", "3", "--out", target, "--force")[0] == 0


@pytest.mark.slow  # an audit or subprocess of its own (the fast lane leaves it out)
def test_sigterm_leaves_no_partial_report(tmp_path):
    out = tmp_path / "rep"
    proc = subprocess.Popen([sys.executable, "-m", "peftaudit.cli", "audit", "--claims", "L1", "--no-calibration",
                             "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 0), err
    assert "Traceback" not in err and "Warning" not in err  # the killed pool's workers leave no noise
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    # interrupted: no report, only the store that --resume goes on from
    # interrupted: no report; only the store --resume goes on from (or nothing, when the signal came
    # before the store was created)
    assert proc.returncode == 0 or not out.exists() or sorted(p.name for p in out.iterdir()) == ["store"]


def test_internal_errors_are_one_line_and_exit_3(tmp_path, capsys, monkeypatch):
    import peftaudit.cli as cli

    def boom(args):
        raise RuntimeError("something broke\nsecond line")
    parser_func = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _patched(parser_func(), boom))
    code, _, err = _run(capsys, "generate", "--kind", "l1", "--d", "3", "--out", tmp_path / "x.json")
    assert code == 3 and "internal error" in err and "second line" not in err and ".log" in err


def _patched(parser, func):
    for action in parser._subparsers._group_actions:
        action.choices["generate"].set_defaults(func=func)
    return parser


def test_pytest_plugin_unknown_claim_is_a_usage_error(pytester):
    result = pytester.runpytest("--peftaudit", "--peftaudit-claims", "NOPE")
    text = result.stdout.str() + result.stderr.str()
    assert result.ret != 0 and "INTERNALERROR" not in text and "NOPE" in text


@pytest.mark.parametrize("field,value", [("claim", ["L1+"]), ("members", [[0], [1]]), ("members", [{}, 1])])
def test_unhashable_values_where_names_and_indices_go(tmp_path, capsys, certificate, field, value):
    """Found by the fuzz suite: a list where the claim or an index goes was a TypeError (exit 3)."""
    certificate[field] = value
    code, _, err = _run(capsys, "check-certificate", _write(tmp_path, certificate, "bad.json"))
    assert code == 2 and field in err


def test_unhashable_l2_positions(tmp_path, capsys):
    from peftaudit.strategies.instances import l2_instance
    path = save_and(tmp_path, l2_instance(np.random.default_rng(0), 6, 3))
    assert main(["certify", str(path), "--claim", "L2", "--out", str(tmp_path / "c.json")]) == 0
    cert = json.loads((tmp_path / "c.json").read_text())
    cert["positions"][0] = [[0], 1]
    code, _, err = _run(capsys, "check-certificate", _write(tmp_path, cert, "bad.json"))
    assert code == 2 and "positions[0]" in err
