"""Encoder and decoder builders sized from the data shape.

``build_encoder(kind, data_shape, out_dim, **options)`` returns a Keras model mapping
``[B, *data_shape]`` to the latent family's raw parameters ``[B, out_dim]``;
``build_decoder(kind, code_size, data_shape, out_channels, **options)`` maps a code ``[B, d]`` to
the likelihood's raw parameters ``[B, *data_shape[:-1], out_channels]``.

Kinds: ``mlp`` (any data; flattens) and ``conv`` (images ``(H, W, C)``: stride-2 convolutions,
mirrored by stride-2 transposed convolutions, cropped back to ``H x W``).
"""

from __future__ import annotations

import math
from typing import Sequence

import keras

from vae_tf._registry import Registry, check_options
from vae_tf.errors import ConfigError

NETWORKS: Registry[tuple] = Registry("network")


def _positive_ints(values, what: str) -> list[int]:
    values = list(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{what} must be a non-empty list of positive integers, got {values!r}")
    return values


def mlp_encoder(data_shape, out_dim, hidden: Sequence[int] = (256, 128), activation="relu", name="encoder"):
    hidden = _positive_ints(hidden, "model.network.hidden")
    layers = [keras.Input(shape=tuple(data_shape)), keras.layers.Flatten()]
    layers += [keras.layers.Dense(h, activation=activation) for h in hidden]
    layers.append(keras.layers.Dense(out_dim, name="params"))
    return keras.Sequential(layers, name=name)


def mlp_decoder(code_size, data_shape, out_channels, hidden: Sequence[int] = (256, 128),
                activation="relu", name="decoder"):
    hidden = _positive_ints(hidden, "model.network.hidden")
    out_shape = tuple(data_shape[:-1]) + (out_channels,)
    layers = [keras.Input(shape=(code_size,))]
    layers += [keras.layers.Dense(h, activation=activation) for h in reversed(hidden)]
    layers += [keras.layers.Dense(math.prod(out_shape), name="params"), keras.layers.Reshape(out_shape)]
    return keras.Sequential(layers, name=name)


def _check_image(data_shape):
    if len(data_shape) != 3:
        raise ConfigError(
            f"model.network.kind=conv needs images of shape (H, W, C), the data has shape {tuple(data_shape)}; "
            "use model.network.kind=mlp"
        )


def conv_encoder(data_shape, out_dim, filters: Sequence[int] = (32, 64), dense: int = 256,
                 kernel_size: int = 3, activation="relu", name="encoder"):
    _check_image(data_shape)
    filters = _positive_ints(filters, "model.network.filters")
    layers = [keras.Input(shape=tuple(data_shape))]
    layers += [keras.layers.Conv2D(f, kernel_size, strides=2, padding="same", activation=activation) for f in filters]
    layers += [keras.layers.Flatten(), keras.layers.Dense(dense, activation=activation),
               keras.layers.Dense(out_dim, name="params")]
    return keras.Sequential(layers, name=name)


def conv_decoder(code_size, data_shape, out_channels, filters: Sequence[int] = (32, 64), dense: int = 256,
                 kernel_size: int = 3, activation="relu", name="decoder"):
    """Mirror of ``conv_encoder``: a dense layer to a ``ceil(H/2^L) x ceil(W/2^L)`` grid, then L
    stride-2 transposed convolutions (the last one emits ``out_channels``), cropped to ``H x W``."""
    _check_image(data_shape)
    filters = _positive_ints(filters, "model.network.filters")
    height, width = int(data_shape[0]), int(data_shape[1])
    up = 2 ** len(filters)
    h0, w0 = math.ceil(height / up), math.ceil(width / up)
    layers = [keras.Input(shape=(code_size,)), keras.layers.Dense(dense, activation=activation),
              keras.layers.Dense(h0 * w0 * filters[-1], activation=activation),
              keras.layers.Reshape((h0, w0, filters[-1]))]
    for f in reversed(filters[:-1]):
        layers.append(keras.layers.Conv2DTranspose(f, kernel_size, strides=2, padding="same", activation=activation))
    layers.append(keras.layers.Conv2DTranspose(out_channels, kernel_size, strides=2, padding="same", name="params"))
    crop_h, crop_w = h0 * up - height, w0 * up - width
    if crop_h or crop_w:
        layers.append(keras.layers.Cropping2D(((0, crop_h), (0, crop_w))))
    return keras.Sequential(layers, name=name)


NETWORKS.register("mlp")((mlp_encoder, mlp_decoder))
NETWORKS.register("conv")((conv_encoder, conv_decoder))


def build_encoder(kind: str, data_shape, out_dim: int, **options) -> keras.Model:
    encoder_fn, _ = NETWORKS.get(kind)
    check_options(encoder_fn, options, f"model.network {kind!r}", reserved=("data_shape", "out_dim", "name"))
    return encoder_fn(tuple(data_shape), int(out_dim), **options)


def build_decoder(kind: str, code_size: int, data_shape, out_channels: int, **options) -> keras.Model:
    _, decoder_fn = NETWORKS.get(kind)
    check_options(decoder_fn, options, f"model.network {kind!r}", reserved=("code_size", "data_shape", "out_channels", "name"))
    return decoder_fn(int(code_size), tuple(data_shape), int(out_channels), **options)


__all__ = ["NETWORKS", "build_decoder", "build_encoder", "conv_decoder", "conv_encoder", "mlp_decoder", "mlp_encoder"]
