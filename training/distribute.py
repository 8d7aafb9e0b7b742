"""``train.strategy``: which ``tf.distribute`` strategy a training run uses, and which process
of a cluster is the chief.

- ``none``: TensorFlow's default strategy (one device).
- ``mirrored``: ``MirroredStrategy`` over every local GPU; on a machine without GPUs, over
  ``train.cpu_replicas`` logical CPUs (a test set-up: the CPU is split, the cores are shared).
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (one process per worker;
  README "Training on several devices or machines"). Keras 3 needs rank-1 metrics from
  ``train_step`` / ``test_step`` for it (``vae_tf.replicas.step_logs``, also the encoder
  pretraining classifier's). Tested on a 2-worker cluster on 127.0.0.1, one CPU replica per
  worker: every objective (``elbo`` with and without β schedules, ``capacity``, ``control_vae``,
  ``ar_elbo``, ``mi_max``, ``aggressive``, ``noisy_input``), every latent family (``gaussian``,
  ``normal_gamma``, ``gaussian_categorical``), the Skip-VAE decoder and encoder pretraining train,
  the chief alone logs and exports, and both workers end with equal variables (weights,
  optimizer slots, β, controller, σ², seed stream). ``tests/test_training_distributed.py`` runs
  ``elbo``, ``control_vae``, ``mi_max`` on ``gaussian_categorical``, ``aggressive`` and
  pretraining; ``python -m scripts.multi_worker_matrix`` runs them all.

``train.batch_size`` is always the *global* batch: each of R replicas sees ``batch_size / R``
examples a step, so a run gives the same updates on any number of replicas
(``train.scale_learning_rate`` scales the rate when a user grows the global batch instead).
Only the chief logs to MLflow, exports and keeps checkpoints; every worker takes part in
training, validation and evaluation (their collectives need every worker), and the others
write their checkpoints to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import json
import os
import sys

from vae_tf.errors import ConfigError

STRATEGIES = ("none", "mirrored", "multi_worker")


def split_cpu(replicas: int) -> None:
    """Make ``replicas`` logical CPU devices; possible only before TensorFlow initialises."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:
        raise ConfigError(f"train.cpu_replicas={replicas} must be set before TensorFlow starts; run the training in "
                          "a fresh process (vae-tf train) rather than after other TensorFlow work") from None


def make_strategy(train_cfg):
    """The ``tf.distribute.Strategy`` for ``train.strategy`` (see the module docstring)."""
    import tensorflow as tf

    name = train_cfg.strategy
    if name not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if train_cfg.cpu_replicas:
        split_cpu(train_cfg.cpu_replicas)
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    tf_config = os.environ.get("TF_CONFIG")
    if not tf_config:
        raise ConfigError("train.strategy=multi_worker needs TF_CONFIG (cluster and this worker's task) in the "
                          f"environment; see the README, '{README_SECTION}'")
    address, others = cluster_task(tf_config)
    if others:  # TensorFlow waits for them without a word, and a signal does not interrupt the wait
        print(f"{address}: waiting for the cluster's other members ({', '.join(others)}); every one must be started "
              "with the same config (kill -9 this process if one never comes)", file=sys.stderr, flush=True)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.UnknownError as err:
        if "Could not start gRPC server" not in str(err):
            raise
        port = address.rsplit(":", 1)[-1]
        raise ConfigError(f"cannot listen on port {port} ({address}, this worker's address in TF_CONFIG): is it in "
                          "use? Free it or give this worker another port in every worker's TF_CONFIG") from None


#: The README section that shows a cluster's TF_CONFIG.
README_SECTION = "Training on several devices or machines"
_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')


def cluster_task(tf_config: str) -> tuple[str, list[str]]:
    """This process's address in ``TF_CONFIG`` and the other members' addresses, after checking
    the parts TensorFlow would refuse with a traceback (or read wrongly): JSON with a ``cluster``
    mapping of job names to address lists and, for a cluster with members, a ``task`` naming one
    of them (``type`` a job of the cluster, ``index`` an integer within it). An empty cluster
    (``{}``) is TensorFlow's single local process: ``("local", [])``."""
    try:
        spec = json.loads(tf_config)
        cluster = spec["cluster"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"TF_CONFIG is not JSON with a 'cluster' key, e.g. {_EXAMPLE}") from None
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise ConfigError(f"TF_CONFIG's cluster must map job names to lists of host:port addresses, e.g. {_EXAMPLE}")
    if not cluster:
        return "local", []
    task = spec.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(f"TF_CONFIG has no task saying which member of its cluster this process is, e.g. "
                          f'"task": {{"type": "worker", "index": 0}}; see the README, \'{README_SECTION}\'')
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise ConfigError(f"TF_CONFIG's task type {kind!r} is not a job of its cluster ({', '.join(map(repr, cluster))})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"TF_CONFIG's task index must be an integer from 0 to {len(cluster[kind]) - 1} (the "
                          f"{len(cluster[kind])} {kind} addresses of its cluster), got {index!r}")
    address = str(cluster[kind][index])
    others = [str(a) for job, addresses in cluster.items() for i, a in enumerate(addresses)
              if (job, i) != (kind, index)]
    return address, others


def is_chief(strategy) -> bool:
    """Whether this process logs, exports and checkpoints: always, except on the non-chief
    workers of a multi-worker cluster (TensorFlow's own ``should_checkpoint``)."""
    return bool(strategy.extended.should_checkpoint)


def worker_description(strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "single process"
    return f"{resolver.task_type} {resolver.task_id}"


def distribute_options(dataset, strategy):
    """In-memory data sets cannot be sharded by file: shard a multi-worker run by data."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
