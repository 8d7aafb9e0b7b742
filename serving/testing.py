"""Helpers for tests and benchmarks: tiny exported models (images, sentences) and a server on
loopback ports.

>>> from serving.testing import export_tiny_model, running_server
>>> export_tiny_model(tmp_path, "vae")                                    # doctest: +SKIP
>>> with running_server(tmp_path, "vae") as server:                        # doctest: +SKIP
...     RestClient(server.rest_url, "vae").encode(x)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

TINY_DATA_SHAPE = (8, 8, 1)
TINY_LATENT_DIM = 4


def export_tiny_model(base: str | os.PathLike, name: str = "vae", *, version: int | None = None, seed: int = 0,
                      data_shape=TINY_DATA_SHAPE, latent_dim: int = TINY_LATENT_DIM,
                      latent: dict | None = None) -> Path:
    """Export an untrained MLP Gaussian VAE with random weights (a contract-test model: enough to
    check shapes, names, routing and numbers; ``seed`` makes versions distinguishable). The
    builders zero-initialise the output layers, so every weight is redrawn here: otherwise every
    input would encode to 0. ``latent``: another family's options (``{"family": ...}``)."""
    import keras
    import numpy as np

    from vae_tf.export import export_model
    from vae_tf.models import build_vae

    keras.utils.set_random_seed(seed)
    model = build_vae(data_shape, latent=latent or {"family": "gaussian", "latent_dim": latent_dim},
                      network={"kind": "mlp", "hidden": [16]}, seed=seed)
    model(np.zeros((1,) + tuple(data_shape), np.float32))
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.dtype == "float32" and variable.trainable:
            variable.assign(rng.normal(0.0, 0.3, tuple(variable.shape)).astype(np.float32))
    return export_model(model, base, name, version)


TINY_TEXT_WORDS = ("the", "cat", "dog", "sat", "ran", "on", "a", "mat", "big", "red", "and", "saw")
TINY_TEXT_MAX_LENGTH = 6


def export_tiny_text_model(base: str | os.PathLike, name: str = "text", *, version: int | None = None, seed: int = 0,
                           latent_dim: int = 2, words=TINY_TEXT_WORDS, max_length: int = TINY_TEXT_MAX_LENGTH) -> Path:
    """Export an untrained LSTM sentence VAE with random weights (the text twin of
    :func:`export_tiny_model`): vocabulary ``words``, sentences of at most ``max_length`` words,
    every weight redrawn so sentences encode to distinct codes and codes decode to words."""
    import keras
    import numpy as np

    from vae_tf.export import export_model
    from vae_tf.models import build_vae

    keras.utils.set_random_seed(seed)
    model = build_vae((), latent={"family": "gaussian", "latent_dim": latent_dim}, likelihood={"name": "categorical"},
                      network={"kind": "lstm", "embedding": 8, "hidden": [16]},
                      text={"vocabulary": list(words), "max_length": int(max_length)}, seed=seed)
    model.compile(optimizer="adam")
    model.reconstruct(np.array([" ".join(words[:3])], dtype=object))  # builds every layer
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.dtype == "float32" and variable.trainable:
            variable.assign(rng.normal(0.0, 0.5, tuple(variable.shape)).astype(np.float32))
    return export_model(model, base, name, version)


def drop_version(exports: str | os.PathLike, base: str | os.PathLike, version: int, name: str = "vae") -> Path:
    """Copy version ``version`` of ``exports`` (a model directory) into ``base/name`` the way
    ``export_model`` writes one, under a hidden temporary name then renamed, so a polling
    server never sees half a version. Returns the new version directory."""
    final = Path(base) / name / str(version)
    tmp = final.with_name(f".tmp-{version}")
    shutil.copytree(Path(exports) / str(version), tmp)
    os.rename(tmp, final)
    return final


@contextlib.contextmanager
def running_server(base: str | os.PathLike, name: str = "vae", **options):
    """A :class:`serving.server.ModelServer` on 127.0.0.1 with free ports (both servers), stopped
    on exit. ``options`` are :class:`serving.server.ServerConfig` fields."""
    from serving.server import ModelServer, ServerConfig

    settings = {"model_base_path": str(base), "model_name": name, "host": "127.0.0.1", "rest_port": 0, "grpc_port": 0,
                "grace_seconds": 1.0, "freeze_gc": False, **options}
    server = ModelServer(ServerConfig(**settings)).start()
    try:
        yield server
    finally:
        server.stop()


__all__ = ["TINY_DATA_SHAPE", "TINY_LATENT_DIM", "TINY_TEXT_MAX_LENGTH", "TINY_TEXT_WORDS", "drop_version",
           "export_tiny_model", "export_tiny_text_model", "running_server"]
