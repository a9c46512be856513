"""The encoders: they decide the algebraic conditions (HiGHS LPs, z3, mpmath intervals for exp)
and write certificates that the independent checkers (verify/checkers) re-verify. They may use
anything; the checkers use none of it."""
