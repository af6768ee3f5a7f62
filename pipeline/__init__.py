"""Prefect wiring for the medqa pipeline: the stages of dvc.yaml as tasks of one flow, deployed on a
schedule (prefect.yaml, a process work pool) or served from one process (pipeline.serve).

There is no stage logic here. Each task asks DVC to reproduce its own stage of dvc.yaml, so a Prefect
run and a `dvc repro` in a terminal share one dvc.lock and one stage cache; Prefect adds schedules,
retries, run history, the UI and a results artifact per run.
"""

from pipeline.dvc_runner import StageError, pipeline_stages
from pipeline.flows import medqa_pipeline

__all__ = ["StageError", "medqa_pipeline", "pipeline_stages"]
