"""Observation models p(x|z) built on ``tfp.distributions``.

The decoder emits ``out`` with the data's shape, except that the last axis is
``param_channels`` times wider (per-pixel σ(z) needs two numbers per value). A likelihood turns
``out`` into a distribution over one whole example:

- ``log_prob(x, out)``: log p(x|z) **summed over every data dimension**, shape ``[B]`` (nats);
- ``mean(out)``: the deterministic decode E[x|z];
- ``sample(out, seed)``: the ancestral decode x ~ p(x|z);
- ``sample_rows(out, seeds)``: the ancestral decode, row i drawn from ``seeds[i]`` alone.

``support`` is the closed interval the data must lie in (``None``: the real line); the data
loader checks it before training starts.

``LIKELIHOODS`` maps config names to classes; ``build_likelihood(name, **options)`` builds one.

Where each lives: :mod:`~vae_tf.likelihoods.base` (the interface), :mod:`~vae_tf.likelihoods.standard`
(Bernoulli, continuous Bernoulli, Gaussian fixed / learned / per-pixel σ) and
:mod:`~vae_tf.likelihoods.ar_elbo` (AR-ELBO's adaptive σ_x²) and :mod:`~vae_tf.likelihoods.categorical` (the words of a
sentence, for text models). A new likelihood is one file and one
registry line below.
"""

from __future__ import annotations

from vae_tf._registry import Registry, check_options
from vae_tf.errors import ConfigError
from vae_tf.likelihoods.ar_elbo import GaussianAdaptiveLikelihood
from vae_tf.likelihoods.base import Likelihood
from vae_tf.likelihoods.categorical import TokenCategoricalLikelihood
from vae_tf.likelihoods.standard import (BernoulliLikelihood, ContinuousBernoulliLikelihood, GaussianFixedLikelihood,
                                         GaussianLearnedScalarLikelihood, GaussianPerPixelLikelihood)

LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")
LIKELIHOODS.register("bernoulli")(BernoulliLikelihood)
LIKELIHOODS.register("continuous_bernoulli")(ContinuousBernoulliLikelihood)
LIKELIHOODS.register("gaussian")(GaussianFixedLikelihood)
LIKELIHOODS.register("gaussian_learned")(GaussianLearnedScalarLikelihood)
LIKELIHOODS.register("gaussian_adaptive")(GaussianAdaptiveLikelihood)
LIKELIHOODS.register("gaussian_per_pixel")(GaussianPerPixelLikelihood)
LIKELIHOODS.register("categorical")(TokenCategoricalLikelihood)  # sentences (text models)


#: Constructor arguments that are not options of model.likelihood.
LIKELIHOOD_RESERVED = ("data_rank", "name", "dtype", "trainable")


def check_likelihood(name, options: dict) -> type[Likelihood]:
    """The likelihood's class, after checking its name and its options' names and types (one-line
    ConfigError; nothing is built)."""
    if not isinstance(name, str):
        raise ConfigError(f"model.likelihood.name must name a registered likelihood (a string), got {name!r}")
    cls = LIKELIHOODS.get(name)
    check_options(cls, options, "model.likelihood", reserved=LIKELIHOOD_RESERVED)
    return cls


def build_likelihood(name: str, data_rank: int, **options) -> Likelihood:
    """Build a registered likelihood; bad options give a one-line ConfigError."""
    return check_likelihood(name, options)(data_rank=data_rank, **options)


__all__ = ["LIKELIHOODS", "LIKELIHOOD_RESERVED", "BernoulliLikelihood", "ContinuousBernoulliLikelihood", "GaussianAdaptiveLikelihood",
           "GaussianFixedLikelihood", "GaussianLearnedScalarLikelihood", "GaussianPerPixelLikelihood", "Likelihood",
           "TokenCategoricalLikelihood",
           "build_likelihood", "check_likelihood"]
