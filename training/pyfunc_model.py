"""MLflow pyfunc wrapping an exported vae-tf SavedModel (models-from-code).

MLflow loads this file, not a pickle. ``predict`` runs one SavedModel signature, chosen with the
``signature`` param (``encode`` by default; ``reconstruct`` also takes images), and returns its
named outputs as NumPy arrays.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

PYFUNC_SIGNATURES = ("encode", "reconstruct")


class VaeTfSavedModel(PythonModel):
    def load_context(self, context):
        import tensorflow as tf

        self._model = tf.saved_model.load(context.artifacts["saved_model"])

    def predict(self, context, model_input, params=None):
        import tensorflow as tf

        name = (params or {}).get("signature", "encode")
        if name not in PYFUNC_SIGNATURES:
            raise ValueError(f"signature {name!r} is not served by the pyfunc model; choose one of {', '.join(PYFUNC_SIGNATURES)}")
        if isinstance(model_input, dict):  # named-tensor schema: {"x": array}
            model_input = model_input.get("x", next(iter(model_input.values())))
        if hasattr(model_input, "to_numpy"):  # pandas
            model_input = model_input.to_numpy()
        x = np.asarray(model_input, dtype=np.float32)
        outputs = self._model.signatures[name](x=tf.constant(x))
        return {key: value.numpy() for key, value in outputs.items()}


mlflow.models.set_model(VaeTfSavedModel())
