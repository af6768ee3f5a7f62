"""MLflow pyfunc wrapper, logged as code: MLflow copies this file into the model and runs it on load.

Input: a frame with ``question`` and ``context``; output: answer, score, start, end, abstained.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class MedqaQAModel(PythonModel):
    """Extractive QA over clinical text; research use, not medical advice."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        from medqa.predictor import QAPredictor

        self.predictor = QAPredictor(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ANN001
        records = model_input[["question", "context"]].to_dict("records")
        return pd.DataFrame(self.predictor.predict(records))


mlflow.models.set_model(MedqaQAModel())
