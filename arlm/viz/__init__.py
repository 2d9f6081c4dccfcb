"""Plots: loss curves (and, later, attention maps)."""
