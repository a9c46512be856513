"""Fuzzing the file readers: Hypothesis mutates valid instance files (JSON, npz, safetensors),
certificates and adapter files; every case ends within its time bound in a documented exit code
with a message, never a traceback or a hang."""

import contextlib
import copy
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftaudit.cli import main
from peftaudit.instance import save, to_dict
from peftaudit.strategies.instances import l1_instance

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
CODES = {"certify": {0, 1, 2, 3, 4}, "check-certificate": {0, 1, 2}, "replay": {0, 1, 2}}

hostile_values = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.just("1/0"), st.just("1e100000000"),
    st.integers(-2**80, 2**80), st.just(10**400), st.floats(allow_nan=False, allow_infinity=False),
    st.just(1e300), st.just(-1e-300), st.just([]), st.just({}), st.just([[1.0]]), st.just({"$array": "nope"}),
    st.lists(st.floats(-10, 10), max_size=4))


def _paths(node, prefix=()):
    """Every path to a node of a JSON document."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw, doc):
    """doc with one node replaced, one key deleted or added, or a list entry duplicated."""
    doc = copy.deepcopy(doc)
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
    if action == "replace":
        parent[path[-1]] = draw(hostile_values)
    elif action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=4))] = draw(hostile_values)
    elif isinstance(parent, list):
        parent.insert(path[-1], copy.deepcopy(parent[path[-1]]))
    return doc


def _run(*argv) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    elapsed = time.perf_counter() - started
    text = err.getvalue() + out.getvalue()
    assert "Traceback" not in text and code in CODES[argv[0]], (code, text[:500])
    assert text.strip(), "every outcome says something"
    assert elapsed < 30, elapsed
    return code, text


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("valid")
    inst = l1_instance(np.random.default_rng(0), 3)
    save(inst, tmp / "i.json")
    assert main(["certify", str(tmp / "i.json"), "--claim", "L1+", "--out", str(tmp / "c.json")]) == 0
    adapter = {"format": "peftaudit.adapter/1", "method": "prompt", "options": {}, "size": 1,
               "tensors": {"prompt": [[0.1, 0.2, 0.3]]}}
    return {"dir": tmp, "inst": inst, "instance": to_dict(inst),
            "certificate": json.loads((tmp / "c.json").read_text()), "adapter": adapter}


def _write(tmp: Path, name: str, content) -> Path:
    path = tmp / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@FUZZ
@given(data=st.data())
def test_mutated_instance_json(valid, data, tmp_path_factory):
    doc = data.draw(mutated(valid["instance"]))
    path = _write(tmp_path_factory.mktemp("f"), "i.json", doc)
    _run("certify", path, "--timeout", "20")


@FUZZ
@given(data=st.data())
def test_mutated_certificates(valid, data, tmp_path_factory):
    doc = data.draw(mutated(valid["certificate"]))
    _run("check-certificate", _write(tmp_path_factory.mktemp("f"), "c.json", doc))


@FUZZ
@given(data=st.data())
def test_mutated_adapters(valid, data, tmp_path_factory):
    doc = data.draw(mutated(valid["adapter"]))
    _run("replay", valid["dir"] / "i.json", _write(tmp_path_factory.mktemp("f"), "a.json", doc))


@FUZZ
@given(suffix=st.sampled_from([".npz", ".safetensors", ".json"]), data=st.data())
def test_corrupted_bytes_of_instance_files(valid, suffix, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("f")
    save(valid["inst"], tmp / f"i{suffix}")
    raw = bytearray((tmp / f"i{suffix}").read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "truncate":
        raw = raw[:at]
    elif how == "flip":
        raw[at] ^= data.draw(st.integers(1, 255))
    else:
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    (tmp / f"x{suffix}").write_bytes(bytes(raw))
    _run("certify", tmp / f"x{suffix}", "--timeout", "20")


@FUZZ
@given(data=st.data())
def test_mutated_npz_arrays(valid, data, tmp_path_factory):
    """Arrays of other dtypes and shapes inside an otherwise valid npz."""
    tmp = tmp_path_factory.mktemp("f")
    save(valid["inst"], tmp / "i.npz")
    with np.load(tmp / "i.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    name = data.draw(st.sampled_from(sorted(arrays)))
    dtype = data.draw(st.sampled_from(["f4", "f2", "i8", "u8", "c16", "U4", "?", "M8[s]", "f8"]))
    shape = data.draw(st.sampled_from([None, (0,), (2, 2, 2), (1,)]))
    value = arrays[name] if shape is None else np.zeros(shape)
    try:
        arrays[name] = value.astype(dtype)
    except (TypeError, ValueError):
        return
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (tmp / "x.npz").write_bytes(buf.getvalue())
    _run("certify", tmp / "x.npz", "--timeout", "20")


@pytest.fixture(scope="module")
def newer_certificates():
    """One valid certificate of each claim added with U, P1 and Z1 (small instances: fast checks)."""
    from peftaudit.claims.p1 import _instance
    from peftaudit.strategies.lipschitz import u_instance
    from peftaudit.strategies.z1_instances import relu_instance, z1_instance
    from peftaudit.verify.encoders.p1 import certify_p1, certify_p1_encoder
    from peftaudit.verify.encoders.u import certify_u
    from peftaudit.verify.encoders.z1 import certify_z1
    from peftaudit.verify.encoders.z1_relu import certify_z1_relu, certify_z1_relu_unbounded

    rng = np.random.default_rng(0)
    relu = relu_instance(rng, 3, 2, 1)
    return {"U": certify_u(u_instance(rng, 1, 1, 1.0, 0.5, 1, "affine")).certificate,
            "P1": certify_p1(_instance(rng, 3, 2, "causal", "prompt", 1)).certificate,
            "P1-encoder": certify_p1_encoder(_instance(rng, 3, 2, "encoder", "prompt", 1)).certificate,
            "Z1": certify_z1(z1_instance(rng, 3, 2, 3)).certificate,
            "Z1-relu": certify_z1_relu(relu).certificate,
            "Z1-relu-unbounded": certify_z1_relu_unbounded(relu).certificate}


@FUZZ
@given(data=st.data(), claim=st.sampled_from(["U", "P1", "P1-encoder", "Z1", "Z1-relu", "Z1-relu-unbounded"]))
def test_mutated_newer_certificates(newer_certificates, claim, data, tmp_path_factory):
    doc = data.draw(mutated(newer_certificates[claim]))
    _run("check-certificate", _write(tmp_path_factory.mktemp("f"), "c.json", doc))
