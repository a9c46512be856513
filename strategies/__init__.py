"""Hypothesis strategies and seeded builders for weights, datasets and instances."""
