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

    x = np.asarray(x)
    x = x if x.dtype == object else x.astype(np.float32)  # sentences stay strings (a text model tokenises)
    y = np.asarray(y)
    if (x.ndim < 2 and x.dtype != object) or len(x) == 0 or len(x) != len(y):
        raise DataError(f"pretraining needs x (N, *data_shape) and y (N,) with N > 0, got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DataError("pretraining labels must be integer class indices >= 0")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"train.pretrain.{name} must be a positive integer, got {value!r}")
    num_classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    classifier = _classifier(model, num_classes, (x[:1], y[:1].astype(np.int64)))
    classifier.compile(optimizer=keras.optimizers.Adam(learning_rate),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    train = static_pipeline(tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64))).shuffle(len(x), seed=seed)
                            .batch(batch_size))
    val = None
    if validation_data is not None:
        x_val, y_val = validation_data
        if y_val is not None and len(x_val):
            x_val = np.asarray(x_val)
            x_val = x_val if x_val.dtype == object else x_val.astype(np.float32)
            val = static_pipeline(tf.data.Dataset.from_tensor_slices((x_val, np.asarray(y_val, np.int64))).batch(256))
    history = classifier.fit(train, validation_data=val, epochs=epochs, verbose=verbose,
                             shuffle=False).history  # the dataset shuffles itself, seeded
    # The head goes with the classifier; the encoder object is the model's own.
    result = {"pretrain_accuracy": [float(v) for v in history["accuracy"]],
              "pretrain_loss": [float(v) for v in history["loss"]], "num_classes": num_classes, "n": int(len(x))}
    if "val_accuracy" in history:
        result["pretrain_val_accuracy"] = [float(v) for v in history["val_accuracy"]]
    return result


__all__ = ["DEFAULT_EPOCHS", "pretrain_encoder", "split_labelled"]
