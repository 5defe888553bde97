"""Benchmarks and load scenarios (scripts, not tests): see docs/benchmarks.md."""
