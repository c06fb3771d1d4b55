"""Benchmarks and evaluation harnesses, loaded by `driftline benchmark ...` (not needed to serve)."""
