"""Benchmarks (not tests): ``python -m bench [--quick]`` or ``make bench``."""
