"""Section 4: orchestration overhead, a no-op `dvc repro` and a fully cached Prefect flow run, timed by
benchmarks.orchestration_bench on this project where dvc.lock is current, else on a tiny copy."""

from __future__ import annotations

from benchmarks.bench import ROOT, Bench
from benchmarks.measure import median
from benchmarks.report import Row

SECTION = "4 orchestration"
NOOP_REPRO_TARGET_S = 3.0


def section(b: Bench) -> list[Row]:
    """4. A no-op `dvc repro` (the project if dvc.lock is current, else a tiny copy) and a cached
    Prefect flow."""
    from benchmarks.orchestration_bench import (
        build_tiny_project,
        dvc_is_up_to_date,
        project_env,
        time_cached_flow,
        time_noop_repro,
    )

    p, env = b.preset, project_env()
    if dvc_is_up_to_date(ROOT, env):
        project, where = ROOT, "this project (dvc status: up to date)"
    else:
        project = b.isolated(build_tiny_project, b.scratch / "tiny-project", env)
        where = (
            "a tiny copy of the project (tests/helpers.py make_tiny_project: 2-layer model, 8 passages), "
            "reproduced once first, because this project's dvc.lock is not up to date"
        )
    noop = time_noop_repro(project, env, p.orchestration_repeats)
    out = [
        Row(
            SECTION,
            "no-op `dvc repro`, s",
            median(noop),
            None,
            p.orchestration_repeats,
            f"< {NOOP_REPRO_TARGET_S:g} s",
            median(noop) < NOOP_REPRO_TARGET_S,
        )
    ]
    b.notes.append(
        f"Orchestration: measured on {where}; `dvc repro` is the console script, timed as a user "
        "types it (interpreter start-up included)."
    )
    if not p.prefect:
        b.notes.append("Prefect flow not timed in this preset.")
        return out
    flow = b.isolated(
        time_cached_flow, project, b.scratch / "prefect-home", p.orchestration_repeats
    )
    b.notes.append(
        "Prefect: the medqa flow in-process against a temporary Prefect server on 127.0.0.1 "
        '(prefect_test_harness); one untimed run first; every stage reported "cached".'
    )
    return [
        *out,
        Row(
            SECTION, "fully cached Prefect flow run, s", median(flow), None, p.orchestration_repeats
        ),
    ]
