"""Benchmark scripts (run from the repository root); a package so tests can import the reference loop."""
