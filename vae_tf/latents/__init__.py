"""Latent families: posterior, prior, KL, sample, embedding and export outputs (TFP).

``LATENT_FAMILIES`` maps config names to classes; ``build_latent(name, **options)`` builds one.
"""

from __future__ import annotations

from vae_tf._registry import Registry, check_options
from vae_tf.errors import ConfigError
from vae_tf.latents.base import LatentFamily
from vae_tf.latents.categorical import GaussianCategoricalLatent
from vae_tf.latents.gaussian import GaussianLatent
from vae_tf.latents.normal_gamma import NormalGammaLatent

LATENT_FAMILIES: Registry[type[LatentFamily]] = Registry("latent family")
LATENT_FAMILIES.register("gaussian")(GaussianLatent)
LATENT_FAMILIES.register("normal_gamma")(NormalGammaLatent)
LATENT_FAMILIES.register("gaussian_categorical")(GaussianCategoricalLatent)


def build_latent(family: str, **options) -> LatentFamily:
    """Build a registered latent family; bad options give a one-line ConfigError."""
    cls = LATENT_FAMILIES.get(family)
    if int(options.get("latent_dim", 0)) < 1:
        raise ConfigError(f"model.latent.latent_dim must be a positive integer, got {options.get('latent_dim')!r}")
    check_options(cls, options, f"model.latent (family {family!r})", reserved=("name", "dtype", "trainable"))
    return cls(**options)


__all__ = ["LATENT_FAMILIES", "GaussianCategoricalLatent", "GaussianLatent", "LatentFamily", "NormalGammaLatent",
           "build_latent"]
