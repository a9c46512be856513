"""Certificates in two packages whose split is the rule: encoders (verify/encoders) build
them with any tool; checkers (verify/checkers) re-verify them in Fraction arithmetic alone and
import nothing from the encoders, the models, numpy or torch (tests/test_independence.py)."""

if __name__ != "peftaudit.verify":  # one import identity: the folder is installed as peftaudit.verify
    raise ImportError(f"import peftaudit.verify, not {__name__}: the folder verify/ is installed as peftaudit.verify "
                      "(a second copy under its bare name would hold the same classes twice)")

