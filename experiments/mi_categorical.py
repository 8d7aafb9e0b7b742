"""MI maximisation on the categorical code (documented experiment, not a CI test): the headline of
Serdega & Kim (2020), "Variational Mutual Information Maximization Framework for VAE Latent Codes
with Continuous and Discrete Priors", on scikit-learn's digits instead of MNIST.

A joint Gaussian(16) + categorical(K = 10) VAE (``gaussian_categorical`` family, Gumbel-softmax
relaxation) trained twice with the same networks, data, seed and temperature schedule:

- ``elbo``: the plain ELBO;
- ``mi_max``: ELBO + λ · (variational MI lower bound between the categorical code and the
  decoder's output, Q network + two optimizers per step; ``vae_tf.remedies.mi_q``).

Reported per run (never using labels in training):

- ``cluster acc``: cluster accuracy of the categorical code, argmax_k π_k(x), against the digit
  labels, best one-to-one matching of the 10 categories to the 10 digits (Hungarian algorithm,
  ``vae_tf.metrics.cluster_accuracy``), on the test split and on all 1797 images;
- ``used``: categories that are the argmax of at least one image; ``H(usage)``: entropy of the
  average category distribution E_x π(x) over all images (log 10 = 2.30 when all are used
  equally);
- ``MI bound``: :func:`vae_tf.metrics.fit_mi_bound` on the *frozen* trained model (a fresh Q fitted
  on the training split, evaluated on the test split, exact one-hot categories) — the bound as an
  evaluation metric for any model, at most H(c) ≤ log 10;
- test ELBO (nats, one sample) and training time.

Usage (prints a Markdown table; ``--json`` also writes the numbers)::

    python experiments/mi_categorical.py --epochs 100 --seeds 0 1 --mi-weight 1.0
    python experiments/mi_categorical.py --epochs 2 --seeds 0          # smoke run
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.study_files import json_output, run_study, study_parser, write_record  # noqa: E402


def train_one(objective: dict, data, seed: int, args) -> dict:
    import keras
    import numpy as np

    from vae_tf.metrics import cluster_accuracy
    from vae_tf.metrics import fit_mi_bound
    from vae_tf.models import build_vae

    keras.utils.set_random_seed(seed)
    latent = {"family": "gaussian_categorical", "latent_dim": args.gaussian_dims, "categories": args.categories,
              "temperature": {"kind": "exponential_decay", "start": 1.0, "rate": args.temperature_rate,
                              "floor": args.temperature_floor}}
    model = build_vae(data.data_shape, latent=latent, likelihood={"name": "bernoulli"},
                      network={"kind": "mlp", "hidden": [256, 128]}, objective=dict(objective), seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), steps_per_execution=4)
    start = time.time()
    model.fit(data.pipeline("train", args.batch_size, seed=seed), epochs=args.epochs, verbose=0, shuffle=False)
    seconds = time.time() - start
    test = model.evaluate(data.pipeline("test", 256), return_dict=True, verbose=0)

    x_all = np.concatenate([data.x_train, data.x_val, data.x_test])
    y_all = np.concatenate([data.y_train, data.y_val, data.y_test])
    encode = model.encode(x_all)
    category = np.asarray(encode["category"])
    usage = np.asarray(encode["category_probs"], np.float64).mean(axis=0)
    n_test = len(data.x_test)
    bound = fit_mi_bound(model, data.x_train, x_eval=data.x_test, steps=args.q_steps, batch_size=128, seed=seed)
    return {
        "objective": objective["name"], "mi_weight": objective.get("mi_weight", 0.0), "seed": seed,
        "cluster_acc_test": cluster_accuracy(data.y_test, category[-n_test:]),
        "cluster_acc_all": cluster_accuracy(y_all, category),
        "categories_used": int(len(np.unique(category))),
        "usage_entropy": float(-np.sum(usage[usage > 0] * np.log(usage[usage > 0]))),
        "mi_bound": bound["mi_bound"], "mi_bound_entropy": bound["entropy"],
        "test_elbo": float(test["elbo"]), "test_kl": float(test["kl"]), "seconds": seconds,
    }


def main(argv=None) -> int:
    parser = study_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--mi-weight", type=float, nargs="+", default=[1.0])
    parser.add_argument("--gaussian-dims", type=int, default=16)
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--temperature-rate", type=float, default=1e-3)
    parser.add_argument("--temperature-floor", type=float, default=0.5)
    parser.add_argument("--q-steps", type=int, default=500, help="Adam steps of fit_mi_bound's Q")
    parser.add_argument("--json", type=json_output, default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    from vae_tf.data import load_dataset

    data = load_dataset("digits", seed=0)
    objectives = [{"name": "elbo"}] + [{"name": "mi_max", "mi_weight": w, "mi_target": "categorical"}
                                       for w in args.mi_weight]
    rows = []
    for seed in args.seeds:
        for objective in objectives:
            row = train_one(objective, data, seed, args)
            rows.append(row)
            print(f"# {row['objective']} λ={row['mi_weight']:g} seed={seed}: cluster acc (all) "
                  f"{row['cluster_acc_all']:.3f}, {row['seconds']:.0f} s", file=sys.stderr, flush=True)

    print(f"digits, joint Gaussian({args.gaussian_dims}) + categorical(K={args.categories}), MLP 256/128, "
          f"Bernoulli, batch {args.batch_size}, Adam {args.learning_rate:g}, {args.epochs} epochs, "
          f"τ = max({args.temperature_floor:g}, exp(−{args.temperature_rate:g}·t)); log K = {math.log(args.categories):.2f}\n")
    print("| objective | λ | seed | cluster acc (test) | cluster acc (all) | used | H(usage) | MI bound | test ELBO | time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['objective']} | {r['mi_weight']:g} | {r['seed']} | {r['cluster_acc_test']:.3f} | "
              f"{r['cluster_acc_all']:.3f} | {r['categories_used']} | {r['usage_entropy']:.2f} | {r['mi_bound']:.2f} | "
              f"{r['test_elbo']:.1f} | {r['seconds']:.0f} s |")
    if args.json:
        write_record(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(run_study(main, resumable=False))  # one table at the end: nothing to resume
