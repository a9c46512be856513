"""Hypothesis strategies and seeded builders for weights, datasets and instances."""

if __name__ != "peftaudit.strategies":  # one import identity: the folder is installed as peftaudit.strategies
    raise ImportError(f"import peftaudit.strategies, not {__name__}: the folder strategies/ is installed as peftaudit.strategies "
                      "(a second copy under its bare name would hold the same classes twice)")

