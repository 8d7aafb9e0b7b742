"""Encoder and decoder builders sized from the data shape.

``build_encoder(kind, data_shape, out_dim, **options)`` returns a Keras model mapping
``[B, *data_shape]`` to the latent family's raw parameters ``[B, out_dim]``;
``build_decoder(kind, code_size, data_shape, out_channels, **options)`` maps a code ``[B, d]`` to
the likelihood's raw parameters ``[B, *data_shape[:-1], out_channels]``.

Kinds: ``mlp`` (any data; flattens) and ``conv`` (images ``(H, W, C)``: stride-2 convolutions,
mirrored by stride-2 transposed convolutions, cropped back to ``H x W``).

**Skip decoders** (``skip: true``, any kind; Dieng, Kim, Rush, Blei 2019, "Avoiding latent
variable collapse with generative skip models", Eq. 6): the code z reaches every layer of the
decoder directly, not only the first one, ``h_l = f(W_l h_{l-1} + W'_l z)`` — for ``mlp`` z is
concatenated to the input of every hidden layer after the first and to the output layer's; for
``conv`` z is concatenated to the input of the second dense layer and, broadcast over the spatial
grid as ``code_size`` constant feature maps (:class:`ConcatCodeMaps`), to the input of every
transposed convolution. The decoder then cannot make z irrelevant by washing it out through its
depth. ``skip`` concerns the decoder only (the encoder ignores it); with ``skip: false`` (the
default) the layer structure is exactly the plain one.

**Precision** (``dtype``, set by ``build_vae(precision=...)``, not a ``model.network`` option):
every layer gets that Keras dtype policy (per layer, no global policy is touched); with a
16-bit policy (``mixed_bfloat16``, ``mixed_float16``: float32 variables, 16-bit compute) the
network ends with a float32 ``Activation("linear")`` named ``float32_output``, so whatever reads
a network's output (latent family, likelihood, metrics, the export) gets float32.
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


def _is_mixed(dtype) -> bool:
    return dtype is not None and keras.dtype_policies.get(dtype).compute_dtype != "float32"


def _float32_output(dtype) -> list:
    """``[]``, or for a 16-bit policy the layer that casts the network's output to float32: the
    latent family and the likelihood (KL, log-probabilities) always compute in float32."""
    return [keras.layers.Activation("linear", dtype="float32", name="float32_output")] if _is_mixed(dtype) else []


def _cast_output(h, dtype):
    """The functional-API form of :func:`_float32_output`."""
    return _float32_output(dtype)[0](h) if _is_mixed(dtype) else h


def mlp_encoder(data_shape, out_dim, hidden: Sequence[int] = (256, 128), activation="relu", name="encoder",
                dtype=None):
    hidden = _positive_ints(hidden, "model.network.hidden")
    layers = [keras.Input(shape=tuple(data_shape)), keras.layers.Flatten(dtype=dtype)]
    layers += [keras.layers.Dense(h, activation=activation, dtype=dtype) for h in hidden]
    layers.append(keras.layers.Dense(out_dim, name="params", dtype=dtype))
    return keras.Sequential(layers + _float32_output(dtype), name=name)


def _skip_flag(skip) -> bool:
    if not isinstance(skip, bool):
        raise ConfigError(f"model.network.skip must be true or false, got {skip!r}")
    return skip


@keras.saving.register_keras_serializable(package="vae_tf")
class ConcatCodeMaps(keras.layers.Layer):
    """``[h, z] -> concat(h, z broadcast to h's spatial grid)`` along channels: z as ``code_size``
    constant feature maps (the conv form of a Skip-VAE connection, Dieng et al. 2019)."""

    def call(self, inputs):
        h, z = inputs
        height, width = int(h.shape[1]), int(h.shape[2])
        maps = keras.ops.tile(keras.ops.expand_dims(keras.ops.expand_dims(z, 1), 1), [1, height, width, 1])
        return keras.ops.concatenate([h, keras.ops.cast(maps, h.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        h_shape, z_shape = input_shape
        return tuple(h_shape[:-1]) + (h_shape[-1] + z_shape[-1],)


def mlp_decoder(code_size, data_shape, out_channels, hidden: Sequence[int] = (256, 128),
                activation="relu", skip: bool = False, name="decoder", dtype=None):
    """Dense layers ``reversed(hidden)``, then a dense layer to the likelihood's parameters.
    ``skip``: z is also concatenated to the input of every later layer (module docstring)."""
    hidden = _positive_ints(hidden, "model.network.hidden")
    out_shape = tuple(data_shape[:-1]) + (out_channels,)
    if _skip_flag(skip):
        z = keras.Input(shape=(code_size,), name="z")
        h = z
        for i, units in enumerate(reversed(hidden)):
            h = keras.layers.Dense(units, activation=activation, name=f"hidden_{i}", dtype=dtype)(
                z if i == 0 else keras.layers.Concatenate(name=f"skip_{i}", dtype=dtype)([h, z]))
        h = keras.layers.Concatenate(name=f"skip_{len(hidden)}", dtype=dtype)([h, z])
        out = keras.layers.Dense(math.prod(out_shape), name="params", dtype=dtype)(h)
        return keras.Model(z, _cast_output(keras.layers.Reshape(out_shape, dtype=dtype)(out), dtype), name=name)
    layers = [keras.Input(shape=(code_size,))]
    layers += [keras.layers.Dense(h, activation=activation, dtype=dtype) for h in reversed(hidden)]
    layers += [keras.layers.Dense(math.prod(out_shape), name="params", dtype=dtype),
               keras.layers.Reshape(out_shape, dtype=dtype)]
    return keras.Sequential(layers + _float32_output(dtype), name=name)


def _check_image(data_shape):
    if len(data_shape) != 3:
        raise ConfigError(
            f"model.network.kind=conv needs images of shape (H, W, C), the data has shape {tuple(data_shape)}; "
            "use model.network.kind=mlp"
        )


def conv_encoder(data_shape, out_dim, filters: Sequence[int] = (32, 64), dense: int = 256,
                 kernel_size: int = 3, activation="relu", name="encoder", dtype=None):
    _check_image(data_shape)
    filters = _positive_ints(filters, "model.network.filters")
    layers = [keras.Input(shape=tuple(data_shape))]
    layers += [keras.layers.Conv2D(f, kernel_size, strides=2, padding="same", activation=activation, dtype=dtype)
               for f in filters]
    layers += [keras.layers.Flatten(dtype=dtype), keras.layers.Dense(dense, activation=activation, dtype=dtype),
               keras.layers.Dense(out_dim, name="params", dtype=dtype)]
    return keras.Sequential(layers + _float32_output(dtype), name=name)


def conv_decoder(code_size, data_shape, out_channels, filters: Sequence[int] = (32, 64), dense: int = 256,
                 kernel_size: int = 3, activation="relu", skip: bool = False, name="decoder", dtype=None):
    """Mirror of ``conv_encoder``: a dense layer to a ``ceil(H/2^L) x ceil(W/2^L)`` grid, then L
    stride-2 transposed convolutions (the last one emits ``out_channels``), cropped to ``H x W``.
    ``skip``: z also enters the second dense layer and, as feature maps, every transposed
    convolution (module docstring)."""
    _check_image(data_shape)
    filters = _positive_ints(filters, "model.network.filters")
    height, width = int(data_shape[0]), int(data_shape[1])
    up = 2 ** len(filters)
    h0, w0 = math.ceil(height / up), math.ceil(width / up)
    crop_h, crop_w = h0 * up - height, w0 * up - width
    if _skip_flag(skip):
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
        return keras.Model(z, _cast_output(h, dtype), name=name)
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
    return keras.Sequential(layers + _float32_output(dtype), name=name)


NETWORKS.register("mlp")((mlp_encoder, mlp_decoder))
NETWORKS.register("conv")((conv_encoder, conv_decoder))


#: Options that shape the decoder only; ``build_encoder`` accepts and ignores them, so one
#: ``model.network`` mapping configures both networks.
DECODER_ONLY_OPTIONS = ("skip",)


def build_encoder(kind: str, data_shape, out_dim: int, *, name: str = "encoder", what: str = "model.network",
                  dtype=None, **options) -> keras.Model:
    """The encoder of ``kind`` (also used for auxiliary networks that read data, e.g. the Q
    network of MI maximisation: ``name`` and ``what``, the config path named in errors).
    ``dtype``: the Keras dtype policy of every layer (``"mixed_bfloat16"``, ...; module docstring)."""
    encoder_fn, _ = NETWORKS.get(kind)
    options = {k: v for k, v in options.items() if k not in DECODER_ONLY_OPTIONS}
    check_options(encoder_fn, options, f"{what} {kind!r}", reserved=("data_shape", "out_dim", "name", "dtype"))
    return encoder_fn(tuple(data_shape), int(out_dim), name=name, dtype=dtype, **options)


def build_decoder(kind: str, code_size: int, data_shape, out_channels: int, *, dtype=None,
                  **options) -> keras.Model:
    """The decoder of ``kind``; ``dtype`` as for :func:`build_encoder`."""
    _, decoder_fn = NETWORKS.get(kind)
    check_options(decoder_fn, options, f"model.network {kind!r}",
                  reserved=("code_size", "data_shape", "out_channels", "name", "dtype"))
    return decoder_fn(int(code_size), tuple(data_shape), int(out_channels), dtype=dtype, **options)


__all__ = ["ConcatCodeMaps", "DECODER_ONLY_OPTIONS", "NETWORKS", "build_decoder", "build_encoder", "conv_decoder", "conv_encoder", "mlp_decoder", "mlp_encoder"]
