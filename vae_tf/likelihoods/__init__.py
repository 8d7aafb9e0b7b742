"""Observation models p(x|z) built on ``tfp.distributions``.

The decoder emits ``out`` with the data's shape, except that the last axis is
``param_channels`` times wider (per-pixel σ(z) needs two numbers per value). A likelihood turns
``out`` into a distribution over one whole example:

- ``log_prob(x, out)``: log p(x|z) **summed over every data dimension**, shape ``[B]`` (nats);
- ``mean(out)``: the deterministic decode E[x|z];
- ``sample(out, seed)``: the ancestral decode x ~ p(x|z);
- ``sample_rows(out, seeds)``: the ancestral decode, row i drawn from ``seeds[i]`` alone.

``support`` is the closed interval the data must lie in (``None``: the real line); the data
loader checks it before training starts.

``LIKELIHOODS`` maps config names to classes; ``build_likelihood(name, **options)`` builds one.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from vae_tf._registry import Registry, check_options
from vae_tf.errors import ConfigError

tfd = tfp.distributions

LIKELIHOODS: Registry[type["Likelihood"]] = Registry("likelihood")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Likelihood(keras.layers.Layer):
    """Base class: builds p(x|z) from the decoder output."""

    name_key: str = ""
    param_channels: int = 1
    support: tuple[float, float] | None = None
    #: Whether ``log_prob`` is a normalised density on any data in ``support`` (IW-NLL is reported
    #: only for those).
    normalised: bool = True

    def __init__(self, data_rank: int = 1, **kwargs):
        super().__init__(**kwargs)
        # Number of data axes after the batch axis (1 for vectors, 3 for images).
        self.data_rank = int(data_rank)

    def base_distribution(self, out: tf.Tensor):
        """Elementwise distribution with batch shape ``[B, *data_shape]``."""
        raise NotImplementedError

    def distribution(self, out: tf.Tensor):
        """p(x|z) for whole examples: batch shape ``[B]``, event shape ``data_shape``."""
        return tfd.Independent(self.base_distribution(out), reinterpreted_batch_ndims=self.data_rank)

    def log_prob(self, x: tf.Tensor, out: tf.Tensor) -> tf.Tensor:
        """log p(x|z) summed over data dimensions, ``[B]`` nats."""
        return self.distribution(out).log_prob(x)

    def mean(self, out: tf.Tensor) -> tf.Tensor:
        return self.base_distribution(out).mean()

    def sample(self, out: tf.Tensor, seed=None) -> tf.Tensor:
        return tf.cast(self.base_distribution(out).sample(seed=seed), tf.float32)

    def sample_rows(self, out: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        """Ancestral decode with one stateless seed (int32 ``[2]``) per row of ``out``."""
        seeds = tf.cast(seeds, tf.int32)
        row_shape = self.mean(out[:1]).shape[1:]
        return tf.map_fn(
            lambda args: self.sample(args[0][None], seed=args[1])[0],
            (out, seeds),
            fn_output_signature=tf.TensorSpec(row_shape, tf.float32),
        )

    def call(self, out):
        return self.mean(out)

    def observe(self, x: tf.Tensor, out: tf.Tensor) -> None:
        """Called after every training step with the batch and the decoder output; likelihoods
        with running state (AR-ELBO's decoder variance) update it here."""

    def state(self) -> dict:
        """Scalars worth logging (e.g. a learned σ)."""
        return {}

    def describe(self) -> dict:
        """What the SavedModel's assets record about the likelihood."""
        return {"name": self.name_key, "support": list(self.support) if self.support else None}

    def get_config(self):
        config = super().get_config()
        config.update(data_rank=self.data_rank)
        return config


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli per value; the decoder emits logits. Data must lie in [0, 1].

    For non-binary data in [0, 1] the log "probability" is the cross-entropy, which is not a
    normalised density (Loaiza-Ganem & Cunningham 2019): use ``continuous_bernoulli`` for a
    proper likelihood on grey levels.
    """

    name_key = "bernoulli"
    support = (0.0, 1.0)
    normalised = False  # a density only on binary {0, 1} data

    def base_distribution(self, out):
        return tfd.Bernoulli(logits=out, dtype=tf.float32)

    def log_prob(self, x, out):
        # Written out so that grey-level targets in [0, 1] give the cross-entropy (TFP's Bernoulli
        # would round them); equals TFP's value on {0, 1} data.
        per_value = -tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=out)
        return tf.reduce_sum(per_value, axis=list(range(1, 1 + self.data_rank)))

    def mean(self, out):
        return tf.sigmoid(out)


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalised density on [0, 1]."""

    name_key = "continuous_bernoulli"
    support = (0.0, 1.0)

    def base_distribution(self, out):
        return tfd.ContinuousBernoulli(logits=out)


@LIKELIHOODS.register("gaussian")
class GaussianFixedLikelihood(Likelihood):
    """N(x; μ(z), σ² I) with a fixed σ (``sigma``, default 1.0). The decoder emits μ."""

    name_key = "gaussian"

    def __init__(self, sigma: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not _is_number(sigma) or not sigma > 0:
            raise ConfigError(f"model.likelihood.sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def scale(self, out):
        return tf.fill(tf.shape(out), tf.constant(self.sigma, tf.float32))

    def base_distribution(self, out):
        return tfd.Normal(loc=out, scale=self.scale(out))

    def mean(self, out):
        return out

    def describe(self):
        return {**super().describe(), "sigma": self.sigma}

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma}


@LIKELIHOODS.register("gaussian_learned")
class GaussianLearnedScalarLikelihood(GaussianFixedLikelihood):
    """N(x; μ(z), σ² I) with one trainable σ shared by all values (Dai & Wipf 2019; Lucas et al.
    2019). σ = ``min_sigma`` + softplus(ρ), ρ a trainable scalar initialised so that σ starts at
    ``sigma``; ``min_sigma`` (default 1e-3) is the variance floor that keeps log p finite."""

    name_key = "gaussian_learned"

    def __init__(self, sigma: float = 1.0, min_sigma: float = 1e-3, **kwargs):
        super().__init__(sigma=sigma, **kwargs)
        if not _is_number(min_sigma) or not 0 < min_sigma < sigma:
            raise ConfigError(f"model.likelihood.min_sigma must be in (0, sigma={sigma}), got {min_sigma!r}")
        self.min_sigma = float(min_sigma)
        start = self.sigma - self.min_sigma
        self.raw_sigma = self.add_weight(
            name="raw_sigma",
            shape=(),
            initializer=keras.initializers.Constant(math.log(math.expm1(start))),  # softplus⁻¹
            trainable=True,
        )

    def current_sigma(self) -> tf.Tensor:
        return self.min_sigma + tf.nn.softplus(tf.convert_to_tensor(self.raw_sigma))

    def scale(self, out):
        return tf.fill(tf.shape(out), self.current_sigma())

    def state(self):
        sigma = self.current_sigma()
        return {"sigma_x": sigma, "sigma_x2": tf.square(sigma)}

    def describe(self):
        return {**super().describe(), "min_sigma": self.min_sigma}

    def get_config(self):
        return {**super().get_config(), "min_sigma": self.min_sigma}


@LIKELIHOODS.register("gaussian_adaptive")
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
        if not _is_number(momentum) or not 0.0 <= momentum < 1.0:
            raise ConfigError(f"model.likelihood.momentum must be in [0, 1), got {momentum!r}")
        if not _is_number(min_sigma) or not 0 < min_sigma <= sigma:
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
        # every replica; on one device the plain batch MSE. (Imported here: vae_tf.models
        # imports this module.)
        from vae_tf.models.replicas import global_mean, replica_context

        if replica_context() is None:
            mse = tf.stop_gradient(self.batch_mse(x, out))
        else:
            per_example = tf.reduce_mean(tf.square(tf.cast(x, tf.float32) - out),
                                         axis=list(range(1, 1 + self.data_rank)))
            mse = tf.stop_gradient(global_mean(per_example))
        updated = self.momentum * self.sigma2 + (1.0 - self.momentum) * mse
        self.sigma2.assign(tf.maximum(updated, self.min_sigma**2))

    def state(self):
        sigma2 = tf.convert_to_tensor(self.sigma2)
        return {"sigma_x": tf.sqrt(sigma2), "sigma_x2": sigma2}

    def describe(self):
        return {**super().describe(), "momentum": self.momentum, "min_sigma": self.min_sigma}

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "min_sigma": self.min_sigma}


@LIKELIHOODS.register("gaussian_per_pixel")
class GaussianPerPixelLikelihood(Likelihood):
    """N(x; μ(z), diag σ²(z)): the decoder emits μ and a raw scale per value ("VAEs: theory and
    implementations" §5.1). σ = ``min_sigma`` + softplus(raw); the floor (default 1e-3) stops the
    density from growing without bound on values the decoder matches exactly."""

    name_key = "gaussian_per_pixel"
    param_channels = 2

    def __init__(self, min_sigma: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        if not _is_number(min_sigma) or not min_sigma > 0:
            raise ConfigError(f"model.likelihood.min_sigma must be > 0, got {min_sigma!r}")
        self.min_sigma = float(min_sigma)

    def split(self, out):
        loc, raw = tf.split(out, 2, axis=-1)
        return loc, self.min_sigma + tf.nn.softplus(raw)

    def base_distribution(self, out):
        loc, scale = self.split(out)
        return tfd.Normal(loc=loc, scale=scale)

    def mean(self, out):
        return self.split(out)[0]

    def describe(self):
        return {**super().describe(), "min_sigma": self.min_sigma}

    def get_config(self):
        return {**super().get_config(), "min_sigma": self.min_sigma}


def build_likelihood(name: str, data_rank: int, **options) -> Likelihood:
    """Build a registered likelihood; bad options give a one-line ConfigError."""
    cls = LIKELIHOODS.get(name)
    check_options(cls, options, f"model.likelihood {name!r}", reserved=("data_rank", "name", "dtype", "trainable"))
    return cls(data_rank=data_rank, **options)


__all__ = [
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianAdaptiveLikelihood",
    "GaussianFixedLikelihood",
    "GaussianLearnedScalarLikelihood",
    "GaussianPerPixelLikelihood",
    "Likelihood",
    "build_likelihood",
]
