"""MLflow pyfunc wrapper, logged as code: MLflow copies this file into the model and runs it on load.

Input: a frame with ``question`` and ``context``, and optionally ``params={"min_confidence": x}``
to replace the version's answer policy; output: answer, score, confidence, start, end, abstained,
reason (``medqa.calibration.decide``).
Bad input (a missing field, a wrong type, an empty or over-long context) raises an MlflowException
with INVALID_PARAMETER_VALUE, which ``mlflow models serve`` answers with HTTP 400 and the message.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from medqa.contracts import REQUEST_FIELDS


class MedqaQAModel(PythonModel):
    """Extractive QA over clinical text; research use, not medical advice."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        from medqa.predictor import QAPredictor

        self.predictor = QAPredictor(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ANN001
        from medqa.errors import DataError

        missing = [f for f in REQUEST_FIELDS if f not in model_input.columns]
        if missing:
            raise MlflowException(
                f"missing field(s) {missing}; every record needs question and context",
                error_code=INVALID_PARAMETER_VALUE,
            )
        frame = model_input[list(REQUEST_FIELDS)].astype(object)
        records = frame.where(frame.notna(), None).to_dict(
            "records"
        )  # a field absent from one record is NaN
        floor = (params or {}).get("min_confidence")
        try:
            # object columns: a missing reason or confidence stays None (JSON null); typed columns
            # would make it NaN, which is not JSON
            return pd.DataFrame(self.predictor.predict(records, min_confidence=floor), dtype=object)
        except DataError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(MedqaQAModel())
