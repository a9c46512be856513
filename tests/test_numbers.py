"""One number rule: the loader (peftaudit.jsonio) and the checker (verify/checkers/reading.py)
accept and reject the same tokens and read each as the same rational; both compute the same
instance digest."""

import json
import math
import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from peftaudit import jsonio
from peftaudit.errors import InputError
from peftaudit.instance import digest, from_dict, to_dict
from peftaudit.strategies.hyp import l1_instances
from peftaudit.verify.checkers.instance import parse_instance
from peftaudit.verify.checkers.reading import MalformedCertificate, parse, token_value

ACCEPTED = ["0", "-0", "1", "2", "0.1", "0.10", "1e-1", "1E-1", "-2.5", "1e5", "9007199254740992", "1e308",
            "2.2250738585072014e-308", "5e-324", "4.9406564584124654e-324", "1.7976931348623157e308",
            "0.30000000000000004", "1.5e-5", str(2**60), "1152921504606846976.0", "0e99999999999"]
REJECTED = ["9007199254740993", str(2**60 + 1), "1e309", "-1e400", "1e999999999", "1e-999999999",
            "0.1000000000000000000001", "1" * 400, "1" * 4400, "9007199254740993.0", "1e-400"]


def _loader(token):
    value = jsonio.binary64_of_token(token)
    return None if value is None else Fraction(value)


def _exact_decimal(token: str) -> bool:
    return Fraction(token) == Fraction(float(token)) if math.isfinite(float(token)) else False


@pytest.mark.parametrize("token", ACCEPTED + REJECTED)
def test_loader_and_checker_agree_on_the_corpus(token):
    assert _loader(token) == token_value(token)


@pytest.mark.parametrize("token", REJECTED)
def test_rejected_tokens_are_refused_by_both_readers(token):
    assert token_value(token) is None
    with pytest.raises(InputError):
        jsonio.loads(f'{{"x": [{token}]}}', "test")
    with pytest.raises(MalformedCertificate):
        parse(f'{{"x": [{token}]}}'.encode())


@given(st.floats(allow_nan=False, allow_infinity=False))
@example(-0.0)
@example(5e-324)
def test_every_float_repr_reads_back_as_itself(x):
    """The shortest decimal of any binary64 (what json.dumps writes) is accepted, as that value."""
    token = repr(x)
    assert _loader(token) == token_value(token) == Fraction(x)


@given(st.integers(-2**70, 2**70))
def test_integers_are_accepted_exactly_when_float64_holds_them(n):
    exact = float(n) == n
    assert (token_value(str(n)) is not None) == exact == (_loader(str(n)) is not None)


@given(st.binary(min_size=8, max_size=8))
def test_exact_decimal_expansions_of_binary64_are_accepted(raw):
    """The full (long) decimal expansion of a binary64 value is that value exactly."""
    x = struct.unpack("<d", raw)[0]
    if not math.isfinite(x):
        return
    f = Fraction(x)
    token = f"{f.numerator}" if f.denominator == 1 else None
    if token is None:  # write n / 2^k as an exact decimal: n * 5^k / 10^k
        k = f.denominator.bit_length() - 1
        digits = str(abs(f.numerator) * 5**k)
        token = ("-" if f < 0 else "") + (digits[:-k] or "0") + "." + digits[-k:].rjust(k, "0")
    if len(token) > 1000:
        return
    assert _loader(token) == token_value(token) == f


def test_duplicate_keys_and_deep_nesting_are_refused_by_both():
    for text in ('{"a": 1, "a": 2}', "[" * 100 + "]" * 100):
        with pytest.raises(InputError):
            jsonio.loads(text, "test")
        with pytest.raises(MalformedCertificate):
            parse(text.encode())


@given(l1_instances())
def test_loader_and_checker_compute_one_digest(inst):
    doc = to_dict(inst)
    doc["model"]["layers"][0]["heads"][0]["Wq"][0][0] = -0.0  # -0 and 0 are one rational
    doc["meta"]["note"] = [1, 2.5, -0.0, "x"]
    inst = from_dict(doc)
    text = json.dumps(to_dict(inst))
    assert digest(inst) == parse_instance(parse(text.encode())).digest
    assert digest(from_dict(jsonio.loads(text, "instance"))) == digest(inst)


def test_a_changed_number_changes_the_digest():
    from peftaudit.strategies.instances import l1_instance
    inst = l1_instance(np.random.default_rng(0), 3)
    doc = to_dict(inst)
    doc["dataset"][0]["X"][0][0] = float(np.nextafter(doc["dataset"][0]["X"][0][0], 1.0))
    assert digest(from_dict(doc)) != digest(inst)
