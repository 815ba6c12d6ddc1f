"""Finished sweeps as pandas frames and tables (reads stored results only)."""
from .load import SweepNotFound, curves, load
from .status import status
from .tables import render, summary, trials_table, with_reference

__all__ = ["load", "curves", "status", "summary", "trials_table", "with_reference", "render", "SweepNotFound"]
