"""Objectives as Keras models, and ``build_vae`` that assembles one from a plain spec.

``OBJECTIVES`` maps config names to model classes; each class documents its loss.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from vae_tf._registry import Registry, check_options
from vae_tf.errors import ConfigError
from vae_tf.latents import build_latent
from vae_tf.likelihoods import build_likelihood
from vae_tf.models.aggressive import AggressivePhase, AggressiveVAE
from vae_tf.models.mi_max import MIMaxVAE, fit_mi_bound
from vae_tf.models.noisy_input import NoisyInputVAE
from vae_tf.models.objectives import ARELBOVAE, CapacityVAE, ControlVAE
from vae_tf.models.vae import ACTIVE_KL_THRESHOLD, PRECISIONS, VAE, MeanVector, check_precision
from vae_tf.networks import build_decoder, build_encoder

OBJECTIVES: Registry[type[VAE]] = Registry("objective")
OBJECTIVES.register("elbo")(VAE)
OBJECTIVES.register("capacity")(CapacityVAE)
OBJECTIVES.register("control_vae")(ControlVAE)
OBJECTIVES.register("ar_elbo")(ARELBOVAE)
OBJECTIVES.register("mi_max")(MIMaxVAE)
OBJECTIVES.register("aggressive")(AggressiveVAE)
OBJECTIVES.register("noisy_input")(NoisyInputVAE)


def build_vae(
    data_shape,
    *,
    latent: Mapping[str, Any] | None = None,
    likelihood: Mapping[str, Any] | None = None,
    network: Mapping[str, Any] | None = None,
    objective: Mapping[str, Any] | None = None,
    seed: int | None = None,
    name: str = "vae",
    precision: str = "float32",
) -> VAE:
    """Assemble encoder, latent family, decoder, likelihood and objective from plain dicts.

    Each dict names its registry entry (``latent["family"]``, ``likelihood["name"]``,
    ``network["kind"]``, ``objective["name"]``); the other keys are that entry's options, e.g.::

        build_vae((8, 8, 1), latent={"family": "gaussian", "latent_dim": 8},
                  likelihood={"name": "bernoulli"}, network={"kind": "mlp", "hidden": [256, 128]},
                  objective={"name": "elbo", "beta": 1.0})

    ``precision``: ``"float32"`` (default), ``"mixed_bfloat16"`` or ``"mixed_float16"`` — the
    Keras dtype policy of the encoder and decoder layers (and of MI maximisation's Q network),
    set per layer, never globally; the networks' outputs are cast to float32, so the latent
    family, the likelihood, the KL, the log-probabilities, the trackers and the loss stay
    float32, and so do the exported signatures. ``mixed_float16`` adds dynamic loss scaling
    (:meth:`VAE.compile`). Recorded in :attr:`build_spec` (so ``load_vae`` rebuilds it) only
    when it is not float32, which keeps float32 specs as they were.

    Distributed training: call ``build_vae`` and ``compile`` inside ``strategy.scope()``
    (:class:`VAE` docstring).

    The model is built (called once on a zero batch) so it can be trained, checkpointed and
    exported straight away.
    """
    import numpy as np

    data_shape = tuple(int(s) for s in data_shape)
    precision = check_precision(precision)
    latent = dict(latent or {"family": "gaussian", "latent_dim": 8})
    likelihood = dict(likelihood or {"name": "bernoulli"})
    network = dict(network or {"kind": "mlp"})
    objective = dict(objective or {"name": "elbo"})
    # What rebuilds this model (vae_tf.export.load_vae); copied before the dicts are consumed.
    spec = copy.deepcopy({"data_shape": list(data_shape), "latent": latent, "likelihood": likelihood,
                          "network": network, "objective": objective, "name": name})
    if precision != "float32":
        spec["precision"] = precision

    family = build_latent(latent.pop("family", "gaussian"), **latent)
    lik = build_likelihood(likelihood.pop("name", "bernoulli"), data_rank=len(data_shape), **likelihood)
    kind = network.pop("kind", "mlp")
    if "dtype" in network:
        raise ConfigError(f"model.network has no option dtype: set the model precision instead "
                          f"({', '.join(PRECISIONS)})")
    encoder = build_encoder(kind, data_shape, family.param_size, dtype=precision, **network)
    out_channels = data_shape[-1] * lik.param_channels
    decoder = build_decoder(kind, family.code_size, data_shape, out_channels, dtype=precision, **network)

    objective_name = objective.pop("name", "elbo")
    cls = OBJECTIVES.get(objective_name)
    check_options(cls, objective, f"objective {objective_name!r}",
                  reserved=("encoder", "decoder", "latent", "likelihood", "seed", "name", "precision"))
    model = cls(encoder=encoder, decoder=decoder, latent=family, likelihood=lik, seed=seed, name=name,
                precision=precision, **objective)
    model(np.zeros((1,) + data_shape, np.float32))  # build: a custom train_step never calls call()
    model.build_spec = spec
    return model


__all__ = ["ACTIVE_KL_THRESHOLD", "ARELBOVAE", "OBJECTIVES", "PRECISIONS", "VAE", "AggressivePhase", "AggressiveVAE", "CapacityVAE",
           "ControlVAE", "MIMaxVAE", "MeanVector", "NoisyInputVAE", "build_vae", "fit_mi_bound"]
