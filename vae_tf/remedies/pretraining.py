"""Encoder pretraining with a classification head, a remedy for posterior collapse: an encoder
that already separates the data gives the decoder a code worth using from the first step.

1. :func:`split_labelled` reserves a labelled fraction of the training split (the rest stays for
   the VAE, so the VAE never trains on the pretraining examples);
2. :func:`pretrain_encoder` trains encoder + a linear softmax head on that fraction with the
   cross-entropy of the labels given the family's deterministic *embedding* (the Gaussian mean
   μ, ``concat(μ, π)`` for the categorical family, ...: what downstream classifiers get), then
   drops the head: the model keeps the trained encoder and nothing else changes (its optimizer
   and the decoder are untouched);
3. the VAE then trains on the remaining data as usual.

It is a pre-phase, not a slot of the objective, so it composes with every KL weight, regulariser,
input noise and inference procedure. The training application wires it from
``train.pretrain: {fraction: 0.1, epochs: 30}`` and logs
``pretrain_accuracy`` / ``pretrain_loss`` per pretraining epoch (and ``pretrain_val_accuracy``
when the validation split has labels).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vae_tf.data.splits import static_pipeline
from vae_tf.errors import ConfigError, DataError

#: Pretraining epochs unless told otherwise (the training job's ``train.pretrain.epochs`` default
#: too): 10 % of digits is ~3 steps per epoch, and 5 epochs stayed near chance.
DEFAULT_EPOCHS = 30


def split_labelled(data, fraction: float, seed: int = 0):
    """``(data without the labelled part, x_labelled, y_labelled)``: a random ``fraction`` of the
    training split (at least one example, at most all but one; seeded), taken out of
    ``data.x_train`` / ``y_train`` (and ``factors_train``). ``data`` is a
    :class:`vae_tf.data.DataSplits` with training labels."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ConfigError(f"train.pretrain.fraction must be in (0, 1), got {fraction!r}")
    if data.y_train is None:
        raise DataError(f"encoder pretraining needs labels, and data set {data.name!r} has none: use a labelled "
                        "data set (digits, mnist, fashion_mnist, image folders) or set train.pretrain.fraction=0")
    n = len(data.x_train)
    count = min(max(1, int(round(fraction * n))), n - 1)
    if n < 2:
        raise DataError(f"encoder pretraining needs at least 2 training examples, {data.name!r} has {n}")
    order = np.random.default_rng(seed).permutation(n)
    labelled, rest = np.sort(order[:count]), np.sort(order[count:])
    changes = {"x_train": data.x_train[rest], "y_train": data.y_train[rest]}
    if data.factors_train is not None:
        changes["factors_train"] = data.factors_train[rest]
    remaining = dataclasses.replace(data, **changes)
    return remaining, data.x_train[labelled], np.asarray(data.y_train[labelled], np.int64)


def _classifier(model, num_classes: int, sample):
    import keras

    from vae_tf.replicas import step_logs

    class EncoderClassifier(keras.Model):
        """x -> encoder -> the family's embedding -> Dense(num_classes) logits, trained by Keras'
        own steps. Distributed training (inside the VAE's ``strategy.scope()``) needs two changes
        for ``MultiWorkerMirroredStrategy``: rank-1 step logs (:func:`step_logs`), and building
        from ``sample`` (an ``(x, y)`` batch): Keras 3.15 builds a distributed model from fit's
        first batch reduced over the replicas (``strategy.reduce``), which that strategy refuses
        for an ``(x, y)`` tuple, and reading that batch opens an extra iterator, which advances
        the seeded shuffle (any strategy: the epochs would not be the single-device run's)."""

        def __init__(self):
            super().__init__(name="encoder_classifier")
            self.encoder = model.encoder
            self.latent = model.latent
            self.head = keras.layers.Dense(num_classes, name="classification_head")

        def call(self, x, training=False):
            return self.head(self.latent.embedding(model.posterior_params(x, training=training)))

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            super()._maybe_symbolic_build(data_batch=sample if iterator is not None else data_batch)

        def train_step(self, data):
            return step_logs(super().train_step(data))

        def test_step(self, data):
            return step_logs(super().test_step(data))

    return EncoderClassifier()


def _labels(y, n: int, what: str) -> np.ndarray:
    """``y`` as int64 class indices, one per example of ``n``, or a one-line DataError."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what} labels must be one class index per example, shape ({n},), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        whole = np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
        if not whole:
            raise DataError(f"{what} labels must be integer class indices >= 0, got dtype {y.dtype}")
    if y.min() < 0:
        raise DataError(f"{what} labels must be integer class indices >= 0, got {int(y.min())}")
    return y.astype(np.int64)


def pretrain_encoder(model, x, y, *, epochs: int = DEFAULT_EPOCHS, batch_size: int = 64, learning_rate: float = 1e-3,
                     num_classes: int | None = None, validation_data=None, seed: int = 0, verbose: int = 0) -> dict:
    """Train ``model``'s encoder (and the latent family's own trainable variables) with a linear
    classification head on the embedding, minimising the mean cross-entropy of ``y`` (Adam,
    ``learning_rate``), for ``epochs`` passes over ``(x, y)`` in shuffled batches; then drop the
    head. The VAE's decoder, likelihood and optimizer are not touched.

    Args:
        x, y: the labelled examples ``(N, *data_shape)`` and integer labels ``(N,)``.
        num_classes: default ``max(y) + 1``.
        validation_data: optional ``(x_val, y_val)``; its accuracy is reported per epoch.

    Returns ``{"pretrain_accuracy": [per epoch], "pretrain_loss": [per epoch],
    "pretrain_val_accuracy": [per epoch] (with validation data), "num_classes", "n"}``
    (accuracies are fractions; the training ones are Keras' running means over each epoch).
    """
    import keras
    import tensorflow as tf

    from vae_tf.models.inputs import model_rows

    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"train.pretrain.{name} must be a positive integer, got {value!r}")
    # the checks fit and encode make (shape, NaN/Inf, the likelihood's support; sentences stay
    # strings, which a text model tokenises): one NaN pixel made every encoder weight NaN
    x = model_rows(model, x, what="pretraining x", as_array=True)
    y = _labels(y, len(x), "pretraining")
    if num_classes is None:
        num_classes = int(y.max()) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ConfigError(f"num_classes must be an integer, got {num_classes!r}")
    elif num_classes <= y.max():
        raise DataError(f"pretraining labels go up to {int(y.max())} but num_classes={num_classes!r}; give at least "
                        f"{int(y.max()) + 1} (or leave it out: max(y) + 1)")
    num_classes = int(num_classes)
    classifier = _classifier(model, num_classes, (x[:1], y[:1]))
    classifier.compile(optimizer=keras.optimizers.Adam(learning_rate),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    train = static_pipeline(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
                            .batch(batch_size))
    val = None
    if validation_data is not None:
        x_val, y_val = validation_data
        if y_val is not None and len(x_val):
            x_val = model_rows(model, x_val, what="pretraining validation x", as_array=True)
            y_val = _labels(y_val, len(x_val), "pretraining validation")
            if y_val.max() >= num_classes:
                raise DataError(f"pretraining validation labels go up to {int(y_val.max())} but the classification "
                                f"head has {num_classes} classes (0-{num_classes - 1}); give num_classes="
                                f"{int(y_val.max()) + 1}")
            val = static_pipeline(tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(256))
    history = classifier.fit(train, validation_data=val, epochs=epochs, verbose=verbose,
                             shuffle=False).history  # the dataset shuffles itself, seeded
    # The head goes with the classifier; the encoder object is the model's own.
    result = {"pretrain_accuracy": [float(v) for v in history["accuracy"]],
              "pretrain_loss": [float(v) for v in history["loss"]], "num_classes": num_classes, "n": int(len(x))}
    if "val_accuracy" in history:
        result["pretrain_val_accuracy"] = [float(v) for v in history["val_accuracy"]]
    return result


__all__ = ["DEFAULT_EPOCHS", "pretrain_encoder", "split_labelled"]
