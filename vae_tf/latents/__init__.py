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


#: Constructor arguments that are not options of model.latent.
LATENT_RESERVED = ("name", "dtype", "trainable")


def check_latent(family, options: dict) -> type[LatentFamily]:
    """The family's class, after checking its name and its options' names and types (one-line
    ConfigError; nothing is built)."""
    if not isinstance(family, str):
        raise ConfigError(f"model.latent.family must name a registered latent family (a string), got {family!r}")
    cls = LATENT_FAMILIES.get(family)
    # The names first: a misspelt `latent_dims` gets "did you mean", not "latent_dim ... got None".
    check_options(cls, options, "model.latent", reserved=LATENT_RESERVED)
    latent_dim = options.get("latent_dim")
    if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
        raise ConfigError(f"model.latent.latent_dim must be a positive integer, got {latent_dim!r}")
    return cls


def build_latent(family: str, **options) -> LatentFamily:
    """Build a registered latent family; bad options give a one-line ConfigError."""
    return check_latent(family, options)(**options)


__all__ = ["LATENT_FAMILIES", "LATENT_RESERVED", "GaussianCategoricalLatent", "GaussianLatent", "LatentFamily", "NormalGammaLatent",
           "build_latent", "check_latent"]
