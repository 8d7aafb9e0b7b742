"""Model-level helpers: run a :class:`vae_tf.models.VAE`'s encoder over arrays and return the
NumPy arrays the metric functions take."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vae_tf.errors import DataError
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


def _minibatch_mi(model, xb, s):
    from vae_tf.latents.density import minibatch_mutual_information  # noqa: PLC0415

    return minibatch_mutual_information(model.latent, model.posterior_params(xb), s)


def code_mutual_information(model, x, *, batch_size: int = 50, seed: int = 0) -> float:
    """I_q(x; z) of the whole code, for any latent family: He et al.'s minibatch estimator
    (:func:`vae_tf.latents.density.minibatch_mutual_information`: log q(z_i | x_i) at one draw,
    the exact one-hot category where the family has one) on shuffled batches of ``batch_size``
    examples (seeded by ``seed``), averaged with the batches' sizes as weights (a last batch of
    one example is left out). Capped at about log B nats, as the Gaussian
    :func:`vae_tf.metrics.mutual_information_minibatch`, which has closed-form entropies where
    this has their one-draw estimates."""
    import tensorflow as tf  # noqa: PLC0415

    from vae_tf.models.inputs import model_rows  # noqa: PLC0415

    x = model_rows(model, x, as_array=True)
    batch_size = positive_int("batch_size", batch_size)
    order = np.random.default_rng(seed).permutation(len(x))
    estimate = compiled_for(model, _minibatch_mi, batch_polymorphic=True)
    total = weight = 0.0
    for b, start in enumerate(range(0, len(x), batch_size)):
        rows = order[start:start + batch_size]
        if len(rows) < 2:
            continue
        total += len(rows) * float(estimate(tf.constant(x[rows]), tf.constant([int(seed), b], tf.int32)))
        weight += len(rows)
    if not weight:
        raise DataError(f"code_mutual_information needs at least 2 examples, got {len(x)}")
    return total / weight


__all__ = ["code_mutual_information", "encode_posterior", "representation_function"]
