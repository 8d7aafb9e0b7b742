"""Skip-VAE decoders (Dieng, Kim, Rush, Blei 2019, "Avoiding latent variable collapse with
generative skip models", Eq. 6): the code z reaches every layer of the decoder directly, not only
the first one, ``h_l = f(W_l h_{l-1} + W'_l z)``, so the decoder cannot make z irrelevant by washing
it out through its depth. A network option (``model.network.skip: true``), so it composes with every
slot of the objective.

- ``mlp``: z is concatenated to the input of every hidden layer after the first and to the output
  layer's;
- ``conv``: z is concatenated to the input of the second dense layer and, broadcast over the spatial
  grid as ``code_size`` constant feature maps (:class:`ConcatCodeMaps`), to the input of every
  transposed convolution.

With ``skip: false`` (the default) the plain decoders of :mod:`vae_tf.networks.mlp` and
:mod:`vae_tf.networks.conv` are built; the encoder ignores the option.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras

from vae_tf.networks.common import cast_output, check_image, conv_grid, positive_ints


@keras.saving.register_keras_serializable(package="vae_tf")
class ConcatCodeMaps(keras.layers.Layer):
    """``[h, z] -> concat(h, z broadcast to h's spatial grid)`` along channels: z as ``code_size``
    constant feature maps (the conv form of a Skip-VAE connection, Dieng et al. 2019)."""

    def call(self, inputs):
        h, z = inputs
        height, width = int(h.shape[1]), int(h.shape[2])
        # Broadcast, not tiled: the gradient of a tile transposes an integer tensor, which TensorFlow
        # 2.21's oneDNN build reports as an error on every CPU (vae_tf.networks.recurrent._transpose_ids).
        batch, code = keras.ops.shape(z)[0], keras.ops.shape(z)[1]
        maps = keras.ops.broadcast_to(z[:, None, None, :], (batch, height, width, code))
        return keras.ops.concatenate([h, keras.ops.cast(maps, h.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        h_shape, z_shape = input_shape
        return tuple(h_shape[:-1]) + (h_shape[-1] + z_shape[-1],)


def skip_mlp_decoder(code_size, data_shape, out_channels, hidden: Sequence[int] = (256, 128), activation="relu",
                     name="decoder", dtype=None):
    """The mlp decoder (dense layers ``reversed(hidden)``, then the likelihood's parameters) with z
    concatenated to the input of every layer after the first (module docstring)."""
    hidden = positive_ints(hidden, "model.network.hidden")
    out_shape = tuple(data_shape[:-1]) + (out_channels,)
    z = keras.Input(shape=(code_size,), name="z")
    h = z
    for i, units in enumerate(reversed(hidden)):
        h = keras.layers.Dense(units, activation=activation, name=f"hidden_{i}", dtype=dtype)(
            z if i == 0 else keras.layers.Concatenate(name=f"skip_{i}", dtype=dtype)([h, z]))
    h = keras.layers.Concatenate(name=f"skip_{len(hidden)}", dtype=dtype)([h, z])
    out = keras.layers.Dense(math.prod(out_shape), name="params", dtype=dtype)(h)
    return keras.Model(z, cast_output(keras.layers.Reshape(out_shape, dtype=dtype)(out), dtype), name=name)


def skip_conv_decoder(code_size, data_shape, out_channels, filters: Sequence[int] = (32, 64), dense: int = 256,
                      kernel_size: int = 3, activation="relu", name="decoder", dtype=None):
    """The conv decoder with z entering the second dense layer and every transposed convolution
    (module docstring)."""
    check_image(data_shape)
    filters = positive_ints(filters, "model.network.filters")
    h0, w0, crop_h, crop_w = conv_grid(data_shape, filters)
    z = keras.Input(shape=(code_size,), name="z")
    h = keras.layers.Dense(dense, activation=activation, name="hidden_0", dtype=dtype)(z)
    h = keras.layers.Dense(h0 * w0 * filters[-1], activation=activation, name="hidden_1", dtype=dtype)(
        keras.layers.Concatenate(name="skip_1", dtype=dtype)([h, z]))
    h = keras.layers.Reshape((h0, w0, filters[-1]), dtype=dtype)(h)
    for i, f in enumerate(reversed(filters[:-1])):
        h = keras.layers.Conv2DTranspose(f, kernel_size, strides=2, padding="same", activation=activation,
                                         name=f"hidden_{i + 2}", dtype=dtype)(
            ConcatCodeMaps(name=f"skip_{i + 2}", dtype=dtype)([h, z]))
    h = keras.layers.Conv2DTranspose(out_channels, kernel_size, strides=2, padding="same", name="params",
                                     dtype=dtype)(ConcatCodeMaps(name=f"skip_{len(filters) + 1}", dtype=dtype)([h, z]))
    if crop_h or crop_w:
        h = keras.layers.Cropping2D(((0, crop_h), (0, crop_w)), dtype=dtype)(h)
    return keras.Model(z, cast_output(h, dtype), name=name)


__all__ = ["ConcatCodeMaps", "skip_conv_decoder", "skip_mlp_decoder"]
