"""The likelihood interface: p(x|z) built from the decoder output (see the package docstring)."""

from __future__ import annotations

import keras
import tensorflow as tf

from vae_tf.lazy_tfp import tfd


def is_number(value) -> bool:
    """A real number that is not a bool (YAML's ``true`` is not a σ)."""
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

    def log_prob_for_evaluation(self, x: tf.Tensor, out: tf.Tensor) -> tf.Tensor:
        """:meth:`log_prob`'s value where no gradient will be taken (importance-weighted
        likelihoods, ELBO estimates): a likelihood whose ``log_prob`` also pays for its gradient
        computes it more cheaply here. Still differentiable. Default: :meth:`log_prob`."""
        return self.log_prob(x, out)

    def mean(self, out: tf.Tensor) -> tf.Tensor:
        return self.base_distribution(out).mean()

    def expected(self, out: tf.Tensor) -> tf.Tensor:
        """A differentiable summary of p(x|z) with the data's shape per element, what an auxiliary
        network reads (the MI regulariser's Q): the mean by default (a categorical's one-hot
        expectation, its probabilities, for words)."""
        return self.mean(out)

    def sample(self, out: tf.Tensor, seed=None) -> tf.Tensor:
        return tf.cast(self.base_distribution(out).sample(seed=seed), tf.float32)

    def sample_rows(self, out: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        """Ancestral decode with one stateless seed (int32 ``[2]``) per row of ``out``."""
        seeds = tf.cast(seeds, tf.int32)
        first = self.mean(out[:1])  # shape and dtype of one row (float32 values, int32 token ids)
        return tf.map_fn(
            lambda args: self.sample(args[0][None], seed=args[1])[0],
            (out, seeds),
            fn_output_signature=tf.TensorSpec(first.shape[1:], first.dtype),
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


__all__ = ["Likelihood", "is_number", "tfd"]
