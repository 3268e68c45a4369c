"""Plots and pages built from a run folder alone."""
