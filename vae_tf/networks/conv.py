"""Convolutional networks for images ``(H, W, C)``: stride-2 convolutions, mirrored by stride-2
transposed convolutions, cropped back to ``H x W``."""

from __future__ import annotations

from typing import Sequence

import keras

from vae_tf.networks.common import check_image, conv_grid, float32_output, positive_ints, skip_flag
from vae_tf.networks.skip import skip_conv_decoder


def conv_encoder(data_shape, out_dim, filters: Sequence[int] = (32, 64), dense: int = 256,
                 kernel_size: int = 3, activation="relu", name="encoder", dtype=None):
    check_image(data_shape)
    filters = positive_ints(filters, "model.network.filters")
    layers = [keras.Input(shape=tuple(data_shape))]
    layers += [keras.layers.Conv2D(f, kernel_size, strides=2, padding="same", activation=activation, dtype=dtype)
               for f in filters]
    layers += [keras.layers.Flatten(dtype=dtype), keras.layers.Dense(dense, activation=activation, dtype=dtype),
               keras.layers.Dense(out_dim, name="params", dtype=dtype)]
    return keras.Sequential(layers + float32_output(dtype), name=name)


def conv_decoder(code_size, data_shape, out_channels, filters: Sequence[int] = (32, 64), dense: int = 256,
                 kernel_size: int = 3, activation="relu", skip: bool = False, name="decoder", dtype=None):
    """Mirror of ``conv_encoder``: a dense layer to a ``ceil(H/2^L) x ceil(W/2^L)`` grid, then L
    stride-2 transposed convolutions (the last one emits ``out_channels``), cropped to ``H x W``.
    ``skip``: z also enters the second dense layer and, as feature maps, every transposed
    convolution (module docstring)."""
    check_image(data_shape)
    filters = positive_ints(filters, "model.network.filters")
    h0, w0, crop_h, crop_w = conv_grid(data_shape, filters)
    if skip_flag(skip):
        return skip_conv_decoder(code_size, data_shape, out_channels, filters, dense, kernel_size, activation,
                                 name=name, dtype=dtype)
    layers = [keras.Input(shape=(code_size,)), keras.layers.Dense(dense, activation=activation, dtype=dtype),
              keras.layers.Dense(h0 * w0 * filters[-1], activation=activation, dtype=dtype),
              keras.layers.Reshape((h0, w0, filters[-1]), dtype=dtype)]
    for f in reversed(filters[:-1]):
        layers.append(keras.layers.Conv2DTranspose(f, kernel_size, strides=2, padding="same", activation=activation,
                                                   dtype=dtype))
    layers.append(keras.layers.Conv2DTranspose(out_channels, kernel_size, strides=2, padding="same", name="params",
                                               dtype=dtype))
    if crop_h or crop_w:
        layers.append(keras.layers.Cropping2D(((0, crop_h), (0, crop_w)), dtype=dtype))
    return keras.Sequential(layers + float32_output(dtype), name=name)


__all__ = ["conv_decoder", "conv_encoder"]
