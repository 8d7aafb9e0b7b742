"""What every network builder shares: option checks and the float32 output of 16-bit networks."""

from __future__ import annotations

import math

import keras

from vae_tf.errors import ConfigError


def positive_ints(values, what: str) -> list[int]:
    values = list(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{what} must be a non-empty list of positive integers, got {values!r}")
    return values


def is_mixed(dtype) -> bool:
    return dtype is not None and keras.dtype_policies.get(dtype).compute_dtype != "float32"


def float32_output(dtype) -> list:
    """``[]``, or for a 16-bit policy the layer that casts the network's output to float32: the
    latent family and the likelihood (KL, log-probabilities) always compute in float32."""
    return [keras.layers.Activation("linear", dtype="float32", name="float32_output")] if is_mixed(dtype) else []


def cast_output(h, dtype):
    """The functional-API form of :func:`float32_output`."""
    return float32_output(dtype)[0](h) if is_mixed(dtype) else h


def skip_flag(skip) -> bool:
    if not isinstance(skip, bool):
        raise ConfigError(f"model.network.skip must be true or false, got {skip!r}")
    return skip


def conv_grid(data_shape, filters: list[int]) -> tuple[int, int, int, int]:
    """``(h0, w0, crop_h, crop_w)`` of a conv decoder: the ``ceil(H/2^L) x ceil(W/2^L)`` grid its
    dense layer emits for L stride-2 transposed convolutions, and how much of the ``h0·2^L x w0·2^L``
    output to crop to get back ``H x W``."""
    height, width = int(data_shape[0]), int(data_shape[1])
    up = 2 ** len(filters)
    h0, w0 = math.ceil(height / up), math.ceil(width / up)
    return h0, w0, h0 * up - height, w0 * up - width


def check_image(data_shape):
    if len(data_shape) != 3:
        raise ConfigError(
            f"model.network.kind=conv needs images of shape (H, W, C), the data has shape {tuple(data_shape)}; "
            "use model.network.kind=mlp"
        )


__all__ = ["cast_output", "check_image", "conv_grid", "float32_output", "is_mixed", "positive_ints", "skip_flag"]
