"""Wall-clock time of every diagnostic in ``vae_tf.metrics`` at evaluation scale.

Question answered: what does each metric cost on 10 000 evaluation points (the issue's yardstick),
and IW-NLL with K = 500 on 1 000 points of a small digits model?

Inputs (synthetic, seeded, so the timing does not depend on a trained model):

- posterior parameters ``mean``, ``log_var`` ``(N, d)``: means a random linear map of dSprites-like
  factor classes plus noise, log-variances uniform in [-3, 0];
- codes for the factor metrics: those means; factors: ``N`` rows of dSprites class indices
  (sizes 3, 6, 40, 32, 32), i.e. the 113 classes DCI's boosted trees have to fit;
- BetaVAE / FactorVAE: observations rendered by ``vae_tf.data.DSpritesGenerator`` (64 x 64 by
  default) and a representation that is a fixed random projection in NumPy, so the time is the
  metric's own (sampling, rendering, classifier) without an encoder; the ``encode`` row gives the
  encoder's cost per 10 000 images of a conv VAE so that the two can be added;
- labels for the linear probe / cluster accuracy: 10 Gaussian blobs in d dims;
- Fréchet distance and the kernel distance: 128-d features of N points per side (the
  fd_classifier's feature space);
- IW-NLL: ``build_vae((8, 8, 1))`` with the default MLP (256, 128), latent 8, Bernoulli, untrained
  weights (the cost does not depend on them), 1 000 digits, K = 500 in chunks of 100.

Metrics that take less than a second are timed ``--repeats`` times (median). The slow
sampling metrics can be run with fewer votes / points than the DLIB defaults
(``--beta-vae-train`` ...); the table then also gives a linear extrapolation to the defaults,
marked "~". For DCI it is rough: a boosted tree costs a constant plus an N log N part, so
extrapolating from small N overestimates and from large N slightly underestimates.

Usage::

    python benchmarks/metrics_timing.py                     # every metric at the DLIB defaults (~10 min)
    python benchmarks/metrics_timing.py --beta-vae-train 1000 --beta-vae-eval 500 --dci-train 2000 --dci-test 1000
    python benchmarks/metrics_timing.py --only mi_full,iw_nll --json timings.json

The report (command, machine, Markdown table) goes to stdout; progress to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402

import numpy as np  # noqa: E402

DSPRITES_SIZES = (3, 6, 40, 32, 32)


def log(message: str) -> None:
    print(f"[metrics_timing] {message}", file=sys.stderr, flush=True)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``fn()`` (repeated only when one call is under a second) and its result."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    if first >= 1.0 or repeats <= 1:
        return first, result
    times = [first]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def synthetic(n: int, d: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, s, n) for s in DSPRITES_SIZES], axis=1)
    w = rng.standard_normal((len(DSPRITES_SIZES), d))
    scaled = factors / (np.asarray(DSPRITES_SIZES) - 1)
    mean = scaled @ w + 0.1 * rng.standard_normal((n, d))
    log_var = rng.uniform(-3.0, 0.0, (n, d))
    centres = rng.normal(0.0, 2.0, (10, d))
    labels = rng.integers(0, 10, n)
    blobs = centres[labels] + rng.standard_normal((n, d))
    return {"factors": factors, "mean": mean, "log_var": log_var, "labels": labels, "blobs": blobs,
            "features": rng.standard_normal((n, 128)) @ rng.standard_normal((128, 128)) / 8}


def machine_info() -> dict:
    import keras
    import scipy
    import sklearn
    import tensorflow as tf

    return {**common.machine_info(), "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit_learn": sklearn.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}


command_line = common.command_line


def run(args) -> list[dict]:
    from vae_tf import metrics as M
    from vae_tf.data.dsprites import DSpritesGroundTruth
    from vae_tf.metrics import sample_quality

    data = synthetic(args.n, args.latent_dim, args.seed)
    n, half = args.n, args.n // 2
    mean, log_var, factors = data["mean"], data["log_var"], data["factors"]
    kl = M.kl_per_dim_gaussian(mean, log_var)
    rows: list[dict] = []
    wanted = set(args.only.split(",")) if args.only else None

    def add(key, name, sizes, fn, *, scale: float | None = None, note: str = "", repeats=args.repeats):
        if wanted is not None and key not in wanted:
            return None
        log(f"{name} ({sizes}) ...")
        seconds, result = timed(fn, repeats)
        row = {"key": key, "metric": name, "sizes": sizes, "seconds": seconds,
               "at_defaults": None if scale is None else seconds * scale, "note": note}
        rows.append(row)
        log(f"  {seconds:.3f} s")
        return result

    add("kl_per_dim", "KL per dim (per example + mean)", f"N={n}, d={args.latent_dim}",
        lambda: M.mean_kl_per_dim(mean, log_var))
    add("active_units", "active units", f"N={n}", lambda: M.active_units(mean))
    add("mi_full", "MI, full-data aggregate posterior", f"N={n} (N x N mixture)",
        lambda: M.mutual_information(mean, log_var, seed=0))
    add("mi_minibatch", "MI, minibatch (jxhe calc_mi)", f"N={n}, B=50",
        lambda: M.mutual_information_minibatch(mean, log_var, 50, seed=0))
    add("collapse", "(ε, δ)-collapse: 4 ε + curve (61 ε)", f"N={n}",
        lambda: ([M.collapse_fraction(kl, e) for e in M.COLLAPSE_EPS_GRID], M.collapse_curve(kl)))
    add("mig", "MIG (20 bins)", f"N={n}, 5 factors", lambda: M.mig(mean, factors))
    add("sap_discrete", "SAP, discrete LinearSVC", f"{half} train / {n - half} test",
        lambda: M.sap(mean[:half], factors[:half], mean[half:], factors[half:]))
    add("sap_continuous", "SAP, continuous", f"N={n}", lambda: M.sap(mean, factors, continuous=True))

    dci_train, dci_test = args.dci_train, args.dci_test
    add("dci", "DCI (GradientBoostingClassifier x 5 factors)", f"{dci_train} train / {dci_test} test",
        lambda: M.dci(mean[:dci_train], factors[:dci_train], mean[n - dci_test:], factors[n - dci_test:],
                      n_jobs=args.n_jobs),
        scale=None if dci_train == 10000 else 10000 / dci_train,
        note=f"n_jobs={args.n_jobs}", repeats=1)

    gt = DSpritesGroundTruth(args.image_size)
    projection = np.random.default_rng(1).standard_normal((args.image_size**2, args.latent_dim)) / args.image_size

    def represent(x):
        return x.reshape(len(x), -1) @ projection

    votes = args.beta_vae_train + args.beta_vae_eval
    add("beta_vae", "BetaVAE score (render + features + LogisticRegression)",
        f"{args.beta_vae_train} / {args.beta_vae_eval} votes x 2 x 64 images, {args.image_size}px",
        lambda: M.beta_vae_score(gt, represent, num_train=args.beta_vae_train, num_eval=args.beta_vae_eval),
        scale=None if votes == 15000 else 15000 / votes, note="no encoder: add the encode row", repeats=1)
    fv_votes = args.factor_vae_train + args.factor_vae_eval
    add("factor_vae", "FactorVAE score (render + majority vote)",
        f"{args.factor_vae_variance} variance pts, {args.factor_vae_train} / {args.factor_vae_eval} votes x 64 images",
        lambda: M.factor_vae_score(gt, represent, num_train=args.factor_vae_train, num_eval=args.factor_vae_eval,
                                   num_variance_estimate=args.factor_vae_variance),
        scale=None if (fv_votes, args.factor_vae_variance) == (15000, 10000) else
        (15000 * 64 + 10000) / (fv_votes * 64 + args.factor_vae_variance),
        note="no encoder: add the encode row", repeats=1)

    blobs, labels = data["blobs"], data["labels"]
    add("linear_probe", "linear probe (StandardScaler + LogisticRegression)", f"{half} train / {n - half} test, 10 classes",
        lambda: M.linear_probe_accuracy(blobs[:half], labels[:half], blobs[half:], labels[half:]))
    predicted = np.where(np.random.default_rng(2).random(n) < 0.8, (labels + 3) % 10, labels)
    add("cluster_accuracy", "cluster accuracy (Hungarian)", f"N={n}, 10 clusters",
        lambda: M.cluster_accuracy(labels, predicted))
    add("tsne", "t-SNE embedding (figure)", f"{min(n, 2000)} of N={n} points",
        lambda: M.tsne_embedding(mean, seed=0, max_points=2000), repeats=1)
    feats = data["features"]
    add("frechet", "Fréchet distance (statistics + sqrtm)", f"2 x N={n}, 128-d features",
        lambda: sample_quality.frechet_distance(*sample_quality.feature_statistics(feats[:half]),
                                                *sample_quality.feature_statistics(feats[half:])))
    add("kid", "kernel distance (100 subsets of 1000 per side)", f"2 x N={n}, 128-d features",
        lambda: sample_quality.kernel_distance(feats[:half], feats[half:]), repeats=1)

    # --- model-backed -----------------------------------------------------------------------
    if wanted is None or {"iw_nll", "encode"} & wanted:
        import keras

        from vae_tf.data import load_dataset
        from vae_tf.metrics import iw_nll, representation_function
        from vae_tf.models import build_vae

        digits = load_dataset("digits", seed=0)
        x = np.concatenate([digits.x_train, digits.x_val, digits.x_test])[: args.iw_points]
        keras.utils.set_random_seed(0)
        model = build_vae(digits.data_shape, latent={"family": "gaussian", "latent_dim": 8},
                          likelihood={"name": "bernoulli"}, network={"kind": "mlp", "hidden": [256, 128]}, seed=0)
        iw_nll(model, x[:10], k=args.iw_chunk, chunk=args.iw_chunk)  # trace once, untimed
        add("iw_nll", "IW-NLL (digits MLP 256-128, latent 8)", f"{len(x)} points, K={args.iw_k}, chunk {args.iw_chunk}",
            lambda: iw_nll(model, x, k=args.iw_k, chunk=args.iw_chunk), repeats=1,
            note=f"{len(x) * args.iw_k} decoder passes")

        conv = build_vae((args.image_size, args.image_size, 1), latent={"family": "gaussian", "latent_dim": 10},
                         network={"kind": "conv", "filters": [32, 64], "dense": 256}, seed=0)
        rep = representation_function(conv)
        images = gt.sample_observations_from_factors(factors[:n])
        rep(images[:64])  # trace once, untimed
        add("encode", "encode: conv VAE means (for BetaVAE / FactorVAE / DCI with a model)",
            f"N={n} images, {args.image_size}px", lambda: rep(images), repeats=1,
            note="the sampling metrics encode 1.92 M (BetaVAE) / 0.97 M (FactorVAE) images at defaults")
    return rows


def render(report: dict) -> str:
    m = report["machine"]
    commit = (m["git_commit"] or "unknown") + (" + uncommitted changes" if m["git_dirty"] else "")
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"- Date: {report['date']}; commit {commit}",
        f"- Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable); {m['platform']}",
        f"- Software: Python {m['python']}, NumPy {m['numpy']}, SciPy {m['scipy']}, scikit-learn "
        f"{m['scikit_learn']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}",
        f"- Method: one process, synthetic seeded inputs (see the script's docstring); sub-second metrics: median of "
        f"{report['settings']['repeats']} runs; '~' = linear extrapolation to the DLIB default sizes",
        "",
        "| metric | sizes | seconds | ~ at DLIB default sizes | notes |",
        "|---|---|---:|---:|---|",
    ]
    for row in report["rows"]:
        at = "" if row["at_defaults"] is None else f"~{row['at_defaults']:.0f}"
        lines.append(f"| {row['metric']} | {row['sizes']} | {row['seconds']:.3f} | {at} | {row['note']} |")
    lines.append("")
    lines.append(f"Total: {report['total_seconds']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="evaluation points (default 10000)")
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="runs of each sub-second metric (median)")
    p.add_argument("--image-size", type=int, default=64, choices=(32, 64))
    p.add_argument("--dci-train", type=int, default=10000)
    p.add_argument("--dci-test", type=int, default=5000)
    p.add_argument("--n-jobs", type=int, default=None, help="DCI factors in parallel (default: serial)")
    p.add_argument("--beta-vae-train", type=int, default=10000)
    p.add_argument("--beta-vae-eval", type=int, default=5000)
    p.add_argument("--factor-vae-train", type=int, default=10000)
    p.add_argument("--factor-vae-eval", type=int, default=5000)
    p.add_argument("--factor-vae-variance", type=int, default=10000)
    p.add_argument("--iw-k", type=int, default=500)
    p.add_argument("--iw-chunk", type=int, default=100)
    p.add_argument("--iw-points", type=int, default=1000)
    p.add_argument("--only", default=None, help="comma-separated metric keys (e.g. mi_full,iw_nll)")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    args = p.parse_args(argv)
    if args.dci_train > args.n or args.dci_test > args.n:
        p.error("--dci-train and --dci-test must not exceed --n")

    start = time.perf_counter()
    rows = run(args)
    report = {"command": command_line(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine_info(), "settings": vars(args), "rows": rows,
              "total_seconds": time.perf_counter() - start}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    raise SystemExit(main())
