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
        x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        outputs = self._model.signatures[name](x=tf.constant(x))
        return {key: value.numpy() for key, value in outputs.items()}


mlflow.models.set_model(VaeTfSavedModel())
