"""Certificates in two packages whose split is the rule: encoders (verify/encoders) build
them with any tool; checkers (verify/checkers) re-verify them in Fraction arithmetic alone and
import nothing from the encoders, the models, numpy or torch (tests/test_independence.py)."""
