"""AR-ELBO (Takida et al. 2022, "Preventing oversmoothing-induced posterior collapse in Gaussian
VAEs"): a Gaussian decoder whose variance σ_x² follows its optimum given the decoder. It is a
likelihood, so it composes with every KL weight, regulariser, input noise and inference procedure
(``model.likelihood: {name: gaussian_adaptive}``)."""

from __future__ import annotations

import keras
import tensorflow as tf

from vae_tf import replicas
from vae_tf.errors import ConfigError
from vae_tf.likelihoods.base import is_number
from vae_tf.likelihoods.standard import GaussianFixedLikelihood


class GaussianAdaptiveLikelihood(GaussianFixedLikelihood):
    """N(x; μ(z), σ_x² I) with σ_x² set to its optimum given the decoder: the AR-ELBO of
    Takida et al. 2022 ("Preventing oversmoothing-induced posterior collapse in Gaussian VAEs").

    Derivation. With D data dimensions,

        E_q[log p(x|z)] = −(D/2) log(2π σ²) − E_q‖x − μ(z)‖² / (2σ²),

    which is maximised over σ² at σ̂² = E_q‖x − μ(z)‖² / D: the mean squared error per data
    dimension. Substituting σ̂² gives ``−(D/2)(log(2π σ̂²) + 1) − KL``: the weight of the KL
    relative to the reconstruction now follows the data instead of the arbitrary σ² = 1, which
    over-smooths the decoder and collapses the posterior when the data's noise is far below 1.

    Update. After every training step, with the step's minibatch MSE ``m`` (no gradient),
    ``σ² ← momentum · σ² + (1 − momentum) · m`` (an exponential moving average; momentum 0 uses
    the last batch alone), floored at ``min_sigma²``. The loss of a step uses the σ² in force
    before its update. ``sigma`` is the starting σ (σ² = sigma²). Under ``tf.distribute`` ``m``
    is the MSE of the global batch, so every replica holds the same σ².
    """

    name_key = "gaussian_adaptive"

    def __init__(self, sigma: float = 1.0, momentum: float = 0.9, min_sigma: float = 1e-3, **kwargs):
        super().__init__(sigma=sigma, **kwargs)
        if not is_number(momentum) or not 0.0 <= momentum < 1.0:
            raise ConfigError(f"model.likelihood.momentum must be in [0, 1), got {momentum!r}")
        if not is_number(min_sigma) or not 0 < min_sigma <= sigma:
            raise ConfigError(f"model.likelihood.min_sigma must be in (0, sigma={sigma}], got {min_sigma!r}")
        self.momentum = float(momentum)
        self.min_sigma = float(min_sigma)
        self.sigma2 = self.add_weight(name="sigma_x2", shape=(), trainable=False,
                                      initializer=keras.initializers.Constant(self.sigma**2))

    def scale(self, out):
        return tf.fill(tf.shape(out), tf.sqrt(tf.convert_to_tensor(self.sigma2)))

    @staticmethod
    def batch_mse(x, out) -> tf.Tensor:
        """Mean squared error per data dimension over the batch, ``E‖x − μ(z)‖² / D``."""
        return tf.reduce_mean(tf.square(tf.cast(x, tf.float32) - out))

    def observe(self, x, out):
        # Under tf.distribute: the MSE of the global batch (all-reduced), so σ² stays the same on
        # every replica; on one device the plain batch MSE.
        if replicas.replica_context() is None:
            mse = tf.stop_gradient(self.batch_mse(x, out))
        else:
            per_example = tf.reduce_mean(tf.square(tf.cast(x, tf.float32) - out),
                                         axis=list(range(1, 1 + self.data_rank)))
            mse = tf.stop_gradient(replicas.global_mean(per_example))
        updated = self.momentum * self.sigma2 + (1.0 - self.momentum) * mse
        self.sigma2.assign(tf.maximum(updated, self.min_sigma**2))

    def state(self):
        sigma2 = tf.convert_to_tensor(self.sigma2)
        return {"sigma_x": tf.sqrt(sigma2), "sigma_x2": sigma2}

    def describe(self):
        return {**super().describe(), "momentum": self.momentum, "min_sigma": self.min_sigma}

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "min_sigma": self.min_sigma}



__all__ = ["GaussianAdaptiveLikelihood"]
