"""The VAE Keras model, and ``build_vae`` that assembles one from plain specs.

One model class (:class:`VAE`); the objective is composed from slot values
(:mod:`vae_tf.remedies`): a KL weight, regularisers, an input noise and an inference procedure.
"""

from __future__ import annotations

import copy
import inspect
import numbers
from typing import Any, Mapping

import tensorflow as tf

from vae_tf.errors import ConfigError
from vae_tf.latents import LATENT_FAMILIES, LATENT_RESERVED, build_latent, check_latent
from vae_tf.likelihoods import LIKELIHOOD_RESERVED, LIKELIHOODS, build_likelihood, check_likelihood
from vae_tf.models.vae import ACTIVE_KL_THRESHOLD, PRECISIONS, VAE, MeanVector, check_precision, checkpoint_for
from vae_tf.networks import (DECODER_RESERVED, ENCODER_RESERVED, NETWORKS, RECURRENT_KINDS, RECURRENT_RESERVED,
                              build_decoder, build_encoder, check_network)
from vae_tf.remedies import SlotContext, build_remedies, parse_objective
from vae_tf.remedies.presets import REQUIREMENTS


def check_requirements(objective: Mapping[str, Any] | None, likelihood: Mapping[str, Any] | None) -> None:
    """What a preset needs of the rest of the model (``ar_elbo`` needs the adaptive likelihood):
    one line when it is missing."""
    name = (objective or {}).get("name")
    if name in REQUIREMENTS:
        path, value = REQUIREMENTS[name]
        actual = (likelihood or {}).get("name", "bernoulli")
        if actual != value:
            raise ConfigError(f"objective {name} needs {path}={value}, got {actual!r} (AR-ELBO is a likelihood: "
                              f"any KL weight works with {path}={value})")


def check_model_spec(latent: Mapping[str, Any], likelihood: Mapping[str, Any], network: Mapping[str, Any]) -> None:
    """Check the names and the options' names and types of ``model.latent``, ``model.likelihood``
    and ``model.network`` against their registries (one-line ConfigError; nothing is built, so it
    runs before any MLflow run exists). Values that need the builder (a σ that must be > 0) are
    checked when the model is built."""
    for what, spec in (("model.latent", latent), ("model.likelihood", likelihood), ("model.network", network)):
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{what} must be a mapping, got {spec!r}")
    latent, likelihood, network = dict(latent), dict(likelihood), dict(network)
    check_latent(latent.pop("family", None), latent)
    check_likelihood(likelihood.pop("name", None), likelihood)
    if "dtype" in network:
        raise ConfigError(f"model.network has no option dtype: set the model precision instead "
                          f"({', '.join(PRECISIONS)})")
    check_network(network.pop("kind", None), network)


def _builder_defaults(builder, reserved: tuple[str, ...]) -> dict:
    """The options of ``builder`` (a class: its ``__init__``) that have a default, with it, in the
    signature's order; tuples as lists (what a YAML or JSON config holds)."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    defaults = {}
    for parameter in inspect.signature(target).parameters.values():
        if (parameter.name == "self" or parameter.name in reserved or parameter.default is parameter.empty
                or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)):
            continue
        defaults[parameter.name] = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
    return defaults


def model_spec_with_defaults(latent: Mapping[str, Any], likelihood: Mapping[str, Any],
                             network: Mapping[str, Any]) -> dict[str, dict]:
    """``model.latent``, ``model.likelihood`` and ``model.network`` as they are built: every option
    left out given the value its builder gives it (``vae-tf train --print-config``). The parts are
    checked first (:func:`check_model_spec`). Only shows them: a run records the options given,
    so that a default changed later does not change the digest of a config written before."""
    check_model_spec(latent, likelihood, network)
    latent, likelihood, network = dict(latent), dict(likelihood), dict(network)
    family, name, kind = latent.pop("family"), likelihood.pop("name"), network.pop("kind")
    latent_defaults = _builder_defaults(LATENT_FAMILIES.get(family), LATENT_RESERVED)
    likelihood_defaults = _builder_defaults(LIKELIHOODS.get(name), LIKELIHOOD_RESERVED)
    if kind in RECURRENT_KINDS:
        from vae_tf.networks.recurrent import recurrent_networks

        network_defaults = _builder_defaults(recurrent_networks, RECURRENT_RESERVED)
    else:
        encoder_fn, decoder_fn = NETWORKS.get(kind)
        network_defaults = {**_builder_defaults(encoder_fn, ENCODER_RESERVED),
                            **_builder_defaults(decoder_fn, DECODER_RESERVED)}
    return {"latent": {"family": family, **{k: latent[k] for k in latent if k not in latent_defaults},
                       **{k: latent.get(k, v) for k, v in latent_defaults.items()}},
            "likelihood": {"name": name, **{k: likelihood.get(k, v) for k, v in likelihood_defaults.items()}},
            "network": {"kind": kind, **{k: network.get(k, v) for k, v in network_defaults.items()}}}


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
    text: Mapping[str, Any] | None = None,
) -> VAE:
    """Assemble encoder, latent family, decoder, likelihood and the composed objective from plain
    dicts.

    Each of the first three dicts names its registry entry (``latent["family"]``,
    ``likelihood["name"]``, ``network["kind"]``); the other keys are that entry's options.
    ``objective`` is the slot form (:mod:`vae_tf.remedies`), every key optional::

        build_vae((8, 8, 1), latent={"family": "gaussian", "latent_dim": 8},
                  likelihood={"name": "bernoulli"}, network={"kind": "mlp", "hidden": [256, 128]},
                  objective={"kl_weight": {"kind": "control", "set_point": 15},
                             "regularizers": [{"kind": "mi_q", "weight": 1.0}],
                             "input_noise": {"kind": "fgsm", "epsilon": 0.05},
                             "inference": {"kind": "aggressive"}})

    or a named preset of the earlier form (``{"name": "control_vae", "kl_set_point": 10}``,
    :mod:`vae_tf.remedies.presets`). A combination that cannot work fails here, before anything
    is trained, with one line.

    ``precision``: ``"float32"`` (default), ``"mixed_bfloat16"`` or ``"mixed_float16"`` — the
    Keras dtype policy of the encoder and decoder layers (and of auxiliary networks such as MI's Q
    network), set per layer, never globally; the networks' outputs are cast to float32, so the
    latent family, the likelihood, the KL, the log-probabilities, the trackers and the loss stay
    float32, and so do the exported signatures. ``mixed_float16`` adds dynamic loss scaling
    (:meth:`VAE.compile`). Recorded in :attr:`build_spec` (so ``load_vae`` rebuilds it) only
    when it is not float32.

    ``seed``: the seed of the model's own random stream (reparameterisation noise, input noise,
    Monte-Carlo KL draws; :class:`VAE`), recorded in :attr:`build_spec` so that ``load_vae``
    rebuilds the stream from it. It does not set the initial weights, which Keras draws from its
    global generator: ``keras.utils.set_random_seed(s)`` before ``build_vae`` makes them
    repeatable too (``vae-tf train`` calls it with the config's ``seed``). None: a random stream.

    ``text``: for sentences (:class:`~vae_tf.models.text.TextVAE`), the data set's tokenizer
    (``{"vocabulary": [...], "max_length": L, "lowercase": ..., "split_punctuation": ...,
    "symbol_clusters": ...}``,
    :func:`vae_tf.models.text.text_settings` of its metadata); ``data_shape`` is then ``()``, the
    network a recurrent one (``{"kind": "lstm" | "gru", ...}``) and the likelihood
    ``{"name": "categorical"}``.

    Distributed training: call ``build_vae`` and ``compile`` inside ``strategy.scope()``
    (:class:`VAE` docstring).

    The model is built (called once on a zero batch) so it can be trained, checkpointed
    (:func:`checkpoint_for`) and exported straight away.
    """
    import numpy as np

    try:
        if any(isinstance(s, bool) or int(s) != s for s in data_shape):  # 16.5 was built as 16
            raise ValueError(data_shape)
        data_shape = tuple(int(s) for s in data_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"data_shape must be a tuple of positive integers (an example's shape, e.g. (28, 28, 1); "
                          f"() for sentences), got {data_shape!r}") from None
    if any(s < 1 for s in data_shape):
        raise ConfigError(f"data_shape must be a tuple of positive integers, got {data_shape}")
    examples = {"latent": "{'family': 'gaussian', 'latent_dim': 8}", "likelihood": "{'name': 'bernoulli'}",
                "network": "{'kind': 'mlp'}", "objective": "{'kl_weight': {'kind': 'constant', 'beta': 1.0}}"}
    for what, given in (("latent", latent), ("likelihood", likelihood), ("network", network),
                        ("objective", objective)):
        if given is not None and not isinstance(given, Mapping):
            raise ConfigError(f"{what} must be a mapping (e.g. {what}={examples[what]}), got {given!r}")
    if data_shape == () and text is None:
        raise ConfigError("data_shape () is a sentence model's: give text=text_settings(data.metadata) (a text data "
                          "set's vocabulary and length), or an example's shape for an image model")
    precision = check_precision(precision)
    latent = dict(latent or {"family": "gaussian", "latent_dim": 8})
    likelihood = dict(likelihood or {"name": "bernoulli"})
    network = dict(network or {"kind": "mlp"})
    check_requirements(objective, likelihood)
    composition = parse_objective(dict(objective or {}))  # validated before anything is built
    # What rebuilds this model (vae_tf.export.load_vae); copied before the dicts are consumed.
    spec = copy.deepcopy({"data_shape": list(data_shape), "latent": latent, "likelihood": likelihood,
                          "network": network, "objective": composition.to_dict(), "name": name})
    if precision != "float32":
        spec["precision"] = precision
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
    if seed is not None:  # load_vae's model draws the same noise as the one loaded twice
        spec["seed"] = int(seed)

    family = build_latent(latent.pop("family", "gaussian"), **latent)
    kind = network.pop("kind", "mlp")
    if "dtype" in network:
        raise ConfigError(f"model.network has no option dtype: set the model precision instead "
                          f"({', '.join(PRECISIONS)})")
    check_modality(kind, likelihood.get("name", "bernoulli"), text is not None)
    lik = build_likelihood(likelihood.pop("name", "bernoulli"), data_rank=max(1, len(data_shape)), **likelihood)
    if text is not None:  # sentences: a tokenizer in the model, recurrent networks
        from vae_tf.models.text import TextCodec, TextVAE
        from vae_tf.networks.recurrent import recurrent_networks

        codec = TextCodec(**text, name="text_codec")
        # the tokenizer as built (a default included), so that load_vae rebuilds this one
        spec["text"] = {**text, "symbol_clusters": codec.symbol_clusters}
        encoder, decoder = recurrent_networks(kind, codec.vocab_size, codec.max_length, family.param_size,
                                              family.code_size, dtype=precision, **network)
        model_class, extra, example = TextVAE, {"codec": codec}, tf.constant(codec.words[:1])
        decoded_shape = (codec.max_length + 1, codec.vocab_size)
    else:
        encoder = build_encoder(kind, data_shape, family.param_size, dtype=precision, **network)
        out_channels = data_shape[-1] * lik.param_channels
        decoder = build_decoder(kind, family.code_size, data_shape, out_channels, dtype=precision, **network)
        model_class, extra, example = VAE, {}, np.zeros((1,) + data_shape, np.float32)
        decoded_shape = data_shape
    remedies = build_remedies(composition, SlotContext(data_shape=data_shape, latent=family, likelihood=lik,
                                                       precision=precision, decoded_shape=decoded_shape))
    model = model_class(encoder=encoder, decoder=decoder, latent=family, likelihood=lik, seed=seed, name=name,
                        precision=precision, data_shape=data_shape, **extra, **remedies)
    model(example)  # build: a custom train_step never calls call()
    model.build_spec = spec
    return model


#: Network kinds and the likelihood that read sentences (the rest read arrays).
TEXT_NETWORKS = RECURRENT_KINDS
TEXT_LIKELIHOODS = ("categorical",)


def check_modality(network_kind: str, likelihood_name: str, text: bool) -> None:
    """One line when the network or the likelihood does not fit the data's modality."""
    if text:
        if network_kind not in TEXT_NETWORKS and likelihood_name not in TEXT_LIKELIHOODS:  # an image config
            raise ConfigError(f"text data needs a recurrent network and the categorical likelihood, got "
                              f"model.network.kind={network_kind} and model.likelihood.name={likelihood_name}: start "
                              "from a text config (--config training/configs/text_synthetic.yaml) or set "
                              f"model.network.kind to one of {', '.join(TEXT_NETWORKS)} and "
                              "model.likelihood.name=categorical")
        if network_kind not in TEXT_NETWORKS:
            raise ConfigError(f"text data needs a recurrent network: model.network.kind must be one of "
                              f"{', '.join(TEXT_NETWORKS)}, got {network_kind!r}")
        if likelihood_name not in TEXT_LIKELIHOODS:
            raise ConfigError(f"text data needs model.likelihood.name=categorical (a distribution over words), "
                              f"got {likelihood_name!r}")
    else:
        if network_kind in TEXT_NETWORKS:
            raise ConfigError(f"model.network.kind={network_kind} reads sentences; this data set has arrays: use "
                              "mlp or conv (or a text data set: text_synthetic, text_file, wordnet, ptb, ...)")
        if likelihood_name in TEXT_LIKELIHOODS:
            raise ConfigError(f"model.likelihood.name={likelihood_name} scores sentences; this data set has arrays: "
                              "use bernoulli, gaussian, ...")


__all__ = ["ACTIVE_KL_THRESHOLD", "PRECISIONS", "TEXT_LIKELIHOODS", "TEXT_NETWORKS", "VAE", "MeanVector", "build_vae",
           "check_modality", "check_model_spec", "check_requirements", "checkpoint_for", "model_spec_with_defaults"]
