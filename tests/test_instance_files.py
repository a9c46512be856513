"""Instance files: round trips and one test per class of bad input (message and exit code 2)."""

import json

import numpy as np
import pytest

from peftaudit import instance as io
from peftaudit.cli import main
from peftaudit.strategies.instances import l1_instance, planted_prompt_instance


@pytest.fixture
def doc():
    inst = planted_prompt_instance(np.random.default_rng(0), 3, 2, layers=1)
    return io.to_dict(inst)


@pytest.mark.parametrize("suffix", [".json", ".npz", ".safetensors"])
def test_round_trip_is_exact(tmp_path, suffix):
    inst = l1_instance(np.random.default_rng(1), 4, "skew", positional=True, output_map=True)
    path = tmp_path / f"inst{suffix}"
    io.save(inst, path)
    back = io.load(path)
    assert back.spec == inst.spec
    assert set(back.weights) == set(inst.weights)
    for name in inst.weights:
        assert np.array_equal(back.weights[name], inst.weights[name])
    for a, b in zip(back.dataset, inst.dataset):
        assert np.array_equal(a.X, b.X) and np.array_equal(a.Y, b.Y)
    assert back.meta == inst.meta


def _bad(doc, mutate):
    mutate(doc)
    return doc


BAD_CASES = {
    "wrong shape": (lambda d: d["model"]["layers"][0]["heads"][0].__setitem__("Wq", [[1.0, 2.0]]), "Wq"),
    "ragged": (lambda d: d["dataset"][0]["X"].__setitem__(0, [1.0]), "ragged"),
    "nan": (lambda d: d["dataset"][0]["X"][0].__setitem__(0, float("nan")), "finite"),
    "infinite": (lambda d: d["model"]["layers"][0]["b1"].__setitem__(0, float("inf")), "finite"),
    "string number": (lambda d: d["model"]["layers"][0]["b2"].__setitem__(0, "1.0"), "JSON number"),
    "unknown option": (lambda d: d["model"].__setitem__("mlp", "gelu"), "model.mlp"),
    "unknown key": (lambda d: d["model"].__setitem__("dropout", 0.1), "meta"),
    "empty dataset": (lambda d: d.__setitem__("dataset", []), "non-empty"),
    "missing Wo with two heads": (lambda d: d["model"]["layers"][0]["heads"].append(
        dict(d["model"]["layers"][0]["heads"][0])), "Wo"),
    "wrong format": (lambda d: d.__setitem__("format", "other/1"), "format"),
    "more targets than tokens": (lambda d: d["dataset"][0]["Y"].extend(d["dataset"][0]["Y"] * 3), "rows"),
    "examples of different shapes": (lambda d: d["dataset"][1]["X"].append(d["dataset"][1]["X"][0]), "shapes"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_instance_is_rejected_with_exit_2(tmp_path, doc, case, capsys):
    mutate, needle = BAD_CASES[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_bad(doc, mutate)))
    with pytest.raises(io.InputError) as err:
        io.load(path)
    assert needle in str(err.value)
    assert main(["certify", str(path)]) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"not json at all", b"[1, 2, 3]", b'{"hello": 1}'])
def test_files_that_are_not_instances(tmp_path, content, capsys):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    assert main(["certify", str(path)]) == 2
    assert "bad input" in capsys.readouterr().err


def test_corrupt_binary_files(tmp_path, capsys):
    for suffix in (".npz", ".safetensors"):
        path = tmp_path / f"x{suffix}"
        path.write_bytes(b"\x00garbage" * 10)
        assert main(["certify", str(path)]) == 2
    assert main(["certify", str(tmp_path / "missing.json")]) == 2
    assert main(["certify", str(tmp_path / "x.txt")]) == 2


def test_unknown_extension_on_save(tmp_path):
    inst = l1_instance(np.random.default_rng(1), 2)
    with pytest.raises(io.InputError, match=".json, .npz or .safetensors"):
        io.save(inst, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
