"""Aggressive inference-network training (He, Spokoyny, Neubig, Berg-Kirkpatrick, ICLR 2019,
"Lagging inference networks and posterior collapse in variational autoencoders", Algorithm 1).

Early in training the encoder lags behind the true posterior and the decoder learns to ignore
z. The remedy: while in the *aggressive phase*, before every decoder update optimise the encoder
alone, on fresh batches, until its objective stops improving; leave the phase once the mutual
information I_q(x; z) on held-out data stops rising, then train as usual.

One training step (``train_step``, on the batch x that ``fit`` hands it):

- aggressive phase (``aggressive_phase == 1``): encoder-only updates — the first on x, the
  following ones on fresh batches drawn from the model's own repeated iterator — until the
  encoder loss stops improving or ``max_inner_steps`` updates ran (:func:`converge_loop`: the
  mean loss of every window of ``check_every`` steps is compared with the previous window's;
  the loop stops at the first window that is not lower, as jxhe/vae-lagging-encoder does); then
  one decoder-only update on x;
- afterwards: one joint update on x (the plain ELBO step).

All updates minimise the objective's loss ``−mean_batch(rec − β·kl)`` with the model's optimizer
(``model.optimizer``), applied to the encoder's variables (encoder network and latent family),
to the decoder's (decoder network and likelihood), or to both. One Adam keeps independent moments
per variable, so this is the paper's separate encoder and decoder optimizers, except that the
step count of Adam's bias correction is shared (it is ≈ 1 after a few hundred steps anyway).

**Leaving the phase** (per epoch, as in the paper): at the end of every epoch the minibatch MI
estimate (:func:`vae_tf.models.code_density.minibatch_mutual_information`, He et al.'s
``calc_mi``, with a fixed seed so that epochs are compared on the same noise) is computed on one
held-out batch; when it is lower than at the previous epoch's end, ``aggressive_phase`` becomes
0 for good and ``aggressive_end_epoch`` records the epoch (1-based).

**Fresh batches.** The model holds an iterator over a repeated ``tf.data`` pipeline
(:meth:`AggressiveVAE.set_inner_data`) and reads it inside the compiled step. ``fit`` sets it up
by itself when it is not set: from the training data it is given (``x.repeat()`` for a
``tf.data.Dataset``, which reshuffles every pass), and the held-out batch from
``validation_data`` (:meth:`AggressiveVAE.set_heldout`); it also adds the
:class:`AggressivePhase` callback (first, so that checkpoints and loggers see the phase after
its update) unless one is given.

**Under tf.distribute** (several replicas in sync): every update divides its loss by the number
of replicas (the optimizer sums gradients); the convergence check reads the loss averaged over
the replicas, so all replicas run the same number of inner updates; each fresh batch is read
once for all the local replicas (in cross-replica context) and each replica trains on its share
of it, contiguous rows in replica order as ``tf.distribute`` splits a global batch (under
``MultiWorkerMirroredStrategy`` every worker reads the same batch from its own copy of the
iterator), so R replicas follow the single-device run up to float rounding, fresh batches,
noise and the number of inner updates included. ``MirroredStrategy`` refuses
synchronisation (``merge_call``) inside ``tf.cond`` / ``tf.while_loop`` bodies run by a replica,
so there the phase's branches and the inner loop run in cross-replica context and call each
replica for every update (``merge_call`` + ``call_for_each_replica``, the pattern of Keras'
``LossScaleOptimizer``); on one device the step is the plain ``tf.cond`` / ``tf.while_loop``.

Logged: ``aggressive_inner_steps`` (mean number of encoder updates per decoder update over the
epoch; 0 after the phase), ``aggressive_phase`` (1 while aggressive), and from the callback
``aggressive_mi`` (the held-out MI at the epoch's end, while the phase lasts) and
``aggressive_end_epoch`` (from the epoch the phase ended on). The phase, the previous MI and the
end epoch are model variables: checkpoints carry them.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from vae_tf.errors import ConfigError
from vae_tf.models import replicas
from vae_tf.models.code_density import minibatch_mutual_information
from vae_tf.models.vae import VAE
from vae_tf.schedules import _steps

#: The seed of the held-out MI estimate: fixed, so that successive epochs see the same noise.
HELDOUT_SEED = (20190, 1)
_NO_HELDOUT = ("objective aggressive needs a held-out batch of at least 2 examples for its per-epoch MI check: "
               "give fit validation_data or call model.set_heldout(x_val) (training app: data.val_fraction > 0)")


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


class AggressiveVAE(VAE):
    """The ELBO (β-ELBO) trained with He et al.'s aggressive inference-network schedule (module
    docstring). The loss every update minimises is the base ``−mean_batch(rec − β·kl)``.

    Options (``objective.options``): ``max_inner_steps`` (encoder updates per decoder update at
    most, default 100), ``check_every`` (convergence check period, default 10),
    ``heldout_size`` (examples of the held-out batch for the MI check, default 500), and the
    base ``beta_schedule``.
    """

    objective = "aggressive"

    def __init__(self, *args, max_inner_steps: int = 100, check_every: int = 10, heldout_size: int = 500,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.max_inner_steps = _steps(max_inner_steps, "objective.options.max_inner_steps")
        self.check_every = _steps(check_every, "objective.options.check_every")
        if self.check_every > self.max_inner_steps:
            raise ConfigError(f"objective.options.check_every ({self.check_every}) must be <= max_inner_steps "
                              f"({self.max_inner_steps})")
        self.heldout_size = _steps(heldout_size, "objective.options.heldout_size")
        self.aggressive_phase = self.add_weight(name="aggressive_phase", shape=(), initializer="ones",
                                                trainable=False)
        self.aggressive_previous_mi = self.add_weight(name="aggressive_previous_mi", shape=(),
                                                      initializer=keras.initializers.Constant(-1e30),
                                                      trainable=False)
        self.aggressive_end_epoch = self.add_weight(name="aggressive_end_epoch", shape=(), dtype="int64",
                                                    initializer="zeros", trainable=False)
        self.inner_steps_tracker = keras.metrics.Mean(name="aggressive_inner_steps")
        self._inner = _Holder()
        self._heldout = _Holder()

    @property
    def metrics(self):
        return [*super().metrics, self.inner_steps_tracker]

    # --- data the step reads besides its batch ------------------------------------------------
    def set_inner_data(self, dataset) -> None:
        """The source of fresh batches for the encoder's inner updates: a ``tf.data.Dataset`` of
        batches (``x`` or ``(x, ...)``), repeated and shuffled by the caller (``ds.repeat()``)."""
        if not isinstance(dataset, tf.data.Dataset):
            raise ConfigError("set_inner_data needs a tf.data.Dataset of batches, e.g. data.pipeline('train', 64, "
                              "repeat=True)")
        self._inner.value = iter(dataset)

    def set_heldout(self, x) -> None:
        """The held-out batch (at most ``heldout_size`` examples) of the per-epoch MI check."""
        x = np.asarray(x, np.float32)[: self.heldout_size]
        if len(x) < 2:
            raise ConfigError(_NO_HELDOUT)
        self._heldout.value = tf.constant(x)

    # --- variables of each side ----------------------------------------------------------------
    @property
    def encoder_variables(self) -> list:
        """φ: the encoder network's and the latent family's trainable variables."""
        return [*self.encoder.trainable_variables, *self.latent.trainable_variables]

    @property
    def decoder_variables(self) -> list:
        """θ: every other trainable variable (decoder network, likelihood)."""
        encoder_ids = {id(v) for v in self.encoder_variables}
        return [v for v in self.trainable_variables if id(v) not in encoder_ids]

    # --- steps -----------------------------------------------------------------------------------
    def _loss(self, x, training=True):
        terms = self.compute_terms(x, training=training)
        self.before_loss(terms)
        loss = self.objective_loss(terms)
        if self.losses:
            loss = loss + tf.add_n(self.losses)
        return loss, terms

    def _update(self, x, variables) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss, _ = self._loss(x)
            scaled = self.gradient_loss(loss)
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return replicas.mean_over_replicas(loss)  # the same number on every replica: one stopping decision

    def _inner_batch(self, x, i) -> tf.Tensor:
        """The batch of inner update ``i`` on one device: ``x`` first, then fresh batches from the
        iterator."""
        iterator = self._inner.value
        return tf.cond(tf.equal(i, 0), lambda: x, lambda: tf.cast(self.unpack(iterator.get_next()), x.dtype))

    def _fresh_batch(self, i) -> tf.Tensor:
        """Cross-replica context: the fresh batch of inner update ``i``, read once for all the
        replicas (empty for ``i = 0``, which trains on the step's own batch)."""
        iterator = self._inner.value
        spec = self.unpack(iterator.element_spec)
        empty = tf.zeros([0, *(0 if d is None else d for d in spec.shape[1:])], spec.dtype)
        return tf.cond(tf.equal(i, 0), lambda: empty, lambda: self.unpack(iterator.get_next()))

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
        return tf.cond(tf.equal(i, 0), lambda: x, lambda: tf.cast(share, x.dtype))

    def encoder_loop(self, x) -> tf.Tensor:
        """The aggressive phase's inner loop: encoder-only updates, on ``x`` first and then on
        fresh batches, until :func:`converge_loop` stops. Returns the number of updates."""
        variables = self.encoder_variables
        return converge_loop(lambda i: self._update(self._inner_batch(x, i), variables), self.max_inner_steps,
                             self.check_every)

    def _cross_replica_encoder_loop(self, strategy, x) -> tf.Tensor:
        """:meth:`encoder_loop` for several replicas: the loop and the phase test run in
        cross-replica context, every update in each replica (module docstring)."""
        variables = self.encoder_variables

        def step(i):
            fresh = self._fresh_batch(i)
            losses = strategy.extended.call_for_each_replica(
                lambda xr: self._update(self._replica_share(xr, fresh, i), variables), args=(x,))
            return strategy.experimental_local_results(losses)[0]  # equal on all replicas

        return tf.cond(self.aggressive_phase > 0.5,
                       lambda: converge_loop(step, self.max_inner_steps, self.check_every),
                       lambda: tf.constant(0, tf.int32))

    def _cross_replica_apply(self, strategy, grads) -> None:
        """The phase's decoder-only or joint update for several replicas (cross-replica ``tf.cond``);
        ``grads`` are in the order of ``trainable_variables``."""
        all_variables = self.trainable_variables
        decoder_ids = {id(v) for v in self.decoder_variables}

        def apply(decoder_only):
            def fn(replica_grads):
                pairs = [(g, v) for g, v in zip(replica_grads, all_variables)
                         if not decoder_only or id(v) in decoder_ids]
                self.optimizer.apply_gradients(pairs)

            strategy.extended.call_for_each_replica(fn, args=(grads,))
            return tf.constant(0)

        tf.cond(self.aggressive_phase > 0.5, lambda: apply(True), lambda: apply(False))

    def train_step(self, data):
        x = self.unpack(data)
        if self._inner.value is None:
            raise ConfigError("objective aggressive reads fresh batches from its own iterator: call "
                              "model.set_inner_data(dataset.repeat()) before a custom loop (fit does it for you)")
        if not self.optimizer.built:  # before the branches: optimizer variables cannot be created in a cond
            self.optimizer.build(self.trainable_variables)
        ctx = replicas.replica_context()
        aggressive = self.aggressive_phase > 0.5
        if ctx is None:
            inner_steps = tf.cond(aggressive, lambda: self.encoder_loop(x), lambda: tf.constant(0, tf.int32))
        else:
            inner_steps = ctx.merge_call(self._cross_replica_encoder_loop, args=(x,))
        decoder_variables, all_variables = self.decoder_variables, self.trainable_variables
        with tf.GradientTape() as tape:
            loss, terms = self._loss(x)
            scaled = self.gradient_loss(loss)
        grads = tape.gradient(scaled, all_variables)
        decoder_ids = {id(v) for v in decoder_variables}

        if ctx is None:
            def decoder_only():
                pairs = [(g, v) for g, v in zip(grads, all_variables) if id(v) in decoder_ids]
                self.optimizer.apply_gradients(pairs)
                return tf.constant(0)

            def joint():
                self.optimizer.apply_gradients(zip(grads, all_variables))
                return tf.constant(0)

            tf.cond(aggressive, decoder_only, joint)
        else:
            ctx.merge_call(self._cross_replica_apply, args=(grads,))
        self.after_step(x, terms)
        self.inner_steps_tracker.update_state(tf.cast(inner_steps, tf.float32))
        return replicas.step_logs({**self.update_trackers(loss, terms), **self.state_metrics()})

    def state_metrics(self):
        return {**super().state_metrics(), "aggressive_phase": tf.convert_to_tensor(self.aggressive_phase)}

    def test_step(self, data):
        logs = super().test_step(data)
        logs.pop("aggressive_inner_steps", None)
        return logs

    # --- the per-epoch phase decision --------------------------------------------------------
    def heldout_mi(self) -> float:
        """The minibatch MI estimate (nats) on the held-out batch, fixed seed."""
        if self._heldout.value is None:
            raise ConfigError(_NO_HELDOUT)
        params = self.encoder(self._heldout.value, training=False)
        return float(minibatch_mutual_information(self.latent, params, tf.constant(HELDOUT_SEED, tf.int32)))

    def update_phase(self, epoch: int) -> dict:
        """End of epoch ``epoch`` (0-based): while aggressive, estimate the held-out MI and leave
        the phase when it fell since the previous epoch's end. Returns the logs to add."""
        if float(self.aggressive_phase.numpy()) < 0.5:
            return {"aggressive_end_epoch": float(self.aggressive_end_epoch.numpy())}
        mi = self.heldout_mi()
        logs = {"aggressive_mi": mi}
        if mi < float(self.aggressive_previous_mi.numpy()):
            self.aggressive_phase.assign(0.0)
            self.aggressive_end_epoch.assign(epoch + 1)
            logs["aggressive_end_epoch"] = float(epoch + 1)
        self.aggressive_previous_mi.assign(mi)
        return logs

    def fit(self, *args, **kwargs):
        """``keras.Model.fit`` that first sets up what the schedule needs (module docstring)."""
        x = args[0] if args else kwargs.get("x")
        if self._inner.value is None:
            if isinstance(x, tf.data.Dataset):
                self.set_inner_data(x.repeat())
            elif x is not None:
                batch_size = kwargs.get("batch_size") or (args[2] if len(args) > 2 else None) or 32
                array = np.asarray(self.unpack(x), np.float32)
                self.set_inner_data(tf.data.Dataset.from_tensor_slices(array).shuffle(len(array)).repeat()
                                    .batch(int(batch_size)))
        if self._heldout.value is None and kwargs.get("validation_data") is not None:
            self.set_heldout(_first_examples(kwargs["validation_data"], self.heldout_size))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, AggressivePhase) for c in callbacks):
            callbacks.insert(0, AggressivePhase())
        if self._heldout.value is None:
            raise ConfigError(_NO_HELDOUT)
        return super().fit(*args, callbacks=callbacks, **kwargs)


def _first_examples(data, n: int) -> np.ndarray:
    """Up to ``n`` inputs from ``validation_data`` (a Dataset of batches, an array, or a tuple)."""
    if isinstance(data, tf.data.Dataset):
        parts, count = [], 0
        for batch in data:
            xb = np.asarray(VAE.unpack(batch))
            parts.append(xb)
            count += len(xb)
            if count >= n:
                break
        return np.concatenate(parts)[:n] if parts else np.zeros((0,))
    return np.asarray(VAE.unpack(data), np.float32)[:n]


class AggressivePhase(keras.callbacks.Callback):
    """At every epoch's end, lets an :class:`AggressiveVAE` decide whether its aggressive phase
    goes on (:meth:`AggressiveVAE.update_phase`) and adds ``aggressive_mi`` /
    ``aggressive_end_epoch`` to the epoch's logs. ``AggressiveVAE.fit`` adds it first in the
    callback list, so later callbacks (checkpoints, MLflow) see the updated phase and the logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.model.update_phase(epoch))


__all__ = ["AggressivePhase", "AggressiveVAE", "HELDOUT_SEED", "converge_loop"]
