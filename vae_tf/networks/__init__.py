"""Encoder and decoder builders sized from the data shape.

``build_encoder(kind, data_shape, out_dim, **options)`` returns a Keras model mapping
``[B, *data_shape]`` to the latent family's raw parameters ``[B, out_dim]``;
``build_decoder(kind, code_size, data_shape, out_channels, **options)`` maps a code ``[B, d]`` to
the likelihood's raw parameters ``[B, *data_shape[:-1], out_channels]``.

Kinds: ``mlp`` (any data; flattens) and ``conv`` (images ``(H, W, C)``: stride-2 convolutions,
mirrored by stride-2 transposed convolutions, cropped back to ``H x W``); for sentences ``lstm``
and ``gru`` (:mod:`vae_tf.networks.recurrent`: a recurrent encoder and an autoregressive decoder,
built by ``build_vae`` from the model's vocabulary).

**Skip decoders** (``skip: true``, any kind): :mod:`vae_tf.networks.skip` (Dieng et al. 2019).
``skip`` concerns the decoder only (the encoder ignores it).

Files: :mod:`~vae_tf.networks.mlp`, :mod:`~vae_tf.networks.conv`, :mod:`~vae_tf.networks.skip`,
:mod:`~vae_tf.networks.common` (option checks, float32 outputs). A new kind is one file with an
``(encoder, decoder)`` pair of builders and one registry line below.

**Precision** (``dtype``, set by ``build_vae(precision=...)``, not a ``model.network`` option):
every layer gets that Keras dtype policy (per layer, no global policy is touched); with a
16-bit policy (``mixed_bfloat16``, ``mixed_float16``: float32 variables, 16-bit compute) the
network ends with a float32 ``Activation("linear")`` named ``float32_output``, so whatever reads
a network's output (latent family, likelihood, metrics, the export) gets float32.
"""

from __future__ import annotations

import keras

from vae_tf._registry import Registry, check_options
from vae_tf.errors import ConfigError
from vae_tf.networks.conv import conv_decoder, conv_encoder
from vae_tf.networks.mlp import mlp_decoder, mlp_encoder
from vae_tf.networks.skip import ConcatCodeMaps

NETWORKS: Registry[tuple] = Registry("network")
NETWORKS.register("mlp")((mlp_encoder, mlp_decoder))
NETWORKS.register("conv")((conv_encoder, conv_decoder))


#: Options that shape the decoder only; ``build_encoder`` accepts and ignores them, so one
#: ``model.network`` mapping configures both networks.
DECODER_ONLY_OPTIONS = ("skip",)


#: Builder arguments set by the model, not options a config may give (nor shows).
ENCODER_RESERVED = ("data_shape", "out_dim", "name", "dtype")
DECODER_RESERVED = ("code_size", "data_shape", "out_channels", "name", "dtype")


#: Recurrent networks for sentences (:mod:`vae_tf.networks.recurrent`): built as an encoder and
#: decoder pair sized from the model's vocabulary, not from a data shape.
RECURRENT_KINDS = ("lstm", "gru")
RECURRENT_RESERVED = ("kind", "vocab_size", "max_length", "param_size", "code_size", "dtype")


def check_network(kind, options: dict, what: str = "model.network") -> tuple:
    """The ``(encoder, decoder)`` builders of ``kind`` (for a recurrent kind, the pair builder
    twice), after checking its name and the options' names and types for both (one-line
    ConfigError; nothing is built)."""
    if not isinstance(kind, str):
        raise ConfigError(f"{what}.kind must name a registered network (a string), got {kind!r}")
    if kind in RECURRENT_KINDS:
        from vae_tf.networks.recurrent import recurrent_networks

        check_options(recurrent_networks, options, what, reserved=RECURRENT_RESERVED)
        return recurrent_networks, recurrent_networks
    if kind not in NETWORKS:
        raise ConfigError(f"unknown network {kind!r}; choose one of: {', '.join(sorted([*NETWORKS.names(), *RECURRENT_KINDS]))}")
    encoder_fn, decoder_fn = NETWORKS.get(kind)
    check_options(decoder_fn, options, what, reserved=DECODER_RESERVED)
    check_options(encoder_fn, {k: v for k, v in options.items() if k not in DECODER_ONLY_OPTIONS}, what,
                  reserved=ENCODER_RESERVED)
    return encoder_fn, decoder_fn


def build_encoder(kind: str, data_shape, out_dim: int, *, name: str = "encoder", what: str = "model.network",
                  dtype=None, **options) -> keras.Model:
    """The encoder of ``kind`` (also used for auxiliary networks that read data, e.g. the Q
    network of MI maximisation: ``name`` and ``what``, the config path named in errors).
    ``dtype``: the Keras dtype policy of every layer (``"mixed_bfloat16"``, ...; module docstring)."""
    encoder_fn, _ = NETWORKS.get(kind)
    options = {k: v for k, v in options.items() if k not in DECODER_ONLY_OPTIONS}
    check_options(encoder_fn, options, what, reserved=ENCODER_RESERVED)
    return encoder_fn(tuple(data_shape), int(out_dim), name=name, dtype=dtype, **options)


def build_decoder(kind: str, code_size: int, data_shape, out_channels: int, *, dtype=None,
                  **options) -> keras.Model:
    """The decoder of ``kind``; ``dtype`` as for :func:`build_encoder`."""
    _, decoder_fn = NETWORKS.get(kind)
    check_options(decoder_fn, options, "model.network", reserved=DECODER_RESERVED)
    return decoder_fn(int(code_size), tuple(data_shape), int(out_channels), dtype=dtype, **options)


__all__ = ["ConcatCodeMaps", "DECODER_ONLY_OPTIONS", "DECODER_RESERVED", "ENCODER_RESERVED", "NETWORKS",
           "RECURRENT_RESERVED", "RECURRENT_KINDS", "build_decoder", "build_encoder", "check_network",
           "conv_decoder", "conv_encoder", "mlp_decoder", "mlp_encoder"]
