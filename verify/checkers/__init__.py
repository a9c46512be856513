"""The independent checkers: exact re-verification of certificates, in Fraction arithmetic only.

The rule the folder shows: nothing here imports the encoders, the models, numpy, torch, z3 or
mpmath (tests/test_independence.py says so). A certificate is read with the checkers' own
number rule and caps (reading.py), its embedded instance validated as strictly as the loader
does (instance.py), bound to it by the SHA-256 of its canonical encoding, and then checked by
the claim's module (l1.py for L1 and L1+, l2.py, lv.py, lv_scale.py, m.py, u.py, z1.py, z1_relu.py, p1.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .instance import parse_instance
from .l1 import check_l1
from .l2 import check_l2
from .lv import check_lv
from .lv_scale import check_lv_scale
from .m import check_m
from .p1 import check_p1, check_p1_encoder
from .u import check_u
from .z1 import check_z1, parse_linear
from .z1_relu import check_z1_relu, check_z1_relu_unbounded, parse_relu
from .reading import MalformedCertificate, parse, read_file, shorten
from .result import CheckResult

CERT_FORMAT = "peftaudit.certificate/1"
COMMON = {"format", "claim", "instance", "instance_sha256", "margin", "uncertified"}
KEYS = {
    "L1": COMMON | {"members", "delta", "data", "multipliers", "sphere", "shared_normaliser", "logit_shift", "pieces"},
    "L1+": COMMON | {"members", "delta", "data", "multipliers", "logit_shift", "pieces", "sphere"},
    "L2": COMMON | {"positions", "data", "mu", "s", "r", "t", "delta", "pair_cells", "sphere"},
    "M": COMMON | {"pair", "B", "r0", "D", "t", "layers"},
    "U": COMMON | {"prompt"},
    "Z1": COMMON | {"rank", "Q", "s2", "lower", "below", "at"},
    "P1": COMMON | {"method", "prefix_length"},
    "P1-encoder": COMMON | {"prompt", "inputs"},
    "Z1-relu": COMMON | {"rank", "B", "A", "biases", "epsilon"},
    "Z1-relu-unbounded": COMMON | {"rank", "B", "A", "biases", "point"},
    "LV": COMMON | {"rank", "H", "Q", "s", "e", "c"},
    "LV-scale": COMMON | {"H", "coordinate", "pair"},
}
CHECKERS = {"L1": check_l1, "L1+": check_l1, "L2": check_l2, "M": check_m, "U": check_u, "Z1": check_z1,
            "P1": check_p1, "P1-encoder": check_p1_encoder, "Z1-relu": check_z1_relu,
            "Z1-relu-unbounded": check_z1_relu_unbounded, "LV": check_lv,
            "LV-scale": check_lv_scale}
PARSERS = {"Z1": parse_linear, "Z1-relu": parse_relu, "Z1-relu-unbounded": parse_relu}  # not transformers

__all__ = ["CERT_FORMAT", "CheckResult", "Checked", "MalformedCertificate", "check_bytes", "check_certificate",
           "check_file"]


@dataclass(frozen=True)
class Checked:
    """A checked certificate: the verdict and what it is bound to."""
    result: CheckResult
    claim: str
    instance_sha256: str
    subject: str            # the examples or positions the certificate speaks about

    @property
    def valid(self) -> bool:
        return self.result.valid

    @property
    def reason(self) -> str:
        return self.result.reason

    @property
    def margin(self) -> Fraction | None:
        return self.result.margin


def _subject(cert: dict) -> str:
    if cert.get("claim") == "U":
        return "every grid cell"
    if cert.get("claim") == "P1":
        return f"{cert.get('method')} with {cert.get('prefix_length')} prefix positions"
    if cert.get("claim") == "P1-encoder":
        return f"inputs {cert.get('inputs')}"
    if cert.get("claim", "").startswith("Z1-relu"):
        return f"rank {cert.get('rank')} with tuned biases"
    if cert.get("claim") == "Z1":
        return f"rank {cert.get('rank')} against the threshold"
    if cert.get("claim") == "LV":
        return f"every update of W_v of rank <= {cert.get('rank')}"
    if cert.get("claim") == "LV-scale":
        return f"every row scaling of W_v (coordinate {cert.get('coordinate')})"
    for key in ("members", "pair", "positions"):
        if isinstance(cert.get(key), list):
            return f"{key} {shorten(json.dumps(cert[key]), 80)}"
    return "?"


def check_bytes(data: bytes) -> Checked:
    """Parse and check a certificate file's bytes; MalformedCertificate when it is not one."""
    cert = parse(data)
    if not isinstance(cert, dict) or cert.get("format") != CERT_FORMAT:
        raise MalformedCertificate(f"format: expected {CERT_FORMAT!r}")
    claim = cert.get("claim")
    if not isinstance(claim, str) or claim not in CHECKERS:
        raise MalformedCertificate(f"claim: expected one of {', '.join(CHECKERS)}, got {shorten(repr(claim))}")
    extra = sorted(set(cert) - KEYS[claim])
    if extra:
        raise MalformedCertificate(f"{shorten(extra[0])}: no such key in a {claim} certificate "
                                   "(informative extras belong under 'uncertified')")
    if "instance" not in cert:
        raise MalformedCertificate("instance: missing")
    inst = PARSERS.get(claim, parse_instance)(cert["instance"])
    stated = cert.get("instance_sha256")
    if stated != inst.digest:
        raise MalformedCertificate(f"instance_sha256: {shorten(repr(stated))} is not the digest of the embedded "
                                   f"instance ({inst.digest})")
    return Checked(CHECKERS[claim](cert, inst), claim, inst.digest, _subject(cert))


def check_certificate(cert: Any) -> Checked:
    """Check a certificate given as Python data (as an encoder builds it), through its JSON text."""
    try:
        text = json.dumps(cert, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MalformedCertificate(f"not JSON data ({shorten(str(exc), 80)})") from None
    return check_bytes(text.encode())


def check_file(path: str) -> Checked:
    """Read a certificate file (a regular file within the size cap) and check it."""
    return check_bytes(read_file(str(path)))
