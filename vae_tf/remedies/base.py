"""The slots of the composable objective, and what a remedy in each one implements.

A VAE's training step (:meth:`vae_tf.models.VAE.train_step`) is assembled from one value per slot::

    input_noise    x̃ = perturb(x)                        the encoder's input; the target stays x
    forward        z ~ q(z|x̃), reconstruction = log p(x|z), kl = KL(q(z|x̃) || p(z))   (per example)
    kl_weight      β_t = next_beta(kl, t)                  may update its own state (a controller)
                   kl_penalty = β_t · mean_B(kl)            (capacity: γ · |mean_B(kl) − C_t|)
    regularizers   Σ_r penalty_r                            may run their own optimizer step first
    loss           −mean_B(reconstruction) + kl_penalty + Σ_r penalty_r
    inference      which variables each update changes, and how many updates a step makes

Conventions (DESIGN.md): reconstruction is summed over data dims, kl over latent dims, both per
example in nats; every term of the loss is a mean over the batch (``mean_B``); nothing is rescaled
by the data size or the number of pixels.

Every remedy is a Keras layer (its state lives in variables, so the model's checkpoints,
:func:`vae_tf.models.checkpoint_for`, carry it) with a
pydantic ``Options`` schema (validated before anything is built) and a ``kind`` (its registry
name). A remedy's constructor receives its validated options and a :class:`SlotContext` (what it
may need of the model: data shape, latent family, likelihood, precision).

This module holds the slot interfaces and the two do-nothing defaults (``input_noise: none``,
``inference: standard``); the published methods are one file each in this package, registered in
:mod:`vae_tf.remedies`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import keras
import tensorflow as tf

from vae_tf._schema import Options as SlotOptions


@dataclasses.dataclass(frozen=True)
class SlotContext:
    """What a remedy may read of the model it is built for."""

    data_shape: tuple
    latent: Any                  # vae_tf.latents.LatentFamily
    likelihood: Any              # vae_tf.likelihoods.Likelihood
    precision: str = "float32"   # the networks' Keras dtype policy (auxiliary networks follow it)
    #: The shape of one example of ``likelihood.expected(decoder output)`` (what an auxiliary
    #: network reading the decoder's output takes): ``data_shape`` for arrays, ``(positions,
    #: vocabulary)`` for sentences.
    decoded_shape: tuple | None = None


class Remedy(keras.layers.Layer):
    """Base of every slot value: a layer holding its validated ``options``.

    Subclasses set ``slot``, ``kind`` and ``Options`` (a :class:`vae_tf._schema.Options` subclass with a
    ``kind`` literal), and override what their slot calls.
    """

    slot: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Options: ClassVar[type[SlotOptions]] = SlotOptions
    #: Names of trackers that only training steps update (dropped from evaluation logs).
    train_only_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: SlotOptions, context: SlotContext, name: str | None = None, **kwargs):
        super().__init__(name=name or f"{self.slot}_{self.kind}", **kwargs)
        self.options = options
        self.built = True  # nothing is shape-dependent: state is created in __init__

    def describe(self) -> dict:
        """The options in force (what MLflow params and the export's assets record)."""
        return self.options.model_dump(mode="json")

    def state(self, step: tf.Tensor) -> dict:
        """Scalars describing the remedy's state after training step ``step`` (the model's
        ``train_steps``), logged every epoch (last value)."""
        return {}

    @property
    def metrics(self) -> list:
        """The remedy's ``keras.metrics`` trackers (the VAE lists, logs and resets them)."""
        return []

    def call(self, inputs):  # a Layer must be callable; a remedy's work is in its slot methods
        return inputs


class KLWeight(Remedy):
    """Slot ``kl_weight`` (exactly one): the weight β of the KL term and the KL term of the loss.

    ``next_beta(kl, step)`` is called once per training step, inside the gradient tape, after the
    forward pass (``kl`` is the per-example KL ``[B]``); it returns the β of this step and may
    update the remedy's own state (the variables of a controller). ``penalty`` is the KL term the
    loss adds. A KL weight whose β never changes sets ``static_beta``: the step then uses that
    Python number and adds no op at all.
    """

    slot = "kl_weight"
    static_beta: float | None = None

    def initial_beta(self) -> float:
        """β before the first step (what an evaluation of an untrained model uses)."""
        return 1.0 if self.static_beta is None else self.static_beta

    def next_beta(self, kl: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        return tf.constant(self.initial_beta(), tf.float32)

    def penalty(self, kl: tf.Tensor, beta, step: tf.Tensor) -> tf.Tensor:
        """The KL term of the loss: ``β · mean_B(kl)``."""
        return beta * tf.reduce_mean(kl)


class Regularizer(Remedy):
    """Slot ``regularizers`` (zero or more): a term added to the loss.

    ``train_terms(model, terms, tape)`` runs in a training step inside the gradient tape, after the
    forward pass; it may first update auxiliary parameters with an optimizer of its own (inside
    ``tape.stop_recording()``) and returns named terms to add to ``terms``. ``eval_terms`` is the
    same without any update (evaluation, and the encoder-only updates of aggressive inference).
    ``penalty(terms)`` is what the loss adds (a scalar, already a batch mean). ``key(name)`` names
    a term or tracker: the first regularizer of a kind uses ``name``, a second one ``name_2``.
    """

    slot = "regularizers"

    def __init__(self, options: SlotOptions, context: SlotContext, index: int = 1, **kwargs):
        self.index = int(index)
        super().__init__(options, context, name=self.key(f"regularizer_{self.kind}"), **kwargs)

    def key(self, name: str) -> str:
        return name if self.index == 1 else f"{name}_{self.index}"

    @property
    def penalty_key(self) -> str:
        """The term :meth:`penalty` reads (the model adds the penalty when a step's terms hold it)."""
        raise NotImplementedError

    def train_terms(self, model, terms: dict, tape) -> dict:
        return self.eval_terms(model, terms)

    def eval_terms(self, model, terms: dict) -> dict:
        raise NotImplementedError

    def penalty(self, terms: dict) -> tf.Tensor:
        raise NotImplementedError

    def update_trackers(self, terms: dict) -> None:
        """Update the trackers from a step's terms (training and evaluation)."""


class InputNoise(Remedy):
    """Slot ``input_noise`` (exactly one): what the encoder sees instead of its clean input; the
    likelihood always scores the clean target. ``perturb(model, inputs, target)`` returns the
    perturbed inputs with no gradient path to the perturbation (``inputs`` are
    :meth:`vae_tf.models.VAE.encoder_input`'s, ``target`` :meth:`vae_tf.models.VAE.prepare`'s:
    the batch itself for images, the embedded words and their ids for text, so text is perturbed
    in embedding space; the training step re-embeds inside its tape and adds the constant
    perturbation, so the embeddings still learn). A noise that is not ``identity`` also makes the
    step report the clean input's ELBO terms (an extra forward pass, no gradient) next to the
    perturbed ones."""

    slot = "input_noise"
    identity: ClassVar[bool] = False

    def perturb(self, model, inputs: tf.Tensor, target) -> tf.Tensor:
        raise NotImplementedError

    def update_trackers(self, inputs: tf.Tensor, x_tilde: tf.Tensor, perturbed: dict) -> None:
        """Update the trackers from the clean inputs, their perturbation and the perturbed terms."""


class Inference(Remedy):
    """Slot ``inference`` (exactly one): the procedure of one training step — which variables each
    update changes and how many updates a step makes. ``train_step(model, x)`` returns the terms of
    the step's last update (with ``loss``); the model then runs its after-step bookkeeping once.
    ``prepare_fit`` lets a procedure that reads data besides its batch (aggressive inference) set
    it up and add its callbacks before ``fit``."""

    slot = "inference"
    #: Why XLA cannot compile a training step of this procedure (None: it can); ``fit`` and
    #: ``vae-tf train`` refuse ``jit_compile=True`` with it, before anything is compiled.
    xla_refusal: str | None = None

    def train_step(self, model, x: tf.Tensor) -> dict:
        raise NotImplementedError

    def prepare_fit(self, model, kwargs: dict) -> dict:
        """Return ``fit``'s arguments (every one by its name: :meth:`VAE.fit` binds positional ones),
        changed as the procedure needs (default: as given)."""
        return kwargs


# --- the do-nothing defaults ------------------------------------------------------------------
class NoInputNoise(InputNoise):
    """``input_noise: none``: the encoder sees x itself (no op is added)."""

    kind = "none"
    identity = True

    class Options(SlotOptions):
        kind: Literal["none"] = "none"

    def perturb(self, model, inputs, target):
        return inputs


class StandardInference(Inference):
    """``inference: standard``: one update of every trainable variable per step (Kingma & Welling
    2014): the loss of the batch, its gradient, one optimizer step."""

    kind = "standard"

    class Options(SlotOptions):
        kind: Literal["standard"] = "standard"

    def train_step(self, model, x):
        return model.update(x, model.trainable_variables)


__all__ = ["SlotOptions", "InputNoise", "Inference", "KLWeight", "NoInputNoise", "Regularizer", "Remedy", "SlotContext",
           "StandardInference"]
