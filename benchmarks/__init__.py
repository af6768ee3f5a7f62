"""Benchmarks: the medqa path against plain Hugging Face, measured side by side in one run.

``python -m benchmarks.run --preset small`` (``make bench``) prints one markdown table and writes
``reports/benchmarks.md``. Every figure is a median of repeats measured on this machine in this run, and
every comparison a ratio of two such medians, so the ratios hold even when the absolute numbers move
with the machine's load.
"""
