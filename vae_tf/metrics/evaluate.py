"""``evaluate_model``: every diagnostic that applies to a trained VAE and a data set, in one call.

What applies:

====================  =====================================================================
always                KL per dim (mean over the split), ELBO (1 sample), active units,
                      (ε, δ)-collapse at ε ∈ {0.01, 0.05, 0.1, 0.5} and its curve
Gaussian posteriors   MI I_q(x; z): full-data estimator and the minibatch one (B = 50)
normalised p(x|z)     IW-NLL (K = 500 in chunks of 100) and bits/dim; a Bernoulli likelihood on
                      non-binary data is not a density, so it is skipped (with the reason)
labels                linear-probe accuracy (train split → evaluated split); t-SNE figure;
                      cluster accuracy of a categorical code (families exporting ``category``)
factors               a data set with a generator (``data.ground_truth``): BetaVAE, FactorVAE,
                      MIG, DCI, SAP on freshly rendered data (DLIB sizes unless
                      ``disentanglement_sizes`` says otherwise); other data with discrete
                      factors: MIG, DCI, SAP on the split's own codes (continuous factors, e.g.
                      a synthetic corpus's true z, are skipped)
``fd=True``           ``fd_classifier`` (Fréchet classifier distance, not FID; images) and, on
                      the same features, ``kid_classifier`` (the kernel distance, not KID)
text models           per sentence and per word: ``nll_per_word`` / ``perplexity`` from the
                      IW-NLL (and ``elbo_per_word``), with the words of a sentence counted as
                      its tokens plus ``<eos>`` (Bowman et al. 2016; He et al. 2019), and
                      ``unk_rate``, the share of its tokens read as ``<unk>``
====================  =====================================================================

The result is ``{"metrics": {name: float}, "info": {...}, "arrays": {name: ndarray}}``:
``metrics`` is flat and MLflow-ready, ``info`` (JSON-able) records every estimator, sample count,
seed, split and library version, and why anything was skipped; ``arrays`` hold what the figures
need. :func:`report` turns the whole result into JSON-able data; :func:`evaluation_figures`
draws the figures.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np

from vae_tf.errors import ConfigError, DataError
from vae_tf.metrics import collapse, downstream, likelihood
from vae_tf.metrics import disentanglement as dis
from vae_tf.metrics.encode import code_mutual_information, encode_posterior, representation_function

DISENTANGLEMENT_SIZES = {"num_train": dis.NUM_TRAIN, "num_eval": dis.NUM_EVAL,
                         "num_variance_estimate": dis.NUM_VARIANCE_ESTIMATE, "batch_size": dis.VOTE_BATCH_SIZE}


def _versions() -> dict:
    import keras  # noqa: PLC0415
    import scipy  # noqa: PLC0415
    import sklearn  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit_learn": sklearn.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}


def _eps_name(eps: float) -> str:
    return f"{eps:g}"


def _check_sizes(sizes: Mapping[str, Any] | None) -> dict:
    merged = dict(DISENTANGLEMENT_SIZES)
    for key, value in dict(sizes or {}).items():
        if key not in merged:
            raise ConfigError(f"unknown disentanglement size {key!r}; choose from {', '.join(sorted(merged))}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ConfigError(f"disentanglement size {key} must be an integer >= 2, got {value!r}")
        merged[key] = value
    return merged


def _subsample(n: int, max_examples: int | None, seed: int) -> np.ndarray:
    if max_examples is None or n <= max_examples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_examples), replace=False))


def evaluate_model(model, data, *, split: str = "test", seed: int = 0, max_examples: int | None = None,
                   batch_size: int = 512,
                   au_delta: float = collapse.AU_DELTA,
                   collapse_eps=collapse.COLLAPSE_EPS_GRID, collapse_delta: float = collapse.COLLAPSE_DELTA,
                   mi_batch_size: int | None = None,
                   iw_k: int = likelihood.IW_K, iw_chunk: int = likelihood.IW_CHUNK, iw_batch_size: int = 100,
                   iw_max_examples: int | None = None, allow_unnormalised_nll: bool = False,
                   probe: bool = True, tsne: bool = True, tsne_max_points: int = downstream.TSNE_MAX_POINTS,
                   disentanglement: bool = True, disentanglement_sizes: Mapping[str, int] | None = None,
                   ground_truth: dis.GroundTruthData | None = None,
                   fd: bool = False, fd_cache_dir=None, fd_spec=None, fd_samples: str = "mean",
                   fd_num_samples: int = 10000) -> dict:
    """Compute every diagnostic that applies to ``model`` on one split of ``data``.

    Args:
        model: a trained :class:`vae_tf.models.VAE`.
        data: the :class:`vae_tf.data.DataSplits` it was trained on.
        split: the evaluated split (``"test"`` like jxhe; the result records it).
        seed: seed of every random choice (posterior noise, shuffles, subsamples, t-SNE, trees).
        max_examples: evaluate a random subset of the split (``None``: all of it).
        batch_size: encoder batch.
        au_delta, collapse_eps, collapse_delta, mi_batch_size: metric settings (defaults:
            metrics.md; ``mi_batch_size`` None: 50 for images, 32 for text, whose minibatch MI
            batches sentences of one length together, as jxhe's text runs do).
        iw_k, iw_chunk, iw_batch_size, iw_max_examples: IW-NLL settings; ``iw_k=0`` skips it.
        allow_unnormalised_nll: compute the "NLL" of a Bernoulli likelihood on grey-level data
            anyway (it is a cross-entropy, not a likelihood; the info says so).
        probe, tsne, tsne_max_points: downstream metrics when the data have labels.
        disentanglement: compute the factor metrics when the data have factors.
        disentanglement_sizes: overrides of ``num_train``, ``num_eval``,
            ``num_variance_estimate``, ``batch_size`` (DLIB defaults 10000 / 5000 / 10000 / 64).
        ground_truth: a :class:`~vae_tf.metrics.disentanglement.GroundTruthData` for the
            sampling metrics (default: ``data.ground_truth()``, the data set's own generator when
            it has one).
        fd, fd_cache_dir, fd_spec, fd_samples, fd_num_samples: the Fréchet classifier distance
            between ``fd_num_samples`` prior samples (``"mean"`` decodes or ``"ancestral"``
            draws) and as many examples of the split, and the kernel distance on the same
            features (``kid_classifier``, ``kid_classifier_std``; subsets drawn from ``seed``).

    Returns:
        ``{"metrics": {...}, "info": {...}, "arrays": {...}}`` (see the module docstring).
    """
    if not hasattr(data, "split"):
        raise ConfigError(f"data must be the model's vae_tf.data.DataSplits (vae_tf.data.load_dataset(...)), got a "
                          f"{type(data).__name__}; for arrays, use the metric functions (active_units, "
                          "mutual_information, iw_nll, ...) on the model's outputs")
    x_all, y_all = data.split(split)
    if len(x_all) < 2:
        raise DataError(f"split {split!r} of {data.name!r} has {len(x_all)} example(s); evaluation needs at least 2 "
                        "(active units are a variance over examples): evaluate a larger split or more data")
    if max_examples is not None and max_examples < 2:
        raise ConfigError(f"max_examples (--max-examples) is {max_examples}; evaluation needs at least 2 examples "
                          "(active units are a variance over examples): give 2 or more")
    if fd_samples not in ("mean", "ancestral"):
        raise ConfigError(f"fd_samples must be 'mean' or 'ancestral', got {fd_samples!r}")
    sizes = _check_sizes(disentanglement_sizes)
    idx = _subsample(len(x_all), max_examples, seed)
    text = getattr(model, "modality", "image") == "text"
    x = np.asarray(x_all[idx], dtype=object if text else np.float32)
    y = None if y_all is None else np.asarray(y_all)[idx]
    factors = data.factors(split)
    factors = None if factors is None else np.asarray(factors)[idx]

    metrics: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    info: dict[str, Any] = {"dataset": data.name, "split": split, "num_examples": int(len(x)),
                            "split_size": int(len(x_all)), "seed": int(seed),
                            "latent_family": getattr(model.latent, "family", type(model.latent).__name__),
                            "likelihood": getattr(model.likelihood, "name_key", type(model.likelihood).__name__),
                            "data_binary": bool(getattr(data, "binary", False)), "versions": _versions(),
                            "estimators": {}, "skipped": skipped}
    est = info["estimators"]

    # --- encoder summaries --------------------------------------------------------------------
    post = encode_posterior(model, x, batch_size=batch_size, seed=seed)
    kl = post["kl_per_dim"]
    gaussian = "z_mean" in post and "z_log_var" in post
    mean_kl = kl.mean(axis=0)
    arrays["kl_per_dim"] = mean_kl
    info["kl_columns"] = int(kl.shape[1])  # = latent.kl_size (a categorical part is one column)
    metrics["kl"] = float(mean_kl.sum())
    for i, v in enumerate(mean_kl):
        metrics[f"kl_dim_{i}"] = float(v)
    est["kl_per_dim"] = ("analytic Gaussian KL" if info["latent_family"] == "gaussian"
                         else f"the {info['latent_family']} family's kl_per_dim_diagnostic (its docstring says "
                         "whether analytic, a bound or a many-draw Monte Carlo mean)")

    elbo = likelihood.elbo_estimate(model, x, num_samples=1, seed=seed, batch_size=batch_size)
    metrics["elbo"], metrics["reconstruction"] = elbo["elbo"], elbo["reconstruction"]
    est["elbo"] = "1-sample Monte-Carlo reconstruction + the family's KL, mean over examples"
    words = positions = None
    if text:  # the positions a sentence's likelihood is summed over: its tokens and <eos>
        positions = model.scored_positions(x)
        words = float(np.mean(positions))
        info["words_per_sentence"] = words
        metrics["elbo_per_word"] = metrics["elbo"] / words
        # The share of the evaluated words the model reads as <unk> (an OOV rate, as language
        # model papers state beside perplexity): a small vocabulary lowers perplexity.
        import tensorflow as tf

        from vae_tf.networks.recurrent import PAD_ID, UNK_ID

        ids = np.asarray(model.codec.encode(tf.constant(np.asarray(x, dtype=object))))
        metrics["unk_rate"] = float(np.sum(ids == UNK_ID) / max(1, np.sum(ids != PAD_ID)))
        est["per_word"] = ("per word = per sentence / (tokens + 1 for <eos>), averaged as totals: "
                           "mean per-sentence value / mean words per sentence (Bowman et al.; He et al.)")

    means = post.get("z_mean", post["embedding"])
    count, variances = collapse.active_units(means, delta=au_delta)
    metrics["active_units"] = float(count)
    info["au_dims"] = int(means.shape[1])
    arrays["au_variances"] = variances
    est["active_units"] = f"Var_x of the encoder means (ddof=1) >= {au_delta:g} on split {split!r}"

    # --- mutual information -------------------------------------------------------------------
    mi_b = mi_batch_size or (collapse.TEXT_MI_BATCH_SIZE if text else collapse.MI_BATCH_SIZE)
    if gaussian:
        # For a family with more than a Gaussian part (gaussian_categorical) this is I(x; z_gauss).
        part = "" if info["latent_family"] == "gaussian" else " of the Gaussian part (z_mean, z_log_var) only"
        metrics["mi_full"] = collapse.mutual_information(post["z_mean"], post["z_log_var"], seed=seed)
        est["mi_full"] = (f"aggregate posterior over all N={len(x)} points, 1 sample per x, closed-form "
                          f"entropy{part}")
        metrics["mi_minibatch"] = collapse.mutual_information_minibatch(  # jxhe's text batches: one length each
            post["z_mean"], post["z_log_var"], batch_size=mi_b, seed=seed, groups=positions)
        batches = f"shuffled batch of B={mi_b}" + (" sentences of one length" if text else "")
        est["mi_minibatch"] = (f"jxhe calc_mi: mixture = {batches}, capped at ~log B = {math.log(mi_b):.2f} nats, "
                               f"can be negative{part}")
    if info["latent_family"] != "gaussian":  # the whole code (a Gaussian code's is mi_minibatch above)
        metrics["mi_code_minibatch"] = code_mutual_information(model, x, batch_size=mi_b, seed=seed)
        est["mi_code_minibatch"] = (f"I_q(x; z) of the whole code, He et al.'s minibatch estimator with the family's "
                                    f"log q at one draw (a one-hot category), shuffled batches of B={mi_b}, capped at "
                                    f"~log B = {math.log(mi_b):.2f} nats")
    if not gaussian:
        skipped["mi"] = ("mi_full and mi_minibatch need diagonal-Gaussian posteriors (z_mean, z_log_var); "
                         "mi_code_minibatch is this family's estimate")
    family_metrics = model.latent.evaluation_diagnostics(post, kl)
    if family_metrics:
        metrics.update(family_metrics)
        est["family"] = (f"the {info['latent_family']} family's own diagnostics ({', '.join(sorted(family_metrics))}"
                         "), means over the encoded examples (its evaluation_diagnostics docstring)")

    # --- (eps, delta)-collapse ----------------------------------------------------------------
    for eps in collapse_eps:
        metrics[f"collapsed_frac_eps_{_eps_name(float(eps))}"] = collapse.collapse_fraction(kl, float(eps),
                                                                                           collapse_delta)
    curve_eps, curve_frac = collapse.collapse_curve(kl, delta=collapse_delta)
    arrays["collapse_curve_eps"], arrays["collapse_curve_fraction"] = curve_eps, curve_frac
    arrays["collapse_thresholds"] = collapse.collapse_thresholds(kl, collapse_delta)
    info["collapse_eps"] = [float(e) for e in collapse_eps]
    info["collapse_delta"] = float(collapse_delta)
    est["collapse"] = (f"(eps, delta={collapse_delta:g})-collapse (Lucas et al. 2019) on per-example "
                       f"{est['kl_per_dim']}, count-based")

    # --- IW-NLL --------------------------------------------------------------------------------
    lik = info["likelihood"]
    # Each likelihood says whether its log_prob is a density on any data in its support; a
    # Bernoulli is one only on binary data.
    normalised = bool(getattr(model.likelihood, "normalised", False)) or (lik == "bernoulli" and info["data_binary"])
    if iw_k == 0:
        skipped["iw_nll"] = "iw_k=0"
    elif not normalised and not allow_unnormalised_nll:
        skipped["iw_nll"] = (f"likelihood {lik!r} on {'binary' if info['data_binary'] else 'non-binary'} data is "
                             "not a normalised density; binarise the data (data.binarize), use the "
                             "continuous_bernoulli likelihood, or allow it (vae-tf evaluate --allow-unnormalised-nll, "
                             "evaluate_model(allow_unnormalised_nll=True))")
    else:
        iw_idx = _subsample(len(x), iw_max_examples, seed)
        nll = likelihood.iw_nll(model, x[iw_idx], k=iw_k, chunk=iw_chunk, seed=seed, batch_size=iw_batch_size)
        metrics["iw_nll"] = nll
        if text:  # over the same sentences as the NLL
            iw_words = float(np.mean(model.scored_positions(x[iw_idx])))
            metrics["nll_per_word"] = nll / iw_words
            metrics["perplexity"] = math.exp(nll / iw_words)
        else:
            metrics["iw_nll_bits_per_dim"] = nll / (float(np.prod(x.shape[1:])) * math.log(2.0))
        est["iw_nll"] = (f"Burda et al. L_K, K={iw_k} in chunks of {iw_chunk}, float64 logsumexp, "
                         f"N={len(iw_idx)}" + ("" if normalised else "; NOT a normalised likelihood"))

    # --- downstream ----------------------------------------------------------------------------
    if y is not None and probe and data.y_train is not None:
        train_codes = representation_function(model, batch_size)(data.x_train)
        details = downstream.linear_probe_accuracy(train_codes, data.y_train, post["embedding"], y, seed=seed,
                                                   return_details=True)
        metrics["linear_probe_accuracy"] = details["test_accuracy"]
        est["linear_probe"] = (f"StandardScaler + LogisticRegression(max_iter={details['max_iter']}) on the "
                               f"embedding: train split (N={details['num_train']}) -> {split} split")
    elif probe:
        skipped["linear_probe"] = "the data set has no labels"
    if y is not None and probe and len(np.unique(y)) >= 2:
        metrics["kmeans_accuracy"] = downstream.kmeans_accuracy(post["embedding"], y, seed=seed)
        est["kmeans_accuracy"] = "k-means (k = classes, n_init 10) on the embedding vs labels, Hungarian matching"
    if "category" in post and y is not None:  # a categorical code: how well do its clusters match the labels?
        metrics["cluster_accuracy"] = downstream.cluster_accuracy(y, post["category"].astype(np.int64))
        est["cluster_accuracy"] = "argmax category vs labels, one-to-one Hungarian matching"
    if tsne and len(post["embedding"]) < 3:  # t-SNE's perplexity needs neighbours
        skipped["tsne"] = f"t-SNE needs at least 3 examples, got {len(post['embedding'])}"
    elif tsne:
        emb, sel = downstream.tsne_embedding(post["embedding"], seed=seed, max_points=tsne_max_points)
        arrays["tsne_embedding"] = emb
        if y is not None:
            arrays["tsne_labels"] = y[sel]

    # --- disentanglement ------------------------------------------------------------------------
    if disentanglement and factors is not None and not np.issubdtype(np.asarray(factors).dtype, np.integer):
        skipped["disentanglement"] = "the factors are continuous (the scores need discrete factor classes)"
    elif disentanglement and factors is not None:
        metrics.update(_disentanglement(model, data, post["embedding"], factors, sizes, seed, batch_size,
                                        ground_truth, info))
    elif disentanglement:
        skipped["disentanglement"] = "the data set has no ground-truth factors"

    # --- sample quality ---------------------------------------------------------------------------
    if fd and text:
        skipped["fd_classifier"] = "the Frechet classifier distance is defined for images"
    elif fd:
        from vae_tf.metrics.sample_quality import (  # noqa: PLC0415
            KID_NUM_SUBSETS,
            fd_classifier,
            load_or_train_fd_classifier,
        )

        classifier = load_or_train_fd_classifier(data, cache_dir=fd_cache_dir, spec=fd_spec)
        n = min(int(fd_num_samples), len(x))
        generated = _prior_samples(model, n, seed, fd_samples, batch_size)
        result = fd_classifier(generated, x[:n], classifier, kid_seed=seed)
        metrics["fd_classifier"] = result["fd_classifier"]
        metrics["fd_classifier_accuracy"] = result["classifier_test_accuracy"]
        metrics["kid_classifier"] = result["kid_classifier"]
        if result["kid_classifier_std"] == result["kid_classifier_std"]:  # NaN: whole sets, no spread measured
            metrics["kid_classifier_std"] = result["kid_classifier_std"]
        est["fd_classifier"] = (f"Frechet classifier distance (not FID): {n} prior samples ({fd_samples} decodes) vs "
                                f"{n} {split} examples, classifier {result['classifier_key']}")
        m = result["kid_subset_size"]
        drawn = (f"the whole {m} per side (no spread: kid_classifier_std not logged)" if m == n else
                 f"mean and std over {KID_NUM_SUBSETS} subsets of {m} per side, seed {seed}")
        est["kid_classifier"] = (f"kernel distance (KID's estimator, not KID) on the same features: unbiased MMD^2, "
                                 f"k(x, y) = (x.y/d + 1)^3, {drawn}")

    return {"metrics": metrics, "info": info, "arrays": arrays}


def _prior_samples(model, n: int, seed: int, kind: str, batch_size: int) -> np.ndarray:
    key = "x_mean" if kind == "mean" else "x_sample"
    parts = []
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size), dtype=np.int32)
        seeds = np.stack([np.full(len(rows), seed, np.int32), rows], axis=1)
        parts.append(np.asarray(model.sample(seeds)[key], dtype=np.float32))
    return np.concatenate(parts, axis=0)


def _disentanglement(model, data, codes, factors, sizes, seed, batch_size, ground_truth, info) -> dict:
    est = info["estimators"]
    out: dict[str, float] = {}
    if ground_truth is None and getattr(data, "ground_truth", None) is not None:
        ground_truth = data.ground_truth()  # the data set's own generator (dSprites)
    info["disentanglement_sizes"] = dict(sizes)
    if ground_truth is not None:
        rep = representation_function(model, batch_size)
        bv = dis.beta_vae_score(ground_truth, rep, random_state=seed, batch_size=sizes["batch_size"],
                                num_train=sizes["num_train"], num_eval=sizes["num_eval"])
        fv = dis.factor_vae_score(ground_truth, rep, random_state=seed, batch_size=sizes["batch_size"],
                                  num_train=sizes["num_train"], num_eval=sizes["num_eval"],
                                  num_variance_estimate=sizes["num_variance_estimate"])
        rng = np.random.default_rng(seed)
        train_codes, train_factors = dis.generate_factor_codes(ground_truth, rep, sizes["num_train"], rng)
        test_codes, test_factors = dis.generate_factor_codes(ground_truth, rep, sizes["num_eval"], rng)
        out["beta_vae_score"] = bv["eval_accuracy"]
        out["factor_vae_score"] = fv["eval_accuracy"]
        est["disentanglement"] = ("DLIB defaults restated (metrics.md §6) on freshly sampled ground-truth data; "
                                  "MIG/DCI/SAP share one train/test sample")
        info["factor_vae_active_dims"] = fv["num_active_dims"]
        info["beta_vae_converged"] = bv["converged"]
    else:
        half = len(codes) // 2
        if half < 2:
            info["skipped"]["disentanglement"] = "fewer than 4 examples with factors"
            return out
        train_codes, train_factors = codes[:half], factors[:half]
        test_codes, test_factors = codes[half:], factors[half:]
        est["disentanglement"] = (f"MIG/DCI/SAP on the split's own codes (first half train, second half test, "
                                  f"N={len(codes)}); BetaVAE/FactorVAE need a ground-truth sampler")
        info["skipped"]["beta_vae_score"] = info["skipped"]["factor_vae_score"] = "no ground-truth sampler"
    m = dis.mig(train_codes, train_factors)
    d = dis.dci(train_codes, train_factors, test_codes, test_factors, random_state=seed)
    s = dis.sap(train_codes, train_factors, test_codes, test_factors, random_state=seed)
    out.update({"mig": m["discrete_mig"], "dci_disentanglement": d["disentanglement"],
                "dci_completeness": d["completeness"], "dci_informativeness_train": d["informativeness_train"],
                "dci_informativeness_test": d["informativeness_test"], "sap_score": s["sap_score"]})
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def report(result: dict) -> dict:
    """The whole result as JSON-able data (arrays as lists, non-finite numbers as ``null``)."""
    return _jsonable(result)


def evaluation_figures(result: dict, model=None, x=None, *, value_range=(0.0, 1.0)) -> dict:
    """Figures of an :func:`evaluate_model` result: ``{file name: Figure}``.

    Always KL per dimension and the collapse curve; t-SNE when it was computed. With ``model`` and
    example inputs ``x`` also reconstructions, prior samples (mean vs ancestral) and latent
    traversals (:func:`vae_tf.plots.model_figures`; a text model's tables are
    :func:`vae_tf.plots.text_tables`, which the training job and `vae-tf evaluate` log).
    """
    from vae_tf import plots  # noqa: PLC0415

    arrays, info = result["arrays"], result["info"]
    kl = arrays["kl_per_dim"]
    figures = {}
    if model is not None and x is not None and getattr(model, "modality", "image") != "text":
        figures.update(plots.model_figures(model, np.asarray(x), value_range=value_range, kl=kl))
    if "kl_per_dim.png" not in figures:  # model_figures draws it already; a second one would be left open
        figures["kl_per_dim.png"] = plots.kl_per_dim(kl)
    marks = {e: result["metrics"][f"collapsed_frac_eps_{_eps_name(e)}"] for e in info.get("collapse_eps", [])}
    figures["collapse_curve.png"] = plots.collapse_curve(
        arrays["collapse_curve_eps"], arrays["collapse_curve_fraction"], info.get("collapse_delta", 0.01),
        marks=marks, num_dims=len(kl))
    if "tsne_embedding" in arrays:
        figures["tsne.png"] = plots.tsne_scatter(arrays["tsne_embedding"], arrays.get("tsne_labels"),
                                                 title=f"t-SNE of the embeddings ({info['split']} split)")
    return figures


__all__ = ["DISENTANGLEMENT_SIZES", "evaluate_model", "evaluation_figures", "report"]
