"""Benchmarks: the medqa path against plain Hugging Face, measured side by side in one run.

``python -m benchmarks.run --preset small`` (``make bench``) prints one markdown table and writes
``reports/benchmarks.md``. Every figure is a median of repeats measured on this machine in this run, and
every comparison a ratio of two such medians, so the ratios hold even when the absolute numbers move
with the machine's load.

Where things are: ``run.py`` reads the command line, runs the sections and writes the report;
``sections/`` holds one module per section, which plans its measurements and turns them into table
rows and notes; the ``*_bench.py`` modules do the measuring itself, mostly in fresh processes;
``reference.py`` and ``hf_pipeline_ref.py`` are the plain Hugging Face side; ``bench.py`` is what the
sections share, ``presets.py`` how much each preset measures, ``measure.py`` the timing and machine
plumbing and ``report.py`` the markdown table.
"""
