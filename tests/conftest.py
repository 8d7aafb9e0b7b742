"""Shared fixtures. TensorFlow's start-up logging is silenced before anything imports it."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """The embedded default data set, split with seed 0."""
    from vae_tf.data import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
