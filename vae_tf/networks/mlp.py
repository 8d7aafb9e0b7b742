"""Multi-layer perceptrons for any data shape (the input is flattened)."""

from __future__ import annotations

import math
from typing import Sequence

import keras

from vae_tf.networks.common import float32_output, positive_ints, skip_flag
from vae_tf.networks.skip import skip_mlp_decoder


def mlp_encoder(data_shape, out_dim, hidden: Sequence[int] = (256, 128), activation="relu", name="encoder",
                dtype=None):
    hidden = positive_ints(hidden, "model.network.hidden")
    layers = [keras.Input(shape=tuple(data_shape)), keras.layers.Flatten(dtype=dtype)]
    layers += [keras.layers.Dense(h, activation=activation, dtype=dtype) for h in hidden]
    layers.append(keras.layers.Dense(out_dim, name="params", dtype=dtype))
    return keras.Sequential(layers + float32_output(dtype), name=name)


def mlp_decoder(code_size, data_shape, out_channels, hidden: Sequence[int] = (256, 128),
                activation="relu", skip: bool = False, name="decoder", dtype=None):
    """Dense layers ``reversed(hidden)``, then a dense layer to the likelihood's parameters.
    ``skip``: the Skip-VAE decoder instead (:func:`vae_tf.networks.skip.skip_mlp_decoder`)."""
    hidden = positive_ints(hidden, "model.network.hidden")
    out_shape = tuple(data_shape[:-1]) + (out_channels,)
    if skip_flag(skip):
        return skip_mlp_decoder(code_size, data_shape, out_channels, hidden, activation, name=name, dtype=dtype)
    layers = [keras.Input(shape=(code_size,))]
    layers += [keras.layers.Dense(h, activation=activation, dtype=dtype) for h in reversed(hidden)]
    layers += [keras.layers.Dense(math.prod(out_shape), name="params", dtype=dtype),
               keras.layers.Reshape(out_shape, dtype=dtype)]
    return keras.Sequential(layers + float32_output(dtype), name=name)


__all__ = ["mlp_decoder", "mlp_encoder"]
