"""Model-level helpers: run a :class:`vae_tf.models.VAE`'s encoder over arrays and return the
NumPy arrays the metric functions take."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vae_tf.metrics._checks import positive_int
from vae_tf.metrics._compiled import compiled_for

ENCODE_BATCH_SIZE = 512


def representation_function(model, batch_size: int = ENCODE_BATCH_SIZE) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> codes``: the family's deterministic ``embedding`` (the encoder mean μ for the Gaussian
    family; DLIB's ``mean`` representation), float64 ``(n, embedding_size)``, computed in batches."""
    import tensorflow as tf  # noqa: PLC0415

    from vae_tf.models.inputs import model_rows  # noqa: PLC0415

    batch_size = positive_int("batch_size", batch_size)
    embed = compiled_for(model, _embed, batch_polymorphic=True)

    def represent(x):
        x = model_rows(model, x, as_array=True)
        return np.concatenate([embed(tf.constant(x[i:i + batch_size])).numpy().astype(np.float64)
                               for i in range(0, len(x), batch_size)], axis=0)

    return represent


def _embed(model, x):
    return model.latent.embedding(model.posterior_params(x))


def _summarise(model, xb, s):
    """``{exported tensors, kl_per_dim}`` of one batch (compiled per model by encode_posterior)."""
    import tensorflow as tf  # noqa: PLC0415

    latent = model.latent
    params = model.posterior_params(xb)
    z = latent.sample(params, seed=s)
    kl = latent.kl_per_dim_diagnostic(params, z, seed=tf.random.experimental.stateless_fold_in(s, 1))
    return {**latent.export_outputs(params), "kl_per_dim": kl}


def encode_posterior(model, x, *, batch_size: int = ENCODE_BATCH_SIZE, seed: int = 0) -> dict:
    """Posterior summaries of every example, NumPy arrays: float64, but integer tensors (a
    categorical family's ``category``) keep their dtype, as the ``encode`` signature gives them:

    - ``embedding`` ``(N, e)``: the deterministic code;
    - ``kl_per_dim`` ``(N, d)``: the family's ``kl_per_dim_diagnostic`` (analytic for the
      Gaussian family; for a family trained with a Monte-Carlo KL, the mean of many draws
      clipped at 0, drawn with stateless seeds ``(seed, batch index)``);
    - the family's exported tensors (``z_mean``, ``z_log_var`` for the Gaussian family), which
      the MI estimators need.
    """
    import tensorflow as tf  # noqa: PLC0415

    from vae_tf.models.inputs import model_rows  # noqa: PLC0415

    x = model_rows(model, x, as_array=True)
    batch_size = positive_int("batch_size", batch_size)
    summarise = compiled_for(model, _summarise, batch_polymorphic=True)
    parts: dict[str, list] = {}
    for b, start in enumerate(range(0, len(x), batch_size)):
        out = summarise(tf.constant(x[start:start + batch_size]), tf.constant([int(seed), b], tf.int32))
        for name, value in out.items():
            value = np.asarray(value)
            parts.setdefault(name, []).append(value if value.dtype.kind in "iu" else value.astype(np.float64))
    return {name: np.concatenate(values, axis=0) for name, values in parts.items()}


__all__ = ["encode_posterior", "representation_function"]
