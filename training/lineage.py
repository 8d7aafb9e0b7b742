"""What a run was trained on and whether its code collapsed, in MLflow where a user looks first.

- :func:`log_datasets`: every split a run reads is logged as an MLflow dataset input
  (``mlflow.log_input``; the run page's Datasets panel): name, source, a digest of the source and
  the content (:func:`mlflow_digest`; the content's own is the ``content_digest`` tag),
  its context (training / validation / test / pretraining) and its size. Through the run's
  :class:`~training.tracking.TrackedRun`, so an MLflow outage journals it like any other call.
- :func:`model_verdict`: the one-line collapse verdict of a trained model
  (:func:`vae_tf.metrics.collapse_verdict`: ``healthy: 14/16 dims active, MI 3.10 nats, ...``),
  printed and set as tags (``vae_tf.collapse``, ``vae_tf.collapse.status``,
  ``vae_tf.collapse.thresholds``) so MLflow's runs table shows which runs collapsed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

#: Rows hashed into a digest: all of them up to this many, then this many spread evenly (with the
#: shape and dtype, so a changed size or type changes the digest too).
DIGEST_ROWS = 100_000
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def dataset_digest(x, y=None) -> str:
    """A 16-hex-digit SHA-256 digest of a split's content (module constants)."""
    x = np.asarray(x)
    digest = hashlib.sha256(f"{x.shape}|{x.dtype}".encode())
    rows = np.arange(len(x)) if len(x) <= DIGEST_ROWS else np.linspace(0, len(x) - 1, DIGEST_ROWS).astype(np.int64)
    for array in (x, y):
        if array is None:
            continue
        array = np.asarray(array)[rows]
        digest.update("\x1f".join(map(str, array.tolist())).encode() if array.dtype == object else
                      np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def dataset_source(config, data) -> str:
    """Where the data came from: the user's file or folder, else the loader's own source
    (``sklearn.datasets.load_digits``, a download URL, the generator)."""
    if config.data.path:
        return str(Path(config.data.path).resolve())
    return str(data.metadata.get("source") or f"vae_tf.data:{data.name}")


def held_out_digests(data) -> dict[str, str]:
    """The content digests of the validation and test splits (those that hold examples), which an
    export records so that `vae-tf evaluate` can tell whether it reads the split the model was
    trained without (a corpus file edited or reshuffled since is split anew)."""
    splits = {split: data.split(split) for split in ("val", "test")}
    return {split: dataset_digest(x, y) for split, (x, y) in splits.items() if len(x)}


def mlflow_digest(source: str, content_digest: str) -> str:
    """The digest a dataset input is logged under: of its source and its content. MLflow keeps one
    dataset record per (name, digest) in an experiment and reuses the first one's source, so runs
    that read the same content from another file showed the first file in their Datasets panel;
    the content's own digest is the input's ``content_digest`` tag."""
    return hashlib.sha256(f"{source}|{content_digest}".encode()).hexdigest()[:16]


def log_datasets(tracker, config, data, labelled=None) -> None:
    """Log every split of ``data`` (and the labelled pretraining part) as dataset inputs."""
    source = dataset_source(config, data)
    splits = [(split, *data.split(split)) for split in CONTEXTS]
    if labelled is not None:
        splits.append(("pretrain", *labelled))
    for split, x, y in splits:
        if len(x) == 0:
            continue
        context = CONTEXTS.get(split, "pretraining")
        content = dataset_digest(x, y)
        tracker.log_dataset(name=f"{data.name}-{split}", source=source, digest=mlflow_digest(source, content),
                            context=context,
                            tags={"split": split, "n_examples": str(len(x)), "shape": str(tuple(np.shape(x)[1:])),
                                  "seed": str(config.seed), "content_digest": content})


@dataclasses.dataclass(frozen=True)
class RunVerdict:
    """A :class:`vae_tf.metrics.CollapseVerdict` with what a run logs of it."""

    verdict: object
    metrics: dict

    @property
    def line(self) -> str:
        return self.verdict.line

    def tags(self) -> dict:
        return {"vae_tf.collapse": self.verdict.line, "vae_tf.collapse.status": self.verdict.status,
                "vae_tf.collapse.thresholds": self.verdict.thresholds()}


def model_verdict(model, x, *, seed: int = 0) -> RunVerdict:
    """Encode ``x`` and judge the code: active units of the encoder means, mean total KL, the
    (0.01, 0.01)-collapsed fraction and the MI I_q(x; z): full-data for codes with Gaussian means
    and variances (:mod:`vae_tf.metrics.collapse`), else the whole code's minibatch estimate
    (:func:`vae_tf.metrics.code_mutual_information`)."""
    from vae_tf.metrics import active_units, collapse_fraction, collapse_verdict, encode_posterior, mutual_information

    post = encode_posterior(model, x, seed=seed)
    means = post.get("z_mean", post["embedding"])  # as vae_tf.metrics.evaluate_model counts them
    active, _ = active_units(means)
    kl = float(post["kl_per_dim"].sum(axis=1).mean())
    collapsed = float(collapse_fraction(post["kl_per_dim"], 0.01))
    mi, mi_name = None, "mi"
    if "z_mean" in post and "z_log_var" in post and len(x) >= 2:
        mi = float(mutual_information(post["z_mean"], post["z_log_var"], seed=seed))
    elif len(x) >= 2:  # NG-VAE: no closed-form entropy; the whole code's minibatch estimate, under its
        from vae_tf.metrics import code_mutual_information  # own name (it is capped at ~log 50, not log N)

        mi, mi_name = float(code_mutual_information(model, x, seed=seed)), "mi_code_minibatch"
    verdict = collapse_verdict(active, means.shape[1], kl, mi, collapsed)
    metrics = {"active_units": float(active), "collapsed_fraction": collapsed}
    if mi is not None:
        metrics[mi_name] = mi
    return RunVerdict(verdict, metrics)


def result_verdict(result: dict) -> RunVerdict:
    """The verdict of an evaluation (:func:`vae_tf.metrics.evaluate_model`'s result)."""
    from vae_tf.metrics import collapse_verdict

    m = result["metrics"]
    dims = int(result["info"]["au_dims"])
    mi = m.get("mi_full", m.get("mi_code_minibatch"))  # NG-VAE has no Gaussian MI: its whole code's
    verdict = collapse_verdict(int(m["active_units"]), dims, m["kl"], mi, m.get("collapsed_frac_eps_0.01"))
    return RunVerdict(verdict, {})


__all__ = ["CONTEXTS", "DIGEST_ROWS", "RunVerdict", "dataset_digest", "dataset_source", "held_out_digests",
           "log_datasets", "mlflow_digest", "model_verdict", "result_verdict"]
