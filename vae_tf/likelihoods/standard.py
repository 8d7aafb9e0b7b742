"""The fixed-form likelihoods: Bernoulli, continuous Bernoulli, Gaussian with fixed, learned
scalar, or per-value σ. (AR-ELBO's adaptive σ is in :mod:`vae_tf.likelihoods.ar_elbo`.)"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from vae_tf.errors import ConfigError
from vae_tf.likelihoods.base import Likelihood, is_number, tfd


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

    def sample(self, out, seed=None):
        """A 0/1 draw per value: ``u < sigmoid(logits)`` with ``u`` uniform on [0, 1), stateless from
        ``seed`` (int32 ``[2]``) when given. The same draw as TFP's ``Bernoulli(logits).sample(seed=
        seed)`` for the same seed (tested), written out so that sampling, which every `vae-tf train`
        does for its figures and its exported ``sample`` signature, does not import TFP (~1 s)."""
        probs = tf.sigmoid(out)
        uniform = (tf.random.uniform(tf.shape(probs), dtype=probs.dtype) if seed is None else
                   tf.random.stateless_uniform(tf.shape(probs), seed=tf.cast(seed, tf.int32), dtype=probs.dtype))
        return tf.cast(uniform < probs, tf.float32)


class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalised density on [0, 1]."""

    name_key = "continuous_bernoulli"
    support = (0.0, 1.0)

    def base_distribution(self, out):
        return tfd.ContinuousBernoulli(logits=out)


class GaussianFixedLikelihood(Likelihood):
    """N(x; μ(z), σ² I) with a fixed σ (``sigma``, default 1.0). The decoder emits μ."""

    name_key = "gaussian"

    def __init__(self, sigma: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not is_number(sigma) or not sigma > 0:
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


class GaussianLearnedScalarLikelihood(GaussianFixedLikelihood):
    """N(x; μ(z), σ² I) with one trainable σ shared by all values (Dai & Wipf 2019; Lucas et al.
    2019). σ = ``min_sigma`` + softplus(ρ), ρ a trainable scalar initialised so that σ starts at
    ``sigma``; ``min_sigma`` (default 1e-3) is the variance floor that keeps log p finite."""

    name_key = "gaussian_learned"

    def __init__(self, sigma: float = 1.0, min_sigma: float = 1e-3, **kwargs):
        super().__init__(sigma=sigma, **kwargs)
        if not is_number(min_sigma) or not 0 < min_sigma < sigma:
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



class GaussianPerPixelLikelihood(Likelihood):
    """N(x; μ(z), diag σ²(z)): the decoder emits μ and a raw scale per value ("VAEs: theory and
    implementations" §5.1). σ = ``min_sigma`` + softplus(raw); the floor (default 1e-3) stops the
    density from growing without bound on values the decoder matches exactly."""

    name_key = "gaussian_per_pixel"
    param_channels = 2

    def __init__(self, min_sigma: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        if not is_number(min_sigma) or not min_sigma > 0:
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



__all__ = ["BernoulliLikelihood", "ContinuousBernoulliLikelihood", "GaussianFixedLikelihood",
           "GaussianLearnedScalarLikelihood", "GaussianPerPixelLikelihood"]
