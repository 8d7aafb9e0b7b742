"""Aggressive inference-network training (He, Spokoyny, Neubig, Berg-Kirkpatrick, ICLR 2019,
"Lagging inference networks and posterior collapse in variational autoencoders", Algorithm 1): an
inference procedure, so it composes with any KL weight, regulariser and input noise
(``inference: {kind: aggressive}``).

Early in training the encoder lags behind the true posterior and the decoder learns to ignore
z. The remedy: while in the *aggressive phase*, before every decoder update optimise the encoder
alone, on fresh batches, until its objective stops improving; leave the phase once the mutual
information I_q(x; z) on held-out data stops rising, then train as usual.

One training step (on the batch x that ``fit`` hands it):

- aggressive phase (``aggressive_phase == 1``): encoder-only updates — the first on x, the
  following ones on fresh batches from the procedure's own repeated iterator — until the
  encoder loss stops improving or ``max_inner_steps`` updates ran (:func:`converge_loop`: the
  mean loss of every window of ``check_every`` steps is compared with the previous window's;
  the loop stops at the first window that is not lower, as jxhe/vae-lagging-encoder does); then
  one decoder-only update on x;
- afterwards: one joint update on x (the standard step).

Every update minimises the composed loss (the model's KL weight, regularisers and input noise)
with the model's optimizer, applied to the encoder's variables (encoder network and latent
family), to the decoder's (every other trainable variable: decoder network, likelihood), or to
both. One Adam keeps independent moments per variable, so this is the paper's separate encoder
and decoder optimizers, except that the step count of Adam's bias correction is shared (≈ 1
after a few hundred steps anyway). **State updates happen once per step**, in the outer update:
the encoder-only updates read the KL weight in force (a controller is not stepped 100 times per
batch), run no auxiliary optimizer (an MI regulariser's Q step) and do not advance the step
counter.

**Leaving the phase** (per epoch, as in the paper): at the end of every epoch the minibatch MI
estimate (:func:`vae_tf.latents.density.minibatch_mutual_information`: He et al.'s ``calc_mi``
with log q(z_i | x_i) at the drawn z_i for its closed-form entropy, with a fixed seed so that
epochs are compared on the same noise) is computed on one held-out batch (He et al. average
over their whole validation loader in batches of 50, or 32 for text); when it is lower than at the previous epoch's end, ``aggressive_phase`` becomes 0 for good
and ``aggressive_end_epoch`` records the epoch (1-based). ``leave_phase: never`` keeps the phase
for the whole run (the MI is still estimated and logged every epoch).

**Fresh batches.** The procedure holds an iterator over a repeated ``tf.data`` pipeline
(:meth:`Aggressive.set_inner_data`) and reads it inside the compiled step; the number of fresh
batches read so far is the variable ``inner_batches``, so a resumed run can restart its iterator
where the checkpoint left it (``vae-tf train`` does: the inner stream is
``DataSplits.resumable_pipeline`` from that position, and a killed run resumes to the losses of
an uninterrupted one). ``fit`` sets the iterator up by itself when it is not set, and again when a
later ``fit`` is given other data: from the training data it is given (``x.repeat()`` for a
``tf.data.Dataset``), and the held-out batch from ``validation_data`` or the rows
``validation_split`` holds out (:meth:`Aggressive.set_heldout`); what the caller set with
:meth:`Aggressive.set_inner_data` / :meth:`Aggressive.set_heldout` is kept. It also adds the
:class:`AggressivePhase` callback (first, so that checkpoints and loggers see the phase after its
update).

**Under tf.distribute** (several replicas in sync): every update weights its loss by the
replica's share of the global batch (the optimizer sums gradients); the convergence check reads
the global batch's loss, so all replicas run the same number of inner updates; each fresh batch is read
once for all the local replicas (in cross-replica context) and each replica trains on its share
of it, contiguous rows in replica order as ``tf.distribute`` splits a global batch (under
``MultiWorkerMirroredStrategy`` every worker reads the same batch from its own copy of the
iterator), so R replicas follow the single-device run up to float rounding. ``MirroredStrategy``
refuses synchronisation (``merge_call``) inside ``tf.cond`` / ``tf.while_loop`` bodies run by a
replica, so there the phase's branches and the inner loop run in cross-replica context and call
each replica for every update (``merge_call`` + ``call_for_each_replica``, the pattern of Keras'
``LossScaleOptimizer``); on one device the step is the plain ``tf.cond`` / ``tf.while_loop``.

Logged: ``aggressive_inner_steps`` (mean number of encoder updates per decoder update over the
epoch; 0 after the phase), ``aggressive_phase`` (1 while aggressive), and from the callback
``aggressive_mi`` (the held-out MI at the epoch's end, while the phase lasts) and
``aggressive_end_epoch`` (from the epoch the phase ended on). The phase, the previous MI, the end
epoch and ``inner_batches`` are variables: checkpoints carry them.
"""

from __future__ import annotations

from typing import Literal

import keras
import numpy as np
import tensorflow as tf
from pydantic import PositiveInt, model_validator

from vae_tf import replicas
from vae_tf.errors import ConfigError
from vae_tf.latents.density import minibatch_mutual_information
from vae_tf.remedies.base import Inference, SlotOptions

#: The seed of the held-out MI estimate: fixed, so that successive epochs see the same noise.
HELDOUT_SEED = (20190, 1)
_NO_HELDOUT = ("inference aggressive needs a held-out batch of at least 2 examples for its per-epoch MI check: "
               "give fit validation_data (or validation_split) or call model.inference.set_heldout(x_val) (training job: "
               "data.val_fraction > 0)")


def converge_loop(step_fn, max_steps, check_every) -> tf.Tensor:
    """Run ``loss = step_fn(i)`` for i = 0, 1, ... until ``max_steps`` steps ran or the objective
    stopped improving: after every ``check_every``-th step the mean loss of the last
    ``check_every`` steps is compared with that of the previous window (the first window with
    +inf), and the loop stops when it is not lower. Returns the number of steps run (int32).

    Works eagerly and inside ``tf.function`` (a ``tf.while_loop``).
    """
    check = tf.constant(int(check_every), tf.int32)

    def keep_going(i, window, previous, stop):
        return tf.logical_and(i < max_steps, tf.logical_not(stop))

    def body(i, window, previous, stop):
        loss = tf.cast(step_fn(i), tf.float32)
        i = i + 1
        window = window + loss
        at_check = tf.equal(i % check, 0)
        mean = window / tf.cast(check, tf.float32)
        stop = tf.logical_and(at_check, mean >= previous)
        previous = tf.where(at_check, mean, previous)
        window = tf.where(at_check, 0.0, window)
        return i, window, previous, stop

    start = (tf.constant(0, tf.int32), tf.constant(0.0), tf.constant(np.inf, tf.float32), tf.constant(False))
    steps, *_ = tf.while_loop(keep_going, body, start)
    return steps


class _Holder:
    """A plain container: Keras and TensorFlow do not track what it holds (an iterator must not
    become part of the model's object graph or of its exports)."""

    def __init__(self, value=None):
        self.value = value


class Aggressive(Inference):
    """``inference: {kind: aggressive, max_inner_steps: 100, check_every: 10, heldout_size: 500,
    leave_phase: mi_falls}`` (module docstring): at most ``max_inner_steps`` encoder updates per
    decoder update, a convergence check every ``check_every`` of them, ``heldout_size`` held-out
    examples for the per-epoch MI check, and when to leave the aggressive phase: ``mi_falls`` (He
    et al.: once the held-out MI is lower than at the previous epoch's end) or ``never`` (the whole
    run aggressive, the MI still logged: to test whether an early switch-off is what loses the
    code; each epoch then costs up to ``max_inner_steps`` times more encoder updates)."""

    kind = "aggressive"
    train_only_metrics = ("aggressive_inner_steps",)
    xla_refusal = ("aggressive inference reads its fresh batches inside the training step, from a tf.data "
                   "iterator, which XLA cannot compile")

    class Options(SlotOptions):
        kind: Literal["aggressive"] = "aggressive"
        max_inner_steps: PositiveInt = 100
        check_every: PositiveInt = 10
        heldout_size: PositiveInt = 500
        leave_phase: Literal["mi_falls", "never"] = "mi_falls"

        @model_validator(mode="after")
        def _windows(self):
            if self.check_every > self.max_inner_steps:
                raise ValueError(f"check_every ({self.check_every}) must be <= max_inner_steps "
                                 f"({self.max_inner_steps})")
            return self

    def __init__(self, options, context, **kwargs):
        super().__init__(options, context, **kwargs)

        def state(name, value=0.0, dtype="float32"):
            return self.add_weight(name=name, shape=(), dtype=dtype, initializer=keras.initializers.Constant(value),
                                   trainable=False)

        self.aggressive_phase = state("aggressive_phase", 1.0)
        self.previous_mi = state("aggressive_previous_mi", -1e30)
        self.end_epoch = state("aggressive_end_epoch", 0, "int64")
        self.inner_batches = state("inner_batches", 0, "int64")
        self.inner_steps_tracker = keras.metrics.Mean(name="aggressive_inner_steps")
        self._inner = _Holder()
        self._heldout = _Holder()
        # where the iterator and the held-out batch came from: fit's own data (replaced when a later
        # fit is given other data) or the caller (set_inner_data / set_heldout: kept)
        self._inner.source = self._heldout.source = None
        self._inner.traced = None  # the iterator the model's compiled training step reads (untracked: a holder)

    @property
    def metrics(self):
        return [self.inner_steps_tracker]

    def state(self, step):
        return {"aggressive_phase": tf.convert_to_tensor(self.aggressive_phase)}

    # --- data the step reads besides its batch ------------------------------------------------
    def set_inner_data(self, dataset) -> None:
        """The source of fresh batches for the encoder's inner updates: a ``tf.data.Dataset`` of
        batches (``x`` or ``(x, ...)``), repeated by the caller. To resume exactly, start it after
        the ``inner_batches`` batches the model has read (``int(model.inference.inner_batches)``)."""
        if not isinstance(dataset, tf.data.Dataset):
            raise ConfigError("set_inner_data needs a tf.data.Dataset of batches, e.g. data.pipeline('train', 64, "
                              "repeat=True)")
        from vae_tf.data.splits import static_pipeline  # noqa: PLC0415

        self._inner.value = iter(static_pipeline(dataset))
        self._inner.source = None

    def set_heldout(self, x) -> None:
        """The held-out batch (at most ``heldout_size`` examples) of the per-epoch MI check."""
        x = np.asarray(x)[: self.options.heldout_size]
        if len(x) < 2:
            raise ConfigError(_NO_HELDOUT)
        self._heldout.value = tf.constant(x)
        self._heldout.source = None

    # --- steps -----------------------------------------------------------------------------------
    def _update(self, model, x, variables) -> tf.Tensor:
        terms = model.update(x, variables, update_state=False)
        # the global batch's loss, the same number on every replica: one stopping decision
        return replicas.batch_mean_over_replicas(terms["loss"], tf.shape(terms["elbo"])[0])

    def _next_batch(self, like: tf.Tensor) -> tf.Tensor:
        """The next fresh batch (and one more in ``inner_batches``)."""
        self.inner_batches.assign_add(1)
        self._inner.traced = self._inner.value
        batch = self._inner.value.get_next()
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        return batch if batch.dtype == like.dtype or batch.dtype == tf.string else tf.cast(batch, like.dtype)

    def encoder_loop(self, model, x) -> tf.Tensor:
        """The aggressive phase's inner loop on one device: encoder-only updates, on ``x`` first and
        then on fresh batches, until :func:`converge_loop` stops. Returns the number of updates."""
        variables = model.encoder_variables

        def step(i):
            batch = tf.cond(tf.equal(i, 0), lambda: x, lambda: self._next_batch(x))
            return self._update(model, batch, variables)

        return converge_loop(step, self.options.max_inner_steps, self.options.check_every)

    def _fresh_batch(self, i, spec) -> tf.Tensor:
        """Cross-replica context: the fresh batch of inner update ``i``, read once for all the
        replicas (empty for ``i = 0``, which trains on the step's own batch)."""
        shape = [0, *(0 if d is None else d for d in spec.shape[1:])]
        empty = tf.fill(shape, "") if spec.dtype == tf.string else tf.zeros(shape, spec.dtype)  # text: sentences
        return tf.cond(tf.equal(i, 0), lambda: empty, lambda: self._next_batch(empty))

    @staticmethod
    def _replica_share(x, fresh, i) -> tf.Tensor:
        """In a replica: ``x`` for ``i = 0``, else the replica's rows of ``fresh``, contiguous and in
        replica order, as ``tf.distribute`` splits a global batch (so the reparameterisation noise
        of :func:`replicas.on_global_rows` is the one each example gets on one device)."""
        ctx = replicas.replica_context()
        n = tf.shape(fresh)[0]
        per = (n + ctx.num_replicas_in_sync - 1) // ctx.num_replicas_in_sync
        start = tf.minimum(tf.cast(ctx.replica_id_in_sync_group, tf.int32) * per, n)
        share = fresh[start:tf.minimum(start + per, n)]
        return tf.cond(tf.equal(i, 0), lambda: x, lambda: share if share.dtype == x.dtype else tf.cast(share, x.dtype))

    def _cross_replica_encoder_loop(self, strategy, model, x) -> tf.Tensor:
        """:meth:`encoder_loop` for several replicas: the loop and the phase test run in
        cross-replica context, every update in each replica (module docstring)."""
        variables = model.encoder_variables
        self._inner.traced = self._inner.value
        spec = self._inner.value.element_spec
        spec = spec[0] if isinstance(spec, (tuple, list)) else spec

        def step(i):
            fresh = self._fresh_batch(i, spec)
            losses = strategy.extended.call_for_each_replica(
                lambda xr: self._update(model, self._replica_share(xr, fresh, i), variables), args=(x,))
            return strategy.experimental_local_results(losses)[0]  # equal on all replicas

        return tf.cond(self.aggressive_phase > 0.5,
                       lambda: converge_loop(step, self.options.max_inner_steps, self.options.check_every),
                       lambda: tf.constant(0, tf.int32))

    def _apply(self, model, grads, all_variables, decoder_only: bool) -> tf.Tensor:
        decoder_ids = {id(v) for v in model.decoder_variables}
        pairs = [(g, v) for g, v in zip(grads, all_variables) if not decoder_only or id(v) in decoder_ids]
        model.optimizer.apply_gradients(pairs)
        return tf.constant(0)

    def _cross_replica_apply(self, strategy, model, grads) -> None:
        """The phase's decoder-only or joint update for several replicas (cross-replica ``tf.cond``);
        ``grads`` are in the order of ``trainable_variables``."""
        all_variables = model.trainable_variables

        def apply(decoder_only):
            strategy.extended.call_for_each_replica(
                lambda g: self._apply(model, g, all_variables, decoder_only), args=(grads,))
            return tf.constant(0)

        tf.cond(self.aggressive_phase > 0.5, lambda: apply(True), lambda: apply(False))

    def train_step(self, model, x):
        if self._inner.value is None:
            raise ConfigError("inference aggressive reads fresh batches from its own iterator: call "
                              "model.inference.set_inner_data(dataset.repeat()) before a custom loop (fit does it)")
        if not model.optimizer.built:  # before the branches: optimizer variables cannot be created in a cond
            model.optimizer.build(model.trainable_variables)
        ctx = replicas.replica_context()
        aggressive = self.aggressive_phase > 0.5
        if ctx is None:
            inner_steps = tf.cond(aggressive, lambda: self.encoder_loop(model, x), lambda: tf.constant(0, tf.int32))
        else:
            inner_steps = ctx.merge_call(self._cross_replica_encoder_loop, args=(model, x))
        all_variables = model.trainable_variables
        terms, grads = model.loss_and_gradients(x, all_variables)
        if ctx is None:
            tf.cond(aggressive, lambda: self._apply(model, grads, all_variables, True),
                    lambda: self._apply(model, grads, all_variables, False))
        else:
            ctx.merge_call(self._cross_replica_apply, args=(model, grads))
        self.inner_steps_tracker.update_state(tf.cast(inner_steps, tf.float32))
        return terms

    # --- the per-epoch phase decision --------------------------------------------------------
    def heldout_mi(self, model) -> float:
        """The minibatch MI estimate (nats) on the held-out batch, fixed seed."""
        if self._heldout.value is None:
            raise ConfigError(_NO_HELDOUT)
        params = model.posterior_params(self._heldout.value)
        return float(minibatch_mutual_information(model.latent, params, tf.constant(HELDOUT_SEED, tf.int32)))

    def update_phase(self, model, epoch: int) -> dict:
        """End of epoch ``epoch`` (0-based): while aggressive, estimate the held-out MI and leave
        the phase when it fell since the previous epoch's end. Returns the logs to add."""
        if float(self.aggressive_phase.numpy()) < 0.5:
            return {"aggressive_end_epoch": float(self.end_epoch.numpy())}
        mi = self.heldout_mi(model)
        logs = {"aggressive_mi": mi}
        if self.options.leave_phase == "mi_falls" and mi < float(self.previous_mi.numpy()):
            self.aggressive_phase.assign(0.0)
            self.end_epoch.assign(epoch + 1)
            logs["aggressive_end_epoch"] = float(epoch + 1)
        self.previous_mi.assign(mi)
        return logs

    def prepare_fit(self, model, kwargs):
        """Set up what the procedure needs before ``fit`` (module docstring): the fresh batches
        from ``x`` and the held-out batch from ``validation_data`` or, for arrays, from the rows
        ``validation_split`` holds out (the last ones, as Keras splits; the fresh batches then
        come from the others). What fit set up is replaced when a later ``fit`` is given other
        data (arrays are compared by content, datasets by identity; a later fit without
        validation data keeps the held-out batch); what the caller set with
        :meth:`set_inner_data` / :meth:`set_heldout` is kept. A compiled training step reads its
        iterator as it was traced, so a new iterator makes Keras trace the step again."""
        x, split, validation = kwargs.get("x"), kwargs.get("validation_split"), kwargs.get("validation_data")
        inputs, validation = _inputs(x), _inputs(validation)
        if split and validation is None and isinstance(inputs, (np.ndarray, tf.Tensor)):
            inputs = np.asarray(inputs)
            split_at = int(np.floor(len(inputs) * (1.0 - split)))  # Keras' train_validation_split
            inputs, validation = inputs[:split_at], inputs[split_at:]
        if inputs is not None:
            seen = _fingerprint(inputs)
            if self._inner.value is None or (self._inner.source is not None and self._inner.source != seen):
                if isinstance(inputs, tf.data.Dataset):
                    self.set_inner_data(inputs.repeat())
                else:
                    array = np.asarray(inputs)
                    self.set_inner_data(tf.data.Dataset.from_tensor_slices(array).shuffle(len(array)).repeat()
                                        .batch(int(kwargs.get("batch_size") or 32)))
                self._inner.source = seen
        if validation is not None:
            seen = _fingerprint(validation)
            if self._heldout.value is None or (self._heldout.source is not None and self._heldout.source != seen):
                self.set_heldout(_first_examples(validation, self.options.heldout_size))
                self._heldout.source = seen
        if self._heldout.value is None:
            raise ConfigError(_NO_HELDOUT)
        if getattr(model, "train_function", None) is not None and self._inner.traced is not None \
                and self._inner.traced is not self._inner.value:
            model.train_function = None  # traced with the iterator before: trace it again (Keras' compile does so)
        callbacks = list(kwargs.get("callbacks") or [])
        if not any(isinstance(c, AggressivePhase) for c in callbacks):
            callbacks.insert(0, AggressivePhase())
        return {**kwargs, "callbacks": callbacks}


def _inputs(data):
    """The inputs of ``x`` / ``validation_data`` given as ``(x, y, ...)``, else ``data`` itself."""
    return data[0] if isinstance(data, (tuple, list)) else data


def _fingerprint(data):
    """What tells a later fit's data from this one's: a dataset by its identity (nothing else tells
    it; the dataset object, a pipeline's definition, is kept so that its id is not reused), an
    array by its shape, dtype and a hash of its bytes (fit casts and copies an array on every call;
    no reference to the caller's arrays is kept)."""
    if isinstance(data, tf.data.Dataset):
        return ("dataset", data)
    import hashlib

    array = np.ascontiguousarray(np.asarray(data))
    if array.dtype == object:  # sentences
        return ("sentences", array.shape, hashlib.blake2b("\x1f".join(map(str, array.tolist())).encode()).hexdigest())
    return (array.shape, str(array.dtype), hashlib.blake2b(array.tobytes()).hexdigest())


def _first_examples(data, n: int) -> np.ndarray:
    """Up to ``n`` inputs from ``validation_data`` (a Dataset of batches, an array, or a tuple)."""
    if isinstance(data, tf.data.Dataset):
        parts, count = [], 0
        for batch in data:
            xb = np.asarray(_inputs(batch))
            parts.append(xb)
            count += len(xb)
            if count >= n:
                break
        return np.concatenate(parts)[:n] if parts else np.zeros((0,))
    return np.asarray(_inputs(data))[:n]


class AggressivePhase(keras.callbacks.Callback):
    """At every epoch's end, lets the model's :class:`Aggressive` procedure decide whether its
    phase goes on (:meth:`Aggressive.update_phase`) and adds ``aggressive_mi`` /
    ``aggressive_end_epoch`` to the epoch's logs. ``prepare_fit`` adds it first in the callback
    list, so later callbacks (checkpoints, MLflow) see the updated phase and the logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.model.inference.update_phase(self.model, epoch))


__all__ = ["Aggressive", "AggressivePhase", "HELDOUT_SEED", "converge_loop"]
