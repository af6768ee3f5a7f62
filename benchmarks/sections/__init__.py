"""The report's sections, one module each, in the order they run.

Each module has a ``SECTION`` name (the table's first column) and ``section(bench) -> rows``, which
measures, adds its notes to ``bench.notes`` and returns its table rows. The sections run in the
parent process and import nothing heavy at module level: torch must not load before benchmarks.run
has set the thread count. What a later section reuses from an earlier one travels in the Bench
(section 5 reuses section 1's run, section 6 serves section 2's model), so the order matters.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.bench import Bench
from benchmarks.report import Row
from benchmarks.sections import inference, orchestration, scaling, serving, tokenization, training

SECTIONS: list[tuple[str, Callable[[Bench], list[Row]]]] = [
    (module.SECTION, module.section)
    for module in (training, inference, tokenization, orchestration, scaling, serving)
]
