"""Why does the NG-VAE keep 7–8 informative dims of 10 on dSprites-like data, not ~5? (issue 18)

A controlled study around experiments/selective_collapse.py: one factor changed at a time from a
baseline, several seeds per condition, mean ± std. Every run trains one model (MLP 512-256,
Bernoulli likelihood, 10 latent dims, Adam 1e-3, batch 128) on the procedural dSprites-like set
(32 × 32, ``--n-samples`` images, 80/10/10 split; the data seed is the run's seed, so every
condition sees the same images for a given seed) and measures on the test split:

- ``p split``: dims whose data-averaged informative weight p_i exceeds ½ (the paper's readout);
- ``I_i``: the information of each latent dimension alone, I(x; z_i) (nats), estimated on the
  N test images with one draw z_n ~ q(z_i | x_n) each,
  I_i ≈ mean_n [log q(z_n | x_n) − log mean_m q(z_n | x_m)] (the aggregate posterior is the
  mixture of the N posteriors; the estimate cannot exceed log N). q(z_i | x) is the exact marginal
  of z_i: for NG a two-component mixture of Student-t (λ integrated out), for the Gaussian
  N(μ_i, σ_i²); computed here with SciPy, independently of the model's code. ``MI-active``
  counts dims with I_i > 0.1 nats; ``Σ I_i`` sums them (not I(x; z), which can be larger or smaller);
- ``factor map``: I(disc(μ_i); v_k) / H(v_k) for each dim i and factor k (MIG's discretised
  mutual information, 20 bins, DLIB variant: vae_tf.metrics.disentanglement), on the *training*
  images (more points, less estimator bias); the report gives per factor the best single dim's
  share;
- ``decodability``: how well all of μ predicts each factor (k-NN; accuracy for shape, R² for the
  others, orientation as (cos 4θ, sin 4θ), see :func:`decodability`): which factors the code holds;
- the trajectory of the p split over epochs (validation split), to see *when* the count is set;
- ``|logit p|``: median over test images of |logit p_i| on the informative dims (how saturated the
  sigmoid that gates a dim is).

Conditions (``--conditions``; baseline ``ng``: default hyperparameters, bound KL, linear KL
warm-up over 1250 steps, 30 epochs):

=====================  ======================================================================
``pixels``             no VAE: an MLP (512-256) trained on the pixels *with* the factors as targets
                       (:func:`supervised_reference`): which factors the images hold at all
``gaussian``           Gaussian VAE, same network and warm-up (reference for "what the data needs")
``ng``                 NG-VAE, defaults (α1, β1) = (9, 2), (α2, β2) = (2.5, 2.5), prior (1, 1)
``ng_warmup_250``      warm-up over 250 steps (2 epochs) instead of 1250
``ng_warmup_2500``     warm-up over 2500 steps (20 epochs)
``ng_mc``              ``kl_estimator: monte_carlo`` (no H(p) overcharge while p is undecided)
``ng_b0_0.5``          prior Gamma(1, 0.5): an informative dim costs KL1 − KL2 = 0.90 nats more
``ng_b0_3``            prior Gamma(1, 3): KL1 − KL2 = 9.65 nats (default prior: 2.65)
``ng_v0.05``           informative component (α1, β1) = (9, 0.4): Var[z|x] = 0.05 instead of 0.25,
                       prior rate b0 chosen so KL1 − KL2 stays 2.65 nats
=====================  ======================================================================

Each (condition, seed) is one JSON file in ``--out``; a file that exists is not run again, so an
interrupted study resumes where it stopped. ``--report`` prints the Markdown tables from the files.

Usage (about 3 minutes per NG run, 2 per Gaussian run, on the shared 2-CPU machine)::

    python experiments/ng_vae_study.py --conditions gaussian,ng --seeds 0,1,2
    python experiments/ng_vae_study.py --conditions all --seeds 0,1,2
    python experiments/ng_vae_study.py --report
    python experiments/ng_vae_study.py --conditions ng --seeds 0 --n-samples 1000 --epochs 1 --out /tmp/ng  # smoke

Numbers hold only for this generator version, image size, seed and network (vae_tf/data/dsprites.py).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from experiments.study_files import (mean_std, pending_runs, run_study, runs_by_condition, seed_list,  # noqa: E402
                                      study_parser, write_record)
from scipy import stats  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "results" / "ng_vae_study"
MI_ACTIVE = 0.1      # nats: a dim "carries information" above this
NG_DEFAULTS = {"alpha1": 9.0, "beta1": 2.0, "alpha2": 2.5, "beta2": 2.5, "prior_alpha": 1.0, "prior_beta": 1.0}


def _prior_rate_for_gap(alpha1: float, beta1: float, gap: float) -> float:
    """The prior rate b0 (a0 = 1, component 2 default) at which KL1 − KL2 (μ = 0) equals ``gap``."""
    from scipy.optimize import brentq

    from vae_tf.latents.normal_gamma import kl_normal_gamma

    def excess(b0):
        kl1 = float(kl_normal_gamma(0.0, alpha1, beta1, 1.0, b0))
        kl2 = float(kl_normal_gamma(0.0, NG_DEFAULTS["alpha2"], NG_DEFAULTS["beta2"], 1.0, b0))
        return kl1 - kl2 - gap

    return float(brentq(excess, 1e-3, 10.0))


def conditions() -> dict:
    """name → {family, ng options, warmup steps}; ``ng_v0.05``'s b0 is solved for (docstring)."""
    base = {"family": "normal_gamma", "ng": {}, "warmup": 1250}
    return {
        "pixels": {"family": "pixels", "ng": {}, "warmup": 0},
        "gaussian": {"family": "gaussian", "ng": {}, "warmup": 1250},
        "ng": base,
        "ng_warmup_250": {**base, "warmup": 250},
        "ng_warmup_2500": {**base, "warmup": 2500},
        "ng_mc": {**base, "ng": {"kl_estimator": "monte_carlo"}},
        "ng_b0_0.5": {**base, "ng": {"prior_beta": 0.5}},
        "ng_b0_3": {**base, "ng": {"prior_beta": 3.0}},
        "ng_v0.05": {**base, "ng": {"alpha1": 9.0, "beta1": 0.4,
                                    "prior_beta": round(_prior_rate_for_gap(9.0, 0.4, 2.6464), 4)}},
    }


# --- measurements (NumPy / SciPy, independent of the model's code) ---------------------------------

def _ng_log_density(z, mu, log_p1, log_p2, hyper) -> np.ndarray:
    """log q(z_n | x_m) for every pair, ``[N, M]``: p t_{2α1}(μ, √(β1/α1)) + (1 − p) t_{2α2}(μ, √(β2/α2))."""
    a1, b1, a2, b2 = (hyper[k] for k in ("alpha1", "beta1", "alpha2", "beta2"))
    diff = z[:, None] - mu[None, :]
    c1 = stats.t.logpdf(diff, df=2 * a1, scale=np.sqrt(b1 / a1))
    c2 = stats.t.logpdf(diff, df=2 * a2, scale=np.sqrt(b2 / a2))
    return np.logaddexp(log_p1[None, :] + c1, log_p2[None, :] + c2)


def per_dim_mi_ng(mu, logits, hyper, rng) -> np.ndarray:
    """I(x; z_i) per dim (module docstring) for the NG posterior: one draw per example."""
    n, d = mu.shape
    out = np.empty(d)
    for i in range(d):
        p = 1.0 / (1.0 + np.exp(-logits[:, i]))
        log_p1, log_p2 = -np.logaddexp(0.0, -logits[:, i]), -np.logaddexp(0.0, logits[:, i])
        first = rng.random(n) < p
        precision = np.where(first, rng.gamma(hyper["alpha1"], 1.0 / hyper["beta1"], n),
                             rng.gamma(hyper["alpha2"], 1.0 / hyper["beta2"], n))
        z = mu[:, i] + rng.standard_normal(n) / np.sqrt(precision)
        log_q = _ng_log_density(z, mu[:, i], log_p1, log_p2, hyper)
        out[i] = np.mean(np.diag(log_q) - (logsumexp(log_q, axis=1) - np.log(n)))
    return out


def per_dim_mi_gaussian(mu, log_var, rng) -> np.ndarray:
    """I(x; z_i) per dim for q(z_i | x) = N(μ_i, σ_i²): one draw per example."""
    n, d = mu.shape
    out = np.empty(d)
    for i in range(d):
        sd = np.exp(0.5 * log_var[:, i])
        z = mu[:, i] + sd * rng.standard_normal(n)
        log_q = stats.norm.logpdf(z[:, None], loc=mu[None, :, i], scale=sd[None, :])
        out[i] = np.mean(np.diag(log_q) - (logsumexp(log_q, axis=1) - np.log(n)))
    return out


def decodability(train_codes, train_factors, test_codes, test_factors, k: int = 15) -> dict:
    """How well the whole code (all dims' μ) predicts each factor, k-nearest neighbours fit on the
    training codes and scored on the test codes: accuracy for ``shape`` (chance 1/3), R² for
    ``scale``, ``pos_x``, ``pos_y`` (class indices), and for ``orientation`` the R² of
    (cos 4θ, sin 4θ): the square repeats every 90° and the ellipse every 180°, so only 4θ is
    determined by every image."""
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    from vae_tf.data.dsprites import FACTOR_GRID

    def r2(target_train, target_test):
        fit = KNeighborsRegressor(k).fit(train_codes, target_train)
        return float(fit.score(test_codes, target_test))

    def angle(f):
        theta = 4.0 * FACTOR_GRID[2][f[:, 2]]
        return np.stack([np.cos(theta), np.sin(theta)], axis=1)

    shape = KNeighborsClassifier(k).fit(train_codes, train_factors[:, 0]).score(test_codes, test_factors[:, 0])
    return {"shape": float(shape), "scale": r2(train_factors[:, 1], test_factors[:, 1]),
            "orientation": r2(angle(train_factors), angle(test_factors)),
            "pos_x": r2(train_factors[:, 3], test_factors[:, 3]), "pos_y": r2(train_factors[:, 4], test_factors[:, 4])}


def _factor_targets(factors) -> np.ndarray:
    """``(N, 5)`` regression targets: scale / 5, cos 4θ, sin 4θ, pos_x / 31, pos_y / 31."""
    from vae_tf.data.dsprites import FACTOR_GRID

    theta = 4.0 * FACTOR_GRID[2][factors[:, 2]]
    return np.stack([factors[:, 1] / 5, np.cos(theta), np.sin(theta), factors[:, 3] / 31, factors[:, 4] / 31], axis=1)


def supervised_reference(data, seed: int) -> dict:
    """What an MLP of the encoder's size (512-256, scikit-learn, ≤ 30 epochs, early stopping) can
    read from the raw pixels when it is *told* the factors: shape accuracy and the same R²'s as
    :func:`decodability`. It shows which factors the 32 × 32 images hold at all."""
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    x_train, x_test = (getattr(data, f"x_{s}").reshape(len(getattr(data, f"x_{s}")), -1) for s in ("train", "test"))
    f_train, f_test = data.factors_train, data.factors_test
    options = {"hidden_layer_sizes": (512, 256), "max_iter": 30, "early_stopping": True, "random_state": seed}
    shape = MLPClassifier(**options).fit(x_train, f_train[:, 0]).score(x_test, f_test[:, 0])
    predicted, target = MLPRegressor(**options).fit(x_train, _factor_targets(f_train)).predict(x_test), _factor_targets(f_test)

    def r2(cols):
        y, p = target[:, cols], predicted[:, cols]
        return float(1.0 - np.sum((p - y) ** 2) / np.sum((y - y.mean(axis=0)) ** 2))

    return {"shape": float(shape), "scale": r2([0]), "orientation": r2([1, 2]), "pos_x": r2([3]), "pos_y": r2([4])}


def factor_map(mu, factors) -> np.ndarray:
    """``(d, K)``: I(disc(μ_i); v_k) / H(v_k), MIG's discretised estimate (20 bins)."""
    from vae_tf.metrics.disentanglement import discrete_entropy, discrete_mutual_info, histogram_discretize

    return discrete_mutual_info(histogram_discretize(mu), factors) / discrete_entropy(factors)[None, :]


# --- one run ---------------------------------------------------------------------------------------

def run_one(name: str, spec: dict, seed: int, args) -> dict:
    import keras
    import tensorflow as tf

    from vae_tf.data import load_dataset
    from vae_tf.data.dsprites import FACTOR_NAMES
    from vae_tf.metrics.collapse import active_units
    from vae_tf.models import build_vae

    data = load_dataset("dsprites", n_samples=args.n_samples, image_size=32, seed=seed)
    if spec["family"] == "pixels":  # the reference: what the images themselves hold, no VAE
        return {"condition": name, "seed": seed, "family": "pixels", "n_samples": args.n_samples,
                "factor_names": list(FACTOR_NAMES), "decodability": supervised_reference(data, seed)}
    keras.utils.set_random_seed(seed)
    family = {"family": spec["family"], "latent_dim": args.latent_dim, **spec["ng"]}
    model = build_vae(data.data_shape, latent=family, network={"kind": "mlp", "hidden": [512, 256]},
                      likelihood={"name": "bernoulli"},
                      objective={"kl_weight": {"kind": "linear", "steps": spec["warmup"]}}, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.time()
    history = model.fit(data.pipeline("train", 128), validation_data=data.pipeline("val", 256),
                        epochs=args.epochs, verbose=0, shuffle=False).history
    seconds = time.time() - start
    test = model.evaluate(data.pipeline("test", 256), return_dict=True, verbose=0)
    kl = np.asarray(model.kl_per_dim, dtype=float)

    def encoder_output(x):
        return np.concatenate([np.asarray(model.posterior_params(tf.constant(x[i:i + 512])))
                               for i in range(0, len(x), 512)])

    params = encoder_output(data.x_test)
    first, second = params[:, :args.latent_dim], params[:, args.latent_dim:]
    rng = np.random.default_rng(seed)
    # The factor map on the training images (16 000 at the default size): the discretised MI's
    # upward bias, about (bins − 1)(classes − 1) / 2N nats, is then < 1 % of each H(v_k).
    train_mu = encoder_output(data.x_train)[:, :args.latent_dim]
    fmap = factor_map(train_mu, data.factors_train)
    decoded = decodability(train_mu, data.factors_train, first, data.factors_test)
    result = {
        "condition": name, "seed": seed, "family": spec["family"], "warmup": spec["warmup"],
        "epochs": args.epochs, "n_samples": args.n_samples, "train_seconds": round(seconds, 1),
        "test_elbo": float(test["elbo"]), "test_kl": float(test["kl"]),
        "kl_per_dim": kl.round(4).tolist(),
        "active_units": int(active_units(first)[0]),
        "factor_names": list(FACTOR_NAMES), "factor_map": fmap.round(4).tolist(), "decodability": decoded,
        "history": {k: [float(v) for v in history[k]] for k in ("beta", "elbo", "kl", "val_elbo", "val_kl",
                                                                "informative_dims", "val_informative_dims")
                    if k in history},
    }
    if spec["family"] == "normal_gamma":
        hyper = model.latent.hyperparameters()
        mi = per_dim_mi_ng(first, second, hyper, rng)
        p = (1.0 / (1.0 + np.exp(-second))).mean(axis=0)
        informative = p > 0.5
        result.update({
            "hyperparameters": hyper, "kl_estimator": model.latent.kl_estimator,
            "informative_weight": p.round(4).tolist(), "p_split": int(informative.sum()),
            "median_abs_logit": np.median(np.abs(second), axis=0).round(2).tolist(),
            "val_p_by_epoch": [[float(history[f"val_informative_weight_{i}"][e]) for i in range(args.latent_dim)]
                               for e in range(args.epochs)],
        })
    else:
        mi = per_dim_mi_gaussian(first, second, rng)
    result.update({"mi_per_dim": mi.round(4).tolist(), "mi_active": int((mi > MI_ACTIVE).sum()),
                   "mi_sum": float(mi.sum())})
    return result


def _provenance() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"date": datetime.date.today().isoformat(), "commit": commit, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


# --- report ----------------------------------------------------------------------------------------

def _ms(values, fmt="{:.1f}") -> str:
    return mean_std(values, fmt)


def report(out: Path) -> str:
    runs = runs_by_condition(out)
    order = [c for c in conditions() if c in runs]
    lines = ["| condition | seeds | test ELBO | test KL | p split | p split at epoch 10 / 20 | MI-active (I_i > 0.1) "
             "| Σ I_i | AU | best dim's share of each factor | decodability from all dims |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in order:
        rs = runs[c]
        if rs[0]["family"] == "pixels":  # supervised MLP on the pixels, not k-NN on a code
            dec = [np.mean([r["decodability"][k] for r in rs]) for k in rs[0]["factor_names"]]
            lines.append(f"| pixels (no model) | {','.join(str(r['seed']) for r in rs)} | | | | | | | | | "
                         f"{', '.join(f'{v:.2f}' for v in dec)} |")
            continue
        ng = rs[0]["family"] == "normal_gamma"
        traj = "—"
        if ng:
            at = [[r["history"]["val_informative_dims"][e - 1] for r in rs if len(r["history"]["val_informative_dims"]) >= e]
                  for e in (10, 20)]
            traj = " / ".join(_ms(a) for a in at if a)
        share = np.mean([np.asarray(r["factor_map"]).max(axis=0) for r in rs], axis=0)
        dec = [np.mean([r["decodability"][k] for r in rs]) for k in rs[0]["factor_names"]] if "decodability" in rs[0] else []
        lines.append(f"| {c} | {','.join(str(r['seed']) for r in rs)} | {_ms([r['test_elbo'] for r in rs])} | "
                     f"{_ms([r['test_kl'] for r in rs])} | {_ms([r['p_split'] for r in rs]) if ng else '—'} | {traj} | "
                     f"{_ms([r['mi_active'] for r in rs])} | {_ms([r['mi_sum'] for r in rs], '{:.2f}')} | "
                     f"{_ms([r['active_units'] for r in rs])} | {', '.join(f'{v:.2f}' for v in share)} | "
                     f"{', '.join(f'{v:.2f}' for v in dec) or '—'} |")
    lines.insert(0, "Factor columns in the order shape, scale, orientation, pos_x, pos_y. Best dim's share: "
                 "max_i I(disc(μ_i); v_k) / H(v_k), mean over seeds. Decodability: k-NN accuracy (shape) or R² "
                 "(the others; orientation as (cos 4θ, sin 4θ)), mean over seeds.\n")
    lines += ["", "Per run (I_i in nats, sorted by dim; p_i for NG):", ""]
    for c in order:
        for r in runs[c]:
            if r["family"] == "pixels":
                continue
            extra = f"; p = {[round(x, 2) for x in r['informative_weight']]}" if "informative_weight" in r else ""
            lines.append(f"- {c}, seed {r['seed']}: I_i = {[round(x, 2) for x in r['mi_per_dim']]}{extra}")
    return "\n".join(lines)


def main(argv=None) -> int:
    table = conditions()
    parser = study_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--conditions", default="gaussian,ng",
                        help=f"comma-separated names, or 'all': {', '.join(table)}")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--n-samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="one JSON per run (default: the committed runs, so only runs missing there train: "
                             "give another folder to reproduce them)")
    parser.add_argument("--report", action="store_true", help="print the tables from --out and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
        return 0
    def settings(name: str) -> dict:  # the pixels reference trains nothing: only its data matter
        if table[name]["family"] == "pixels":
            return {"n_samples": args.n_samples}
        return {"n_samples": args.n_samples, "epochs": args.epochs, "latent_dim": args.latent_dim}

    def recorded(record: dict) -> dict:  # the committed records predate "settings"
        return {"latent_dim": len(record["mi_per_dim"])} if isinstance(record.get("mi_per_dim"), list) else {}

    for name, seed, path in pending_runs(parser, args.conditions, table, args.seeds, args.out, settings, recorded):
        result = run_one(name, table[name], seed, args)
        write_record(path, {**result, "settings": settings(name), **_provenance()})
        print(f"{name} seed {seed}: p split {result.get('p_split', '—')}, MI-active {result.get('mi_active', '—')}, "
              f"decodability {result.get('decodability')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_study(main))
