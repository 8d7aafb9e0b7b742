"""The variational MI lower bound of a trained model (Serdega & Kim 2020, §3): a fresh auxiliary Q
network fitted to recover a part of the code from the decoder's output. The same bound as a
training regulariser is :mod:`vae_tf.remedies.mi_q`, whose target, Q network and estimators this
uses."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from vae_tf._traced import traced
from vae_tf.errors import ConfigError
from vae_tf.optimizers import FusedAdam
from vae_tf.remedies.mi_q import MITarget, build_q_network


def fit_mi_bound(model, x, *, steps: int = 1000, batch_size: int = 128, learning_rate: float = 1e-3,
                 q_network=None, target=None, x_eval=None, seed: int = 0, log_every: int = 50) -> dict:
    """The variational MI lower bound of a *frozen* model (any :class:`~vae_tf.models.VAE`):
    fit a fresh Q network to recover ẑ from x' = E[x | z], then report the bound (Serdega & Kim
    2020, §3: "a way to evaluate mutual information between latent codes and observations for a
    fixed VAE model").

    Fitting: ``steps`` Adam steps (``learning_rate``) of max_Q mean log Q(ẑ | x') on shuffled
    batches of ``x``; the model's weights are not touched. Codes are drawn with the exact
    one-hot category (the discrete model used in serving), so for ``mi_target=categorical`` the
    bound is a proper lower bound on I(c; x') ≤ H(c) ≤ log K.

    Evaluation on ``x_eval`` (default ``x``), one code per example (stateless seeds from
    ``seed``): ``mi_bound = mean log Q(ẑ | x') + H(ẑ)`` with H(ẑ) the entropy of the aggregate
    category distribution over all of ``x_eval`` (categorical target), or the size-weighted mean
    of the minibatch estimate over batches of ``batch_size`` (continuous dims).

    ``x`` may also be a :class:`vae_tf.data.DataSplits`: Q is then fitted on its training split
    and evaluated on its test split (validation split when the test split is empty) unless
    ``x_eval`` is given.

    Returns ``{"mi_bound", "entropy", "q_log_likelihood", "target", "steps", "batch_size",
    "history": [(step, bound on that training batch), ...] every ``log_every`` steps}``.
    """
    if hasattr(x, "x_train"):  # a DataSplits
        if x_eval is None:
            x_eval = x.x_test if len(x.x_test) else (x.x_val if len(x.x_val) else None)
        x = x.x_train
    latent = model.latent
    mi_target = MITarget(latent, target, what="target")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ConfigError(f"learning_rate must be a number > 0, got {learning_rate!r}")
    if getattr(model, "modality", "image") == "text":
        raise ConfigError("fit_mi_bound fits its Q network on decoded images x' = E[x | z], which a text model does "
                          "not make; a text model's I(x; z) is evaluate_model's mi (vae-tf evaluate), or train it with the "
                          "mi_q regulariser, whose mi_bound is logged")
    from vae_tf.models.inputs import model_rows

    # the checks encode makes (shape, NaN/Inf, the likelihood's support): a NaN pixel or 0-255
    # images gave a finite bound (-10002 nats for the latter) without a word
    x = model_rows(model, x, what="x", as_array=True)
    x_eval = x if x_eval is None else model_rows(model, x_eval, what="x_eval", as_array=True)
    data_shape = tuple(model.encoder.inputs[0].shape[1:])
    q_net = build_q_network(data_shape, mi_target.q_size, q_network, name="q_network_eval")
    optimizer = FusedAdam(learning_rate)
    optimizer.build(q_net.trainable_variables)

    fit = _QFit(model, mi_target, q_net, optimizer)
    specs = [tf.TensorSpec((None, *data_shape), tf.float32), tf.TensorSpec((2,), tf.int32)]
    train = traced(_train_step, fit, name="train", input_signature=specs)
    evaluate = traced(_evaluate, fit, name="evaluate", input_signature=specs)

    rng = np.random.default_rng(seed)
    history, order, position = [], rng.permutation(len(x)), 0
    size = min(batch_size, len(x))
    for step in range(steps):
        if position + size > len(x):
            order, position = rng.permutation(len(x)), 0
        batch = x[order[position:position + size]]
        position += size
        bound = train(tf.constant(batch), tf.constant([seed, step], tf.int32))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append((step + 1, float(bound)))

    log_qs, extras, weights = [], [], []
    for b, start in enumerate(range(0, len(x_eval), batch_size)):
        xb = x_eval[start:start + batch_size]
        log_q, extra = evaluate(tf.constant(xb), tf.constant([seed + 1, b], tf.int32))
        log_qs.append(log_q.numpy())
        extras.append(extra.numpy())
        weights.append(len(xb))
    q_log_likelihood = float(np.mean(np.concatenate(log_qs)))
    if mi_target.kind == "categorical":
        usage = np.concatenate(extras).astype(np.float64).mean(axis=0)
        entropy = float(-np.sum(usage[usage > 0] * np.log(usage[usage > 0])))
    else:
        entropy = float(np.average(np.asarray(extras, np.float64), weights=weights))
    return {"mi_bound": q_log_likelihood + entropy, "entropy": entropy, "q_log_likelihood": q_log_likelihood,
            "target": mi_target.describe(), "steps": steps, "batch_size": batch_size, "history": history}


@dataclasses.dataclass(frozen=True, eq=False)
class _QFit:
    """What one :func:`fit_mi_bound` call's traced steps use: the frozen model, the MI target, the
    fresh Q network and its optimizer. Its steps are module-level functions bound to it
    (:func:`vae_tf._traced.traced`), so that a process fitting one bound after another (a suite's
    children) does not add their traces up into TensorFlow's retracing warning."""

    model: object
    mi_target: MITarget
    q_net: object
    optimizer: object


def _forward(fit: _QFit, xb, step_seed):
    params = fit.model.encoder(xb, training=False)
    z = fit.model.latent.hard_code(params, step_seed)
    x_rec = fit.model.likelihood.mean(fit.model.decoder(z, training=False))
    return params, z, x_rec, fit.mi_target.select(z)


def _train_step(fit: _QFit, xb, step_seed):
    """One Adam step of max_Q mean log Q(ẑ | x'); returns the batch's bound."""
    params, z, x_rec, target_z = _forward(fit, xb, step_seed)
    with tf.GradientTape() as tape:
        log_q = fit.mi_target.q_log_likelihood(fit.q_net(x_rec, training=True), target_z)
        loss = -tf.reduce_mean(log_q)
    weights = fit.q_net.trainable_variables
    fit.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    return tf.reduce_mean(log_q) + fit.mi_target.entropy(params, z)


def _evaluate(fit: _QFit, xb, step_seed):
    """log Q(ẑ | x') per example, and the category usage (categorical target) or the batch's entropy."""
    params, z, x_rec, target_z = _forward(fit, xb, step_seed)
    log_q = fit.mi_target.q_log_likelihood(fit.q_net(x_rec, training=False), target_z)
    extra = fit.mi_target.usage(params) if fit.mi_target.kind == "categorical" else fit.mi_target.entropy(params, z)
    return log_q, extra


__all__ = ["fit_mi_bound"]
