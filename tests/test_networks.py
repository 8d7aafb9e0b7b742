"""Encoders and decoders are sized from the data shape."""

from __future__ import annotations

import numpy as np
import pytest

from vae_tf.errors import ConfigError
from vae_tf.networks import build_decoder, build_encoder


@pytest.mark.parametrize("kind, data_shape, options", [
    ("mlp", (8, 8, 1), {"hidden": [32, 16]}),
    ("mlp", (13,), {"hidden": [7]}),
    ("conv", (8, 8, 1), {"filters": [8, 16], "dense": 32}),
    ("conv", (28, 28, 1), {"filters": [8, 16], "dense": 32}),
    ("conv", (64, 64, 1), {"filters": [4, 8, 8], "dense": 16}),
    ("conv", (5, 7, 3), {"filters": [4, 8], "dense": 16}),  # odd sizes: decoder crops
])
def test_encoder_and_decoder_shapes_follow_the_data(kind, data_shape, options):
    encoder = build_encoder(kind, data_shape, 10, **options)
    decoder = build_decoder(kind, 5, data_shape, data_shape[-1] * 2, **options)
    x = np.zeros((3,) + data_shape, np.float32)
    assert tuple(encoder(x).shape) == (3, 10)
    assert tuple(decoder(np.zeros((3, 5), np.float32)).shape) == (3,) + data_shape[:-1] + (data_shape[-1] * 2,)


def test_conv_decoder_mirrors_the_encoder_depth():
    encoder = build_encoder("conv", (28, 28, 1), 4, filters=[32, 64], dense=256)
    decoder = build_decoder("conv", 2, (28, 28, 1), 1, filters=[32, 64], dense=256)
    strided = [layer for layer in encoder.layers if type(layer).__name__ == "Conv2D"]
    transposed = [layer for layer in decoder.layers if type(layer).__name__ == "Conv2DTranspose"]
    assert [layer.filters for layer in strided] == [32, 64]
    assert [layer.filters for layer in transposed] == [32, 1]
    assert all(layer.strides == (2, 2) for layer in strided + transposed)


@pytest.mark.parametrize("kind, data_shape, options, match", [
    ("conv", (64,), {}, "needs images of shape \\(H, W, C\\)"),
    ("mlp", (8, 8, 1), {"hidden": []}, "non-empty list of positive integers"),
    ("mlp", (8, 8, 1), {"hidden": [16, -2]}, "non-empty list of positive integers"),
    ("mlp", (8, 8, 1), {"filters": [4]}, "unknown option model.network.filters; valid options: hidden, activation"),
    ("transformer", (8, 8, 1), {}, "unknown network 'transformer'"),
])
def test_bad_network_configs_are_one_line_errors(kind, data_shape, options, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_encoder(kind, data_shape, 4, **options)
    assert "\n" not in str(info.value)
