"""Prefect wiring for the medqa pipeline: the five DVC stages as tasks of one flow, served on a schedule.

There is no stage logic here. Each task asks DVC to reproduce its own stage of dvc.yaml, so a Prefect
run and a `dvc repro` in a terminal share one dvc.lock and one stage cache; Prefect adds schedules,
retries, run history, the UI and a results artifact per run.
"""

from pipeline.flows import STAGES, StageError, medqa_pipeline

__all__ = ["STAGES", "StageError", "medqa_pipeline"]
