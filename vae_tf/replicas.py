"""What a training step needs to be correct under ``tf.distribute`` (several replicas in sync),
and nothing at all on one device.

Every helper decides at *trace time* (``num_replicas_in_sync`` is a Python int) whether it has
work to do: outside a strategy, on one replica, or in cross-replica context it returns its input
unchanged and adds no op to the graph, so the single-device step stays what it was
(docs/performance.md measures it).

The rules the objectives follow with R replicas in sync (each sees ``B / R`` of a global batch B;
``MirroredStrategy`` and ``MultiWorkerMirroredStrategy`` split a global batch evenly):

- **Gradients.** Optimizers all-reduce gradients with a SUM (``keras/src/backend/tensorflow/
  optimizer.py``), so the loss a replica differentiates is its batch-mean loss times its share
  of the global batch (:func:`scale_for_gradient`): 1/R on even splits, what Keras' own
  ``train_step`` does (``keras.src.losses.loss.scale_loss_for_distribution``), and exact on the
  uneven split of a last partial batch, where 1/R weighted a replica's examples wrongly and an
  empty replica's NaN loss reached the sum. The *reported* loss is not scaled.
- **Batch statistics inside the loss** (capacity's |mean KL − C|, the categorical aggregate of
  MI maximisation): :func:`global_mean` has the value of the global-batch mean and the gradient of
  the replica's own mean, so after the weighting by its share and the SUM the gradient is that of the
  single-device objective on the global batch.
- **State updated inside the step** (``train_steps``, β, the PI controller, AR-ELBO's σ², the seed
  stream): the variables keep ``aggregation="none"``, which in replica context updates each
  replica's own copy without communication; every update is computed from values that are equal
  on all replicas (a step count, a schedule, or a global-batch statistic from
  :func:`global_mean` / :func:`mean_over_replicas`), so the copies stay identical. (An
  ``only_first_replica`` aggregation would need a ``merge_call`` per assignment, which
  ``MirroredStrategy`` refuses inside ``tf.cond`` / ``tf.while_loop`` bodies.)
- **Noise.** All replicas hold the same seed; :func:`replica_rows` gives a replica the position
  of its examples in the global batch, and noise is drawn for the whole global batch and sliced,
  so example i gets the same noise as on one device and no two examples share it.
"""

from __future__ import annotations

import tensorflow as tf


def replica_context():
    """The replica context when the caller runs in one of several replicas in sync, else None
    (no strategy, one replica, or cross-replica context such as building the model)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def num_replicas() -> int:
    """Replicas in sync (1 outside a strategy); a Python int, known at trace time."""
    ctx = replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


def scale_for_gradient(loss: tf.Tensor, batch_size=None) -> tf.Tensor:
    """The loss a replica differentiates so that the optimizer's SUM all-reduce of the gradients
    gives the gradient of the global-batch mean (module docstring): with the replica's
    ``batch_size`` (the examples its batch-mean ``loss`` is over), ``loss x n / N`` for its n of
    the global batch's N examples, exact for any split: a last partial batch splits unevenly,
    and one smaller than R leaves a replica none, whose loss (a mean over nothing, NaN) then
    counts 0. Without it, ``loss / R`` (even splits only)."""
    r = num_replicas()
    if r == 1:
        return loss
    if batch_size is None:
        return loss * (1.0 / r)
    own = tf.cast(batch_size, loss.dtype)
    total = replica_context().all_reduce(tf.distribute.ReduceOp.SUM, own)
    return tf.math.multiply_no_nan(loss, own / total)


def batch_mean_for_tracker(mean: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    """A replica's batch ``mean`` as a tracker weighted by its ``batch`` size takes it: 0 where the
    replica has no examples (a last batch smaller than R), whose mean is NaN and NaN x 0 is NaN
    in the tracker's sum; ``mean`` itself (no op) on one replica."""
    if replica_context() is None:
        return mean
    return tf.where(batch > 0, mean, tf.zeros_like(mean))


def global_mean(values: tf.Tensor) -> tf.Tensor:
    """Mean over axis 0 (the batch): on several replicas, the value is the mean over the *global*
    batch (an all-reduce of sums and counts, exact for any split) and the gradient is the one of
    the replica's own mean (module docstring)."""
    ctx = replica_context()
    if ctx is None:
        return tf.reduce_mean(values, axis=0)
    count = tf.cast(tf.shape(values)[0], values.dtype)
    # A replica without examples (a last batch smaller than R) has a local mean of 0, not NaN.
    local = tf.math.divide_no_nan(tf.reduce_sum(values, axis=0), count)
    total, n = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                              [tf.reduce_sum(tf.stop_gradient(values), axis=0), count])
    return local + tf.stop_gradient(total / n - local)


def batch_mean_over_replicas(mean: tf.Tensor, batch_size) -> tf.Tensor:
    """The global-batch value of a per-replica batch ``mean`` over ``batch_size`` examples (no
    gradient): the replicas' means weighted by their examples, so uneven splits and a replica
    without examples count as they should; ``mean`` itself on one replica."""
    ctx = replica_context()
    if ctx is None:
        return mean
    n = tf.cast(batch_size, mean.dtype)
    total, count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.math.multiply_no_nan(tf.stop_gradient(mean), n), n])
    return total / count


def mean_over_replicas(value: tf.Tensor) -> tf.Tensor:
    """The mean of a per-replica scalar over the replicas (no gradient); ``value`` itself on one."""
    ctx = replica_context()
    if ctx is None:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, tf.stop_gradient(value))


def replica_rows(batch_size) -> tuple[tf.Tensor, tf.Tensor] | None:
    """``(offset, global_batch)`` (int32 scalars): where this replica's ``batch_size`` examples sit
    in the global batch (replicas in id order); None on one replica. One small all-reduce of the
    per-replica batch sizes, so uneven splits (a last partial batch) are handled too."""
    ctx = replica_context()
    if ctx is None:
        return None
    r = int(ctx.num_replicas_in_sync)
    replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    own = tf.one_hot(replica, r, dtype=tf.float32) * tf.cast(batch_size, tf.float32)
    sizes = tf.cast(tf.round(ctx.all_reduce(tf.distribute.ReduceOp.SUM, own)), tf.int32)
    offset = tf.reduce_sum(tf.where(tf.range(r) < replica, sizes, tf.zeros_like(sizes)))
    return offset, tf.reduce_sum(sizes)


def draw_rows(draw, like: tf.Tensor) -> tf.Tensor:
    """``draw(shape)`` (a stateless random draw) for the rows of ``like``: on several replicas,
    drawn for the global batch and sliced at this replica's rows, so every example gets the noise
    it would get on one device."""
    shape = tf.shape(like)
    if replica_context() is None:
        return draw(shape)
    offset, total = replica_rows(shape[0])
    full = draw(tf.concat([[total], shape[1:]], axis=0))
    return full[offset:offset + shape[0]]


def on_global_rows(fn, params: tf.Tensor) -> tf.Tensor:
    """``fn(params)`` for a function whose row i depends on ``params[i]`` and on the position i
    in a stateless random stream (a reparameterised sample): on several replicas, ``params`` is
    zero-padded to the global batch at this replica's rows, ``fn`` runs on the whole and the
    replica's rows are kept (gradients flow through the pad and the slice)."""
    if replica_context() is None:  # checked first: not even a tf.shape on one device
        return fn(params)
    n = tf.shape(params)[0]
    offset, total = replica_rows(n)
    pad = [[offset, total - offset - n]] + [[0, 0]] * (len(params.shape) - 1)
    return fn(tf.pad(params, pad))[offset:offset + n]


def multi_worker() -> bool:
    """Whether the current strategy is a ``MultiWorkerMirroredStrategy`` with several workers."""
    if not tf.distribute.has_strategy():
        return False
    strategy = tf.distribute.get_strategy()
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and bool(strategy.extended._in_multi_worker_mode()))


def step_logs(logs: dict) -> dict:
    """The logs a ``train_step`` / ``test_step`` returns: unchanged, except under a multi-worker
    strategy, where every value becomes rank-1 (``[1]``): Keras reduces multi-worker logs with
    ``strategy.reduce("MEAN", v, axis=0)`` (``keras/src/backend/tensorflow/trainer.py``,
    ``reduce_per_replica``), which refuses scalars; the reduced values are scalars again, so
    ``History`` and callbacks see plain floats (stack-notes.md §6)."""
    if not multi_worker():
        return logs
    return {key: tf.reshape(tf.cast(value, tf.float32), [1]) for key, value in logs.items()}


__all__ = ["batch_mean_for_tracker", "batch_mean_over_replicas", "draw_rows", "global_mean", "mean_over_replicas",
           "multi_worker", "num_replicas", "on_global_rows", "replica_context", "replica_rows", "scale_for_gradient",
           "step_logs"]
