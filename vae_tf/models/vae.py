"""The VAE as a Keras model with its own ``train_step`` / ``test_step``, assembled from the slots
of the composable objective (:mod:`vae_tf.remedies`).

Loss conventions (DESIGN.md): for every example, the reconstruction term
``log p(x|z)`` is **summed over all data dimensions** and the KL term
``KL(q(z|x) || p(z))`` is **summed over all latent dimensions**; both are in nats. Reported
metrics and the loss are **means over the batch** (Keras then averages batches over an epoch).
No term is rescaled by the data size or the number of pixels: β means what Higgins et al. mean.

    elbo           = reconstruction − kl                                    (per example)
    loss           = −mean_B(reconstruction) + kl_penalty + Σ_r penalty_r   (what the optimizer minimises)
    kl_penalty     = β_t · mean_B(kl) for every KL weight but capacity (γ · |mean_B(kl) − C_t|)

There is one model class. What differs between remedies is a slot value: the KL weight (β, annealing,
capacity, the ControlVAE controller), the regularisers (MI with a Q network), the input noise
(Gaussian, FGSM) and the inference procedure (standard, aggressive); the likelihood (AR-ELBO) and the
decoder (Skip) are parts of the model as before. :mod:`vae_tf.remedies.base` has the step they
assemble.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from vae_tf import replicas
from vae_tf.errors import ConfigError
from vae_tf.latents.base import LatentFamily
from vae_tf.likelihoods.base import Likelihood
from vae_tf.models.inputs import codes, fit_data, model_rows, symbolic
from vae_tf.remedies.base import Inference, InputNoise, KLWeight, NoInputNoise, Regularizer, StandardInference
from vae_tf.remedies.beta_vae import ConstantBeta

#: KL threshold (nats, averaged over data) above which a dimension counts as carrying information
#: in the training-time ``active_kl_dims`` readout (the (ε, δ)-collapse ε of Lucas et al. 2019).
ACTIVE_KL_THRESHOLD = 0.01

#: Numeric precisions of the encoder and decoder networks (Keras dtype policies). Everything else
#: (latent family, likelihood, KL, log-probabilities, trackers, loss, variables) is float32.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def check_precision(precision) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"model precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


class MeanVector(keras.metrics.Metric):
    """Running mean of a per-example vector (e.g. KL per latent dimension) over all examples seen."""

    def __init__(self, size: int, name: str = "mean_vector", **kwargs):
        super().__init__(name=name, **kwargs)
        self.size = int(size)
        self.total = self.add_variable(shape=(self.size,), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values):
        values = tf.convert_to_tensor(values, tf.float32)
        self.total.assign_add(tf.reduce_sum(values, axis=0))
        self.count.assign_add(tf.cast(tf.shape(values)[0], tf.float32))

    def result(self):
        return tf.math.divide_no_nan(tf.convert_to_tensor(self.total), tf.convert_to_tensor(self.count))

    def reset_state(self):
        self.total.assign(tf.zeros([self.size]))
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "size": self.size}


#: ``keras.Model.fit``'s parameters in Keras 3's order: ``VAE.fit`` binds positional arguments to
#: them. Not read from the method, which a caller may have wrapped in a ``(*args, **kwargs)``
#: function (MLflow's autolog patches ``fit``; so does benchmarks/startup.py); a test checks the
#: list against Keras' own signature.
FIT_PARAMETERS = ("x", "y", "batch_size", "epochs", "verbose", "callbacks", "validation_split", "validation_data",
                  "shuffle", "class_weight", "sample_weight", "initial_epoch", "steps_per_epoch", "validation_steps",
                  "validation_batch_size", "validation_freq")


def _fit_arguments(args: tuple, kwargs: dict) -> dict:
    """``fit``'s arguments, positional ones too, by name (:data:`FIT_PARAMETERS`)."""
    if len(args) > len(FIT_PARAMETERS):
        raise TypeError(f"VAE.fit takes at most {len(FIT_PARAMETERS)} positional arguments ({len(args)} given)")
    named = dict(zip(FIT_PARAMETERS, args))
    both = sorted(set(named) & set(kwargs))
    if both:
        raise TypeError(f"VAE.fit got multiple values for argument {both[0]!r}")
    return {**named, **kwargs}


class VAE(keras.Model):
    """Variational autoencoder trained on a composed objective (module docstring).

    Args:
        encoder: Keras model ``x -> params`` (``[B, latent.param_size]``).
        decoder: Keras model ``z -> out`` (the likelihood's raw parameters).
        latent: the latent family (posterior, prior, KL).
        likelihood: the observation model p(x|z).
        kl_weight: a :class:`~vae_tf.remedies.base.KLWeight` (default: constant β = 1, the
            ELBO). The weight in force is
            the non-trainable variable ``beta`` (logged), which a KL weight whose β changes sets
            every training step; checkpoints carry it.
        regularizers: zero or more :class:`~vae_tf.remedies.base.Regularizer`.
        input_noise: an :class:`~vae_tf.remedies.base.InputNoise` (default: none).
        inference: an :class:`~vae_tf.remedies.base.Inference` (default: standard).
        seed: seed of the model's own random stream (reparameterisation noise, Gaussian input
            noise, Monte-Carlo KL draws), held in a ``keras.random.SeedGenerator`` whose state is
            a variable (in :func:`checkpoint_for`'s checkpoints; ``save_weights`` leaves it out,
            so a model loaded from weights restarts its stream).
        precision: the dtype policy the encoder and decoder were built with (``float32``,
            ``mixed_bfloat16``, ``mixed_float16``; :func:`vae_tf.models.build_vae` builds them).
            The networks compute in 16 bits and hand float32 to the family and the likelihood,
            so the KL, the log-probabilities, the trackers and the loss are float32 whatever the
            precision. With ``mixed_float16``, :meth:`compile` wraps the optimizer in a
            ``keras.optimizers.LossScaleOptimizer`` (as Keras does for a mixed_float16 model)
            and every gradient step scales the loss with ``optimizer.scale_loss``.

    Use :func:`vae_tf.models.build_vae` to build one from plain dicts.

    **Distributed training** (``tf.distribute``; build and compile the model inside
    ``strategy.scope()``): every composition trains under ``MirroredStrategy``; each replica's
    loss is weighted by its share of the global batch before its gradient (the optimizer sums
    them; 1/R on even splits, exact on a last batch that splits unevenly), batch statistics
    inside a loss or a controller are global-batch values, state variables stay identical on all replicas, and reparameterisation noise is drawn for the global batch
    and sliced, so R replicas on a global batch B follow the single-device run on B up to
    float rounding (:mod:`vae_tf.replicas`). Under a ``MultiWorkerMirroredStrategy`` the step
    logs are rank-1, as Keras needs there (stack-notes.md §6). Metrics are per-replica means over
    the epoch, averaged over replicas (exact when replicas see equally many examples).

    Training steps are counted in the non-trainable variable ``train_steps``; schedules read it,
    so a restored checkpoint (:func:`checkpoint_for`) continues them exactly. Save a model with
    :func:`vae_tf.export.export_model` (a SavedModel; :func:`vae_tf.export.load_vae` rebuilds it)
    or :func:`checkpoint_for`; Keras' ``model.save("x.keras")`` cannot rebuild it and says so.

    Metrics (every step; means over the examples seen in the epoch): ``loss``, ``elbo``,
    ``reconstruction``, ``kl``; ``beta`` is the KL weight the last step trained with (a schedule
    steps it before the step's loss: after 12 steps of ``linear`` over 30 it is 11/30); plus every slot's
    trackers (``mi_bound``, ``elbo_perturbed``, ``aggressive_inner_steps``, ...), the latent
    family's own diagnostics, and the state of the likelihood and the slots (last value, e.g.
    ``sigma_x``, ``kl_set_point``, ``capacity``). With an input noise, ``elbo``,
    ``reconstruction`` and ``kl`` are the clean input's (comparable with every other run) and
    ``loss`` is what the step trained on. Evaluation adds ``active_kl_dims``: the number of
    latent dimensions whose KL, averaged over the evaluated data, exceeds 0.01 nats; the
    per-dimension values are in :attr:`kl_per_dim` after ``evaluate`` (or after each epoch's
    validation in ``fit``).
    """

    #: What the model reads: ``image`` (float arrays ``[B, *data_shape]``, any shape) or ``text``
    #: (:class:`vae_tf.models.text.TextVAE`: raw sentences).
    modality = "image"

    def __init__(self, encoder: keras.Model, decoder: keras.Model, latent: LatentFamily, likelihood: Likelihood,
                 kl_weight: KLWeight | None = None, regularizers=(), input_noise: InputNoise | None = None,
                 inference: Inference | None = None, seed: int | None = None, precision: str = "float32",
                 data_shape=None, **kwargs):
        super().__init__(**kwargs)
        self.precision = check_precision(precision)
        self.data_shape = tuple(int(d) for d in (data_shape if data_shape is not None else encoder.inputs[0].shape[1:]))
        self.encoder = encoder
        self.decoder = decoder
        self.latent = latent
        self.likelihood = likelihood
        self.kl_weight = kl_weight if kl_weight is not None else ConstantBeta(ConstantBeta.Options(), None)
        self.regularizers = list(regularizers)
        self.input_noise = input_noise if input_noise is not None else NoInputNoise(NoInputNoise.Options(), None)
        self.inference = inference if inference is not None else StandardInference(StandardInference.Options(), None)
        for slot, value, base in (("kl_weight", self.kl_weight, KLWeight), ("input_noise", self.input_noise, InputNoise),
                                  ("inference", self.inference, Inference),
                                  *(("regularizers", r, Regularizer) for r in self.regularizers)):
            if not isinstance(value, base):
                raise ConfigError(f"{slot} must be a {base.__name__} (vae_tf.remedies), got {type(value).__name__}")
        if type(self).modality == "image":
            self._check_network_shapes()
        self.beta = self.add_weight(name="beta", shape=(), trainable=False,
                                    initializer=keras.initializers.Constant(self.kl_weight.initial_beta()))
        self.train_steps = self.add_weight(name="train_steps", shape=(), dtype="int64", initializer="zeros",
                                           trainable=False)
        latent.bind_step(self.train_steps)  # schedules inside the family (a temperature) read it
        self.seed_generator = keras.random.SeedGenerator(seed, name="vae_seed")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.kl_per_dim_tracker = MeanVector(latent.kl_size, name="kl_per_dim")
        self._last_kl_per_dim = None  # :attr:`kl_per_dim` as the last `evaluate` left it (numpy)

    def _check_network_shapes(self) -> None:
        """One line when a network given by the caller (not by ``build_vae``) does not fit the
        latent family or the likelihood: Keras said so inside the first step, in a traceback about
        a split or a loss shape. Networks whose output shape is unknown before they are called
        (subclassed Keras models) are not checked."""
        params = int(self.latent.param_size)
        channels = self.data_shape[-1] * int(self.likelihood.param_channels) if self.data_shape else None
        for network, wanted, what in (
                (self.encoder, (params,), f"the latent family's {params} parameters"),
                (self.decoder, (*self.data_shape[:-1], channels), f"the likelihood's parameters "
                 f"({self.likelihood.param_channels} per channel of the data's {self.data_shape[-1] if self.data_shape else 0})")):
            outputs = getattr(network, "outputs", None)
            if not outputs or channels is None:
                continue
            shape = tuple(outputs[0].shape[1:])
            if not tf.TensorShape(shape).is_compatible_with(wanted):  # a None dimension fits any size
                raise ConfigError(f"the {network.name} network gives outputs of shape (None, "
                                  f"{', '.join(map(str, shape))}) but this model needs (None, "
                                  f"{', '.join(map(str, wanted))}): {what}")

    @property
    def slots(self) -> list:
        """Every slot value: KL weight, regularisers, input noise, inference."""
        return [self.kl_weight, *self.regularizers, self.input_noise, self.inference]

    @property
    def composition(self) -> dict:
        """What the objective composes, in the slot form (recorded in the export's assets)."""
        return {"kl_weight": {"kind": self.kl_weight.kind, **self.kl_weight.describe()},
                "regularizers": [{"kind": r.kind, **r.describe()} for r in self.regularizers],
                "input_noise": {"kind": self.input_noise.kind, **self.input_noise.describe()},
                "inference": {"kind": self.inference.kind, **self.inference.describe()}}

    @property
    def objective(self) -> str:
        """One line naming the composition, e.g. ``control + mi_q + fgsm + aggressive``."""
        parts = [self.kl_weight.kind, *(r.kind for r in self.regularizers)]
        parts += [s.kind for s in (self.input_noise, self.inference) if s.kind not in ("none", "standard")]
        return " + ".join(parts)

    # --- the model's pieces ----------------------------------------------------------------
    def next_seed(self) -> tf.Tensor:
        """A fresh stateless seed (int32 ``[2]``) from the model's checkpointed random stream."""
        return tf.cast(self.seed_generator.next(), tf.int32)

    def prepare(self, x) -> tuple[tf.Tensor, tf.Tensor]:
        """``(inputs, target)`` of a batch as the data pipeline gives it: what the encoder reads
        (and an input noise perturbs) and what the likelihood scores. For images both are the
        batch itself; a text model tokenises its sentences (:class:`vae_tf.models.text.TextVAE`)."""
        x = tf.convert_to_tensor(x)
        return x, x

    #: Whether :meth:`encoder_input` has trainable weights (a text model's word embeddings): then
    #: a training step computes it inside its gradient tape.
    embeds_inputs = False

    def encoder_input(self, inputs) -> tf.Tensor:
        """What the encoder reads, and an input noise perturbs, from :meth:`prepare`'s inputs:
        the images themselves; a text model's embedded words."""
        return inputs

    def compute_terms(self, x: tf.Tensor, training: bool = False, target: tf.Tensor | None = None, *,
                      gradient: bool = True) -> dict:
        """Per-example ELBO terms for a batch.

        ``x`` is what the encoder sees (:meth:`prepare`'s inputs, possibly perturbed); ``target``
        (default ``x``) is what the likelihood scores, so an input noise can have the clean input
        reconstructed. ``gradient=False`` where no gradient of the terms will be taken (an
        evaluation step, the clean pass beside an input noise): the likelihood then scores with
        :meth:`~vae_tf.likelihoods.Likelihood.log_prob_for_evaluation`, the same value, cheaper
        for the categorical over words (the terms stay differentiable either way).

        Returns a dict of tensors: ``params`` (encoder output), ``z`` (reparameterised sample),
        ``out`` (decoder output), ``reconstruction`` ``[B]`` = log p(target|z) summed over data
        dims, ``kl_per_dim`` ``[B, d]``, ``kl`` ``[B]`` summed over latent dims, ``elbo`` ``[B]``.
        """
        target = x if target is None else target
        params = self.encoder(x, training=training)
        seed = self.next_seed()
        z = self.sample_code(params, seed)
        out = self.decoder(z, training=training)
        reconstruction = self.likelihood_scorer(gradient)(target, out)
        kl_per_dim = self.latent.kl_per_dim(params, z, seed=tf.random.experimental.stateless_fold_in(seed, 1))
        kl = tf.reduce_sum(kl_per_dim, axis=-1)
        return {"params": params, "z": z, "out": out, "reconstruction": reconstruction,
                "kl_per_dim": kl_per_dim, "kl": kl, "elbo": reconstruction - kl}

    def likelihood_scorer(self, gradient: bool):
        """log p(target | z) as :meth:`compute_terms` scores it: the likelihood's ``log_prob``, or,
        where no gradient will be taken (``gradient=False``), its ``log_prob_for_evaluation``."""
        return self.likelihood.log_prob if gradient else self.likelihood.log_prob_for_evaluation

    def sample_code(self, params: tf.Tensor, seed) -> tf.Tensor:
        """The reparameterised z ~ q(z|x) of a training or evaluation step. On several replicas
        the noise is drawn for the global batch and sliced (:func:`replicas.on_global_rows`), so
        example i gets the same z as on one device; on one device it is ``latent.sample``."""
        return replicas.on_global_rows(lambda p: self.latent.sample(p, seed=seed), params)

    def forward(self, x: tf.Tensor, target: tf.Tensor, *, training: bool, update_state: bool = False,
                tape=None) -> dict:
        """One forward pass of the composed objective: :meth:`compute_terms` on the encoder input
        ``x`` and the likelihood target ``target`` (:meth:`prepare`'s), the KL weight (stepped when ``update_state``),
        the regularisers' terms (their own updates when ``update_state`` and ``training``) and
        ``loss`` = −mean_B(reconstruction) + kl_penalty + Σ penalties (a scalar). An evaluation
        pass (``training=False``) takes no gradient, so its likelihood is scored as
        :meth:`compute_terms` scores it with ``gradient=False``."""
        terms = self.compute_terms(x, training=training, target=target, gradient=training)
        if update_state and self.kl_weight.static_beta is None:
            self.beta.assign(self.kl_weight.next_beta(terms["kl"], self.train_steps))
        for regularizer in self.regularizers:
            if training and update_state:
                terms.update(regularizer.train_terms(self, terms, tape))
            else:
                terms.update(regularizer.eval_terms(self, terms))
        terms["loss"] = self.objective_loss(terms)
        return terms

    def objective_loss(self, terms: dict) -> tf.Tensor:
        """The scalar the optimizer minimises, from a forward pass's terms:
        ``−mean_B(reconstruction) + kl_penalty + Σ_r penalty_r`` with the KL weight in force
        (``beta``) and the penalty of every regulariser whose terms ``terms`` holds."""
        beta = self.kl_weight.static_beta
        beta = tf.convert_to_tensor(self.beta) if beta is None else beta
        loss = -tf.reduce_mean(terms["reconstruction"]) + self.kl_weight.penalty(terms["kl"], beta, self.train_steps)
        for regularizer in self.regularizers:
            if regularizer.penalty_key in terms:
                loss = loss + regularizer.penalty(terms)
        return loss

    def loss_and_gradients(self, x: tf.Tensor, variables, *, update_state: bool = True) -> tuple[dict, list]:
        """The terms of one training forward pass of a data batch ``x`` (:meth:`prepare`, then the
        input noise's x̃ of the inputs, scored against the clean target) and the gradients of its
        loss (plus any layer losses) w.r.t. ``variables``, scaled for the replicas and the loss
        scale (:meth:`gradient_loss`). ``terms`` also hold ``inputs`` (clean), ``x_in`` (what the
        encoder read) and ``target``."""
        tokens, target = self.prepare(x)
        inputs = self.encoder_input(tokens)
        x_in = self.input_noise.perturb(self, inputs, target)  # a constant: no gradient flows into x̃
        with tf.GradientTape() as tape:
            if self.embeds_inputs:
                # The embedding inside the tape gets its gradient; the perturbation stays constant.
                embedded = self.encoder_input(tokens)
                x_in = embedded if self.input_noise.identity else embedded + tf.stop_gradient(x_in - inputs)
            terms = self.forward(x_in, target, training=True, update_state=update_state, tape=tape)
            loss = terms["loss"] + tf.add_n(self.losses) if self.losses else terms["loss"]
            scaled = self.gradient_loss(loss, batch_size=tf.shape(target)[0])
        terms.update(inputs=inputs, x_in=x_in, target=target)
        return terms, tape.gradient(scaled, variables)

    def update(self, x: tf.Tensor, variables, *, update_state: bool = True) -> dict:
        """One optimizer step on ``variables`` (:meth:`loss_and_gradients`); returns the terms."""
        terms, grads = self.loss_and_gradients(x, variables, update_state=update_state)
        self.optimizer.apply_gradients(zip(grads, variables))
        return terms

    @property
    def encoder_variables(self) -> list:
        """φ: the encoder network's and the latent family's trainable variables."""
        return [*self.encoder.trainable_variables, *self.latent.trainable_variables]

    @property
    def decoder_variables(self) -> list:
        """θ: every other trainable variable (decoder network, likelihood)."""
        encoder_ids = {id(v) for v in self.encoder_variables}
        return [v for v in self.trainable_variables if id(v) not in encoder_ids]

    def after_step(self, terms: dict) -> None:
        """Bookkeeping once per training step, after its updates: the likelihood's own state
        (AR-ELBO's decoder variance, from the step's target and decoder output) and the step
        counter."""
        self.likelihood.observe(terms["target"], terms["out"])
        self.train_steps.assign_add(1)

    def state_metrics(self) -> dict:
        """Scalars that describe the likelihood's and the slots' state (logged every epoch)."""
        state = dict(self.likelihood.state())
        for slot in self.slots:
            state.update(slot.state(self.train_steps))
        return state

    # --- Keras hooks -----------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", *args, **kwargs):
        """``keras.Model.compile``; with ``precision="mixed_float16"`` the optimizer is wrapped in
        a ``LossScaleOptimizer`` (dynamic loss scaling), as Keras does for a model whose own dtype
        policy is mixed_float16 (``auto_scale_loss=False`` turns it off). Only the networks carry
        the policy here, so Keras' own check does not see it."""
        super().compile(optimizer, *args, **kwargs)
        if (self.precision == "mixed_float16" and kwargs.get("auto_scale_loss", True) and self.optimizer is not None
                and not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)):
            self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer, name="loss_scale_optimizer")

    def gradient_loss(self, loss: tf.Tensor, optimizer=None, batch_size=None) -> tf.Tensor:
        """The scalar to differentiate for ``loss`` (a mean over ``batch_size`` examples): weighted
        by this replica's share of the global batch (the optimizer sums the replicas' gradients;
        :func:`vae_tf.replicas.scale_for_gradient`) and scaled by the optimizer's loss scale
        (mixed_float16; the optimizer unscales). Both are identities on one float32 device and
        add no op."""
        optimizer = self.optimizer if optimizer is None else optimizer
        return optimizer.scale_loss(replicas.scale_for_gradient(loss, batch_size))

    @property
    def metrics(self):
        # Listing the trackers lets Keras reset them every epoch; `loss` comes from our own tracker
        # (a bare "loss" key would be shadowed by Keras' built-in one: stack-notes.md §4).
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker, self.kl_per_dim_tracker,
                *self.latent.metrics, *(m for slot in self.slots for m in slot.metrics)]

    @staticmethod
    def unpack(data):
        """Accept ``x`` or ``(x, ...)`` batches (labels are ignored by unsupervised objectives)."""
        if isinstance(data, (tuple, list)):
            return data[0]
        return data

    def update_trackers(self, loss: tf.Tensor, terms: dict) -> dict:
        """Update the trackers; every one is a mean over *examples* (the loss is weighted by the
        batch size), so ``loss``, ``elbo``, ``reconstruction`` and ``kl`` stay consistent when
        the last batch of an epoch is smaller."""
        batch = tf.cast(tf.shape(terms["elbo"])[0], tf.float32)
        self.loss_tracker.update_state(replicas.batch_mean_for_tracker(loss, batch), sample_weight=batch)
        self.reconstruction_tracker.update_state(terms["reconstruction"])
        self.kl_tracker.update_state(terms["kl"])
        family_logs = self.latent.update_diagnostics(terms)  # the family's own metrics ({} for Gaussian)
        # Derived rather than tracked (fewer ops per step, which small models feel: see
        # docs/performance.md): the ELBO mean is the difference of the two means over the same
        # examples, and β is reported as the value the step trained with.
        reconstruction, kl = self.reconstruction_tracker.result(), self.kl_tracker.result()
        logs = {"loss": self.loss_tracker.result(), "elbo": reconstruction - kl, "reconstruction": reconstruction,
                "kl": kl, "beta": tf.convert_to_tensor(self.beta)}
        own = (self.loss_tracker, self.reconstruction_tracker, self.kl_tracker, self.kl_per_dim_tracker)
        logs.update({m.name: m.result() for m in self.metrics if all(m is not t for t in own)})  # family, slots
        return {**logs, **family_logs}

    def _step_logs(self, terms: dict, evaluation: bool = False) -> dict:
        """Update every tracker from a step's terms and return the logs. With an input noise the
        main ELBO terms are the clean input's (an extra forward pass, no gradient; module
        docstring) and the perturbed ones go to the noise's trackers. An evaluation also
        accumulates the KL per dimension (:attr:`kl_per_dim`)."""
        for regularizer in self.regularizers:
            regularizer.update_trackers(terms)
        clean = terms
        if not self.input_noise.identity:
            clean = self.compute_terms(terms["inputs"], training=False, target=terms["target"], gradient=False)
            self.input_noise.update_trackers(terms["inputs"], terms["x_in"], terms)
        if evaluation:
            self.kl_per_dim_tracker.update_state(clean["kl_per_dim"])
        return self.update_trackers(terms["loss"], clean)

    def layers_outside_compiled_steps(self) -> list:
        """Layers (with their sublayers) that the compiled training and evaluation steps never run,
        so their XLA support does not count (none here; a text model's tokenizer)."""
        return []

    def layers_without_xla(self) -> list[str]:
        """The class names of the layers that make Keras turn ``jit_compile=True`` off for this
        model: those whose ``supports_jit`` is False (Keras' own walk over the layers), less
        :meth:`layers_outside_compiled_steps`."""
        outside = {id(sub) for layer in self.layers_outside_compiled_steps() for sub in layer._flatten_layers()}
        return sorted({type(layer).__name__ for layer in self._flatten_layers()
                       if id(layer) not in outside and not layer.supports_jit})

    def train_step(self, data):
        terms = self.inference.train_step(self, self.unpack(data))
        self.after_step(terms)
        return replicas.step_logs({**self._step_logs(terms), **self.state_metrics()})

    def test_step(self, data):
        tokens, target = self.prepare(self.unpack(data))
        inputs = self.encoder_input(tokens)
        x_in = self.input_noise.perturb(self, inputs, target)
        terms = self.forward(x_in, target, training=False)
        terms.update(inputs=inputs, x_in=x_in, target=target)
        logs = self._step_logs(terms, evaluation=True)
        for slot in self.slots:  # trackers only a training step updates
            for name in slot.train_only_metrics:
                logs.pop(name, None)
        active = tf.reduce_sum(tf.cast(self.kl_per_dim_tracker.result() > ACTIVE_KL_THRESHOLD, tf.float32))
        return replicas.step_logs({**logs, "active_kl_dims": active})

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, after the inference procedure set up what it needs (the fresh
        batches and the per-epoch callback of aggressive inference).

        The optimizer's variables are made here, eagerly, where Keras (without a tf.distribute
        strategy) would make them inside the first traced training step: a step that creates
        variables is traced twice, and variables are slow to create in a trace (about a second of
        start-up on the conv model, benchmarks/startup.py).

        A ``tf.data.Dataset`` (``DataSplits.pipeline`` shuffles) is fitted with ``shuffle=False``
        unless ``shuffle`` is given: Keras ignores the flag for a dataset and warns on every
        ``fit`` that its default, ``True``, was ignored.

        The data (``x`` and ``validation_data``) is checked first, with one line per mistake, as
        :meth:`encode` checks its input (:func:`vae_tf.models.inputs.fit_data`): an array or
        tensor for its shape, finite values and the likelihood's support, a dataset for its
        element shape and dtype. Keras said these things in a traceback from inside the first
        step, or not at all: 0–255 values or a NaN pixel trained on and ruined the weights."""
        kwargs = _fit_arguments(args, kwargs)  # every argument by its name, for the checks below
        _, kwargs = self._checked_data((), kwargs, fit=True)
        if isinstance(kwargs.get("x"), tf.data.Dataset) and "shuffle" not in kwargs:
            kwargs["shuffle"] = False
        if getattr(self, "optimizer", None) is None:  # Keras 3 has no attribute before compile
            raise ConfigError("compile the model before fitting it: model.compile(optimizer=...) (build_vae builds "
                              "it uncompiled; load_vae(path, optimizer=...) compiles it and restores its optimizer's "
                              "state)")
        if self.jit_compile and self.inference.xla_refusal:
            raise ConfigError(f"this model is compiled with jit_compile=True, but {self.inference.xla_refusal}; "
                              "compile it with jit_compile=False")
        for callback in kwargs.get("callbacks") or ():
            if isinstance(callback, keras.callbacks.ModelCheckpoint) and not callback.save_weights_only:
                # Refused now, not when the first epoch has trained and the callback calls save().
                raise ConfigError(f"keras.callbacks.ModelCheckpoint({callback.filepath!r}) saves the whole model, "
                                  "which a vae-tf model cannot be saved as; pass save_weights_only=True (a "
                                  "'.weights.h5' path), or export the model after fit")
        self._build_optimizer()
        self._constant_beta_in_force()
        return super().fit(**self.inference.prepare_fit(self, kwargs))

    def _constant_beta_in_force(self) -> None:
        """A constant β is never assigned by the steps, so the ``beta`` variable (logged) is set
        to it here: weights loaded from a model trained with another β (``load_weights``) would
        otherwise be logged as the β in force."""
        if self.kl_weight.static_beta is not None:
            self.beta.assign(self.kl_weight.static_beta)

    def _build_optimizer(self) -> None:
        """Make a compiled model's optimizer variables now (:meth:`fit`, :func:`checkpoint_for`)."""
        if getattr(self, "optimizer", None) is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _checked_data(self, args: tuple, kwargs: dict, *, fit: bool) -> tuple[tuple, dict]:
        """``fit`` / ``evaluate``'s ``x`` (and ``fit``'s ``validation_data``, its 8th argument)
        through :func:`vae_tf.models.inputs.fit_data`."""
        args, kwargs = list(args), dict(kwargs)
        if args:
            args[0] = fit_data(self, args[0], what="x")
        elif "x" in kwargs:
            kwargs["x"] = fit_data(self, kwargs["x"], what="x")
        if fit and len(args) > 7:
            args[7] = fit_data(self, args[7], what="validation_data")
        elif fit and "validation_data" in kwargs:
            kwargs["validation_data"] = fit_data(self, kwargs["validation_data"], what="validation_data")
        return tuple(args), kwargs

    def load_weights(self, filepath, *args, **kwargs):
        """``keras.Model.load_weights``; a model of the caller's own networks that was never called
        is built first (its networks are: nothing here depends on the input's shape), as Keras
        refuses to load into a model that is not."""
        if not self.built:
            self.build()
        return super().load_weights(filepath, *args, **kwargs)

    def save(self, filepath, *args, **kwargs):
        """Refused: Keras' ``.keras`` / ``.h5`` files rebuild a model from its ``get_config``, which
        a VAE of composed remedies does not have."""
        raise ConfigError(f"a vae-tf model cannot be saved with model.save({str(filepath)!r}); export it with "
                          "vae_tf.export.export_model (load_vae restores it) or checkpoint it with "
                          "vae_tf.models.checkpoint_for (or model.save_weights)")

    def evaluate(self, *args, **kwargs):
        """``keras.Model.evaluate`` (which ``fit`` also calls for its validation), then the KL per
        dimension it accumulated is read once, into :attr:`kl_per_dim`.

        Read here, where every worker of a cluster is: under a multi-worker strategy the tracker
        is a synchronised (on-read) variable, so reading it is an all-reduce with the other
        workers. Read later, by code only the chief runs, it waited for workers that had left:
        Keras' ``save_weights`` reads every property of the model, so each chief's export
        stalled until TensorFlow gave the collective up (~10 s) and logged that the tasks had
        crashed.

        The data is checked first, as :meth:`fit` checks it."""
        if not kwargs.get("_use_cached_eval_dataset"):  # fit's validation: checked when fit began
            args, kwargs = self._checked_data(args, kwargs, fit=False)
        self._constant_beta_in_force()
        logs = super().evaluate(*args, **kwargs)
        seen = float(np.asarray(self.kl_per_dim_tracker.count))
        # no example (an empty dataset): the tracker's zeros are no measurement (kl_per_dim says so)
        self._last_kl_per_dim = np.asarray(self.kl_per_dim_tracker.result()) if seen else "no examples"
        return logs

    @property
    def kl_per_dim(self) -> np.ndarray:
        """Mean KL per latent dimension (nats) over the data of the last evaluation (``evaluate``,
        or ``fit``'s validation). Before any, or after one of no examples, there is none, and it
        says so: the tracker's zeros (only evaluation fills it) read as a collapsed posterior."""
        if self._last_kl_per_dim is None:
            raise ConfigError("model.kl_per_dim is measured by evaluation and none has run: call "
                              "model.evaluate(x) or fit with validation_data")
        if isinstance(self._last_kl_per_dim, str):
            raise ConfigError("model.kl_per_dim is measured by evaluation and the last one (model.evaluate, or fit's "
                              "validation) saw no examples (an empty dataset, e.g. a validation split of 0 rows): "
                              "call model.evaluate(x) on data")
        return self._last_kl_per_dim

    def build(self, input_shape=None):
        # Encoder and decoder are built by their Input layers; the family and the likelihood create
        # their weights in __init__. Nothing is shape-dependent, so there is nothing left to build.
        for layer in (self.latent, self.likelihood):
            layer.built = True
        self.built = True

    # --- inference API (also the SavedModel signatures, see vae_tf.export) -----------------
    @property
    def input_signature(self) -> tf.TensorSpec:
        """What ``encode`` / ``reconstruct`` take: float32 ``[B, *data_shape]``."""
        return tf.TensorSpec((None, *self.data_shape), tf.float32, name="x")

    def example_input(self) -> tf.Tensor:
        """One input row (zeros): what the export traces and describes its outputs with."""
        return tf.zeros((1, *self.data_shape), tf.float32)

    def posterior_params(self, x, training: bool = False) -> tf.Tensor:
        """The latent family's parameters of q(z|x) for a batch of inputs (no input noise)."""
        return self.encoder(x, training=training)

    def log_likelihood(self, target, z) -> tf.Tensor:
        """log p(target | z) ``[N]`` (summed over data dims) for :meth:`prepare`'s targets and codes
        ``[N, code]``: what importance-weighted likelihoods need (computed as for evaluation:
        :meth:`vae_tf.likelihoods.Likelihood.log_prob_for_evaluation`)."""
        return self.likelihood.log_prob_for_evaluation(target, self.decoder(z, training=False))

    def expected_output(self, target, z) -> tf.Tensor:
        """The likelihood's expectation of the decoder output for codes ``z`` (``target`` is
        :meth:`prepare`'s; an autoregressive decoder reads it as its teacher-forced prefix)."""
        return self.likelihood.expected(self.decoder(z, training=False))

    def call(self, x, training=False):
        """Deterministic reconstruction E[x | z = code mean of q(z|x)] (``model(x)``, ``predict``:
        unchecked, as Keras' own models; :meth:`reconstruct` checks ``x``)."""
        return self.reconstruction(x)["x_mean"]

    def encode(self, x) -> dict:
        """Named code tensors for ``x`` (``[N, *data_shape]``, checked when given eagerly:
        :func:`vae_tf.models.inputs.model_rows`): ``embedding``, ``z_mean`` and the family's own
        outputs."""
        return self.latent.export_outputs(self.posterior_params(model_rows(self, x)))

    def decode(self, z, seeds=None) -> dict:
        """``x_mean`` (deterministic decode μ_x(z)) and ``x_sample`` (ancestral x ~ p(x|z)) for
        codes ``z`` ``[N, code_size]`` (checked when given eagerly: :func:`vae_tf.models.inputs.codes`).

        With ``seeds`` (int32 ``[N, 2]``, one row per code) each row's ``x_sample`` is drawn from
        its own seed; without, from TensorFlow's global random stream (no model state changes, so
        the exported ``decode`` signature is safe to call concurrently).
        """
        z, seeds = self._decode_inputs(z, seeds)
        out = self.decoder(z, training=False)
        if seeds is None:
            x_sample = self.likelihood.sample(out)
        else:
            x_sample = self.likelihood.sample_rows(out, seeds)
        return {"x_mean": self.likelihood.mean(out), "x_sample": x_sample}

    def reconstruct(self, x) -> dict:
        """``x_mean``: the deterministic decode of the posterior's code mean (``x`` checked as
        :meth:`encode` checks it)."""
        return self.reconstruction(model_rows(self, x))

    def reconstruction(self, x) -> dict:
        """:meth:`reconstruct` of ``x`` as it is, unchecked."""
        params = self.posterior_params(x)
        return {"x_mean": self.likelihood.mean(self.decoder(self.latent.embedding(params), training=False))}

    def _decode_inputs(self, z, seeds):
        """``decode``'s codes and seed rows, checked when given eagerly (one seed row per code)."""
        if seeds is not None:
            seeds = seed_rows(seeds)
        rows = None if seeds is None or symbolic(seeds) else int(seeds.shape[0])
        return codes(self, z, rows=rows), seeds

    def sample(self, seeds) -> dict:
        """One generated example per seed row (int32 ``[n, 2]``): ``z`` ~ p(z), ``x_mean`` and
        ``x_sample``. Stateless: the same seed row always gives the same sample, whatever else is
        in the batch."""
        seeds = seed_rows(seeds)
        z = self.latent.sample_prior(seeds)
        # The decode noise gets its own stream per row, derived from the row's seed.
        decode_seeds = tf.map_fn(lambda s: tf.random.experimental.stateless_fold_in(s, 1), seeds)
        return {"z": z, **self.decode(z, seeds=decode_seeds)}


def seed_rows(seeds) -> tf.Tensor:
    """``seeds`` as the int32 ``[n, 2]`` tensor of stateless seed rows that ``sample`` reads. Values
    given eagerly (NumPy, lists, eager tensors) are checked first, with one line for what is
    wrong: a cast would turn ``1.7`` into ``1`` and ``2**40`` into another seed, so two different
    seeds would give the same sample. Inside a traced function (the exported ``sample``
    signature, whose input is int32 ``[n, 2]`` already) they are only cast."""
    if isinstance(seeds, tf.Tensor) and not tf.executing_eagerly():
        return tf.cast(seeds, tf.int32)
    values = np.asarray(seeds.numpy() if isinstance(seeds, tf.Tensor) else seeds)
    if values.ndim != 2 or values.shape[1] != 2:
        raise ConfigError(f"seeds must be rows of two integers, shape [n, 2] (e.g. [[0, 1], [0, 2]]), got shape "
                          f"{list(values.shape)}")
    if len(values) == 0:  # a text model's decode seeds, derived from none, said "got shape [0]"
        raise ConfigError("seeds has no rows; give at least one, shape [n >= 1, 2] (e.g. [[0, 1]])")
    if values.dtype.kind not in "iu":
        whole = values.dtype.kind == "f" and bool(np.all(np.isfinite(values))) and bool(np.all(values == np.round(values)))
        if not whole:
            raise ConfigError(f"seeds must be whole numbers, got {values.dtype} values (e.g. "
                              f"{values.reshape(-1)[0]!r}); a cast would turn different seeds into one")
    info = np.iinfo(np.int32)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise ConfigError(f"seeds must lie in the int32 range [{info.min}, {info.max}], got {values.min()} to "
                          f"{values.max()}; a cast would wrap them onto other seeds")
    return tf.constant(values.astype(np.int32))


def checkpoint_for(model: keras.Model, **extra) -> tf.train.Checkpoint:
    """A ``tf.train.Checkpoint`` over every model and optimizer variable, in their (deterministic)
    creation order, plus the model's metric trackers and any ``extra`` trackables: how a
    :class:`VAE` is checkpointed (``checkpoint_for(model).save(path)``, then
    ``checkpoint_for(rebuilt).restore(path)`` on a model built the same way).

    ``tf.train.Checkpoint(model=model)`` is not enough: Keras 3 sub-layers are not reachable
    through TensorFlow's object graph, so it misses the remedies' own networks and optimizers
    (the MI regulariser's Q network) and the random-stream state, and its ``assert_consumed()``
    passes anyway; here the variables are listed explicitly. They are keyed by position, not by
    ``variable.path``: paths carry process-global counters (``dense_31``, ``adam_12``) that differ
    between the process that saved and the one that restores. The model's variables include its
    schedule/controller state and its random-stream state, so a restore continues exactly; a
    model of another architecture fails the restore on the first shape mismatch. The trackers'
    running sums (``metrics``) let a run resumed in the middle of an epoch report that epoch's
    means over all of its steps.
    """
    if isinstance(model, VAE):
        # A compiled model's optimizer is built here, so a restore into a model that has not
        # trained yet (the usual case) restores the optimizer's state too: unbuilt, it had no
        # variables, Adam restarted from step 0 and only assert_consumed() said so.
        model._build_optimizer()
    parts = {"model": list(model.variables)}
    if getattr(model, "optimizer", None) is not None and model.optimizer.built:
        parts["optimizer"] = list(model.optimizer.variables)
    metric_variables = [v for m in model.metrics for v in m.variables]
    if metric_variables:
        parts["metrics"] = metric_variables
    return tf.train.Checkpoint(**parts, **extra)
