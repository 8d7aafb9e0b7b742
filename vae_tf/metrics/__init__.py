"""Diagnostics: posterior collapse, likelihood, disentanglement, downstream usefulness and sample
quality, as plain functions on NumPy arrays plus model-level helpers.

Definitions and defaults: ``reference/metrics.md`` (natural logs, float64 reductions, the
encoder mean as the representation). Array functions never import TensorFlow; the model-level
ones (:func:`iw_nll`, :func:`elbo_estimate`, :func:`encode_posterior`,
:func:`representation_function`, :func:`evaluate_model`) take a :class:`vae_tf.models.VAE`.

>>> from vae_tf.metrics import evaluate_model, evaluation_figures
>>> result = evaluate_model(model, data, split="test")          # doctest: +SKIP
>>> result["metrics"]["active_units"], result["metrics"]["mi_full"]   # doctest: +SKIP
"""

from __future__ import annotations

from vae_tf._lazy import lazy_names

from vae_tf.metrics.collapse import (
    AU_DELTA,
    COLLAPSE_DELTA,
    COLLAPSE_EPS_GRID,
    MI_BATCH_SIZE,
    PARTIAL_COLLAPSE_FRACTION,
    CollapseVerdict,
    active_units,
    collapse_curve,
    collapse_verdict,
    collapse_fraction,
    collapse_thresholds,
    kl_per_dim_gaussian,
    mean_kl_per_dim,
    mutual_information,
    mutual_information_minibatch,
)
from vae_tf.metrics.disentanglement import (
    GroundTruthData,
    beta_vae_score,
    compute_dci,
    compute_mig,
    compute_sap,
    dci,
    dci_from_importance,
    factor_vae_score,
    generate_factor_codes,
    histogram_discretize,
    mig,
    sap,
    sap_score_matrix,
)
from vae_tf.metrics.downstream import cluster_accuracy, kmeans_accuracy, linear_probe_accuracy, tsne_embedding

# Model-level and TensorFlow-backed names load on first use, so that the array metrics stay light.
_LAZY = {
    "iw_nll": "vae_tf.metrics.likelihood",
    "iw_log_weights": "vae_tf.metrics.likelihood",
    "elbo_estimate": "vae_tf.metrics.likelihood",
    "code_mutual_information": "vae_tf.metrics.encode",
    "encode_posterior": "vae_tf.metrics.encode",
    "representation_function": "vae_tf.metrics.encode",
    "evaluate_model": "vae_tf.metrics.evaluate",
    "evaluation_figures": "vae_tf.metrics.evaluate",
    "report": "vae_tf.metrics.evaluate",
    "fd_classifier": "vae_tf.metrics.sample_quality",
    "frechet_distance": "vae_tf.metrics.sample_quality",
    "kernel_distance": "vae_tf.metrics.sample_quality",
    "feature_statistics": "vae_tf.metrics.sample_quality",
    "load_or_train_fd_classifier": "vae_tf.metrics.sample_quality",
    "FDClassifier": "vae_tf.metrics.sample_quality",
    "FDClassifierSpec": "vae_tf.metrics.sample_quality",
    "fit_mi_bound": "vae_tf.metrics.mi_bound",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())


__all__ = [
    "fit_mi_bound",
    "kmeans_accuracy",
    "PARTIAL_COLLAPSE_FRACTION",
    "CollapseVerdict",
    "collapse_verdict",
    "AU_DELTA",
    "COLLAPSE_DELTA",
    "COLLAPSE_EPS_GRID",
    "MI_BATCH_SIZE",
    "GroundTruthData",
    "active_units",
    "beta_vae_score",
    "cluster_accuracy",
    "collapse_curve",
    "collapse_fraction",
    "collapse_thresholds",
    "compute_dci",
    "compute_mig",
    "compute_sap",
    "dci",
    "dci_from_importance",
    "factor_vae_score",
    "generate_factor_codes",
    "histogram_discretize",
    "kl_per_dim_gaussian",
    "linear_probe_accuracy",
    "mean_kl_per_dim",
    "mig",
    "mutual_information",
    "mutual_information_minibatch",
    "sap",
    "sap_score_matrix",
    "tsne_embedding",
    # loaded lazily (see _LAZY)
    "FDClassifier",
    "FDClassifierSpec",
    "code_mutual_information",
    "elbo_estimate",
    "encode_posterior",
    "evaluate_model",
    "evaluation_figures",
    "fd_classifier",
    "feature_statistics",
    "frechet_distance",
    "iw_log_weights",
    "iw_nll",
    "kernel_distance",
    "load_or_train_fd_classifier",
    "report",
    "representation_function",
]
assert set(_LAZY) <= set(__all__)
