"""Selective posterior collapse (documented experiment, not a CI test): a Gaussian VAE and an
NG-VAE (Normal-Gamma mixture latent, Jouffroy et al.) with the same networks and 10 latent
dimensions on dSprites-like data (5 generative factors: shape, scale, orientation, x, y), and how
many latent dimensions each keeps active.

Per model, on the test split (means over its examples):

- ``KL_i``: E_x KL_i (nats) per latent dimension (for NG: the KL of the pair (z_i, λ_i), the
  convexity bound the model trains on);
- ``active (KL > 0.01)``: dims with E_x KL_i > 0.01 nats (the training-time ``active_kl_dims``);
  for NG also ``active (KL − floor > 0.01)``: above the KL a fully collapsed NG dimension keeps
  (μ = 0, p = 0: KL[NG(0, α2, β2) || prior], about 0.41 nats with the defaults, because the prior
  of z does not depend on λ);
- ``AU``: active units, Var_x E[z_i|x] ≥ 0.01 (Burda et al. 2016; sample variance, N − 1);
- for NG, ``p_i`` (E_x of the informative weight) and the number of dims with p_i > ½ (the
  "p split"), and E_x E[λ_i].

Usage (prints a Markdown report; ``--json`` also writes the numbers)::

    python experiments/selective_collapse.py --n-samples 20000 --epochs 20 --kl-warmup 1250 --seed 0
    python experiments/selective_collapse.py --n-samples 600 --epochs 1 --latent-dim 4   # smoke run

Numbers hold only for this generator version, image size, seed and network (see
vae_tf/data/dsprites.py); they are not comparable with published dSprites results.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.study_files import json_object, json_output, run_study, study_parser, write_record  # noqa: E402

ACTIVE = 0.01


def train_one(family: dict, data, args) -> dict:
    import keras
    import numpy as np

    from vae_tf.latents.normal_gamma import kl_normal_gamma
    from vae_tf.models import build_vae

    keras.utils.set_random_seed(args.seed)
    network = ({"kind": "conv", "filters": [32, 64], "dense": 256} if args.network == "conv"
               else {"kind": "mlp", "hidden": [512, 256]})
    objective = {}
    if args.kl_warmup:
        objective["kl_weight"] = {"kind": "linear", "steps": args.kl_warmup}
    model = build_vae(data.data_shape, latent=family, network=network, likelihood={"name": "bernoulli"},
                      objective=objective, seed=args.seed)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    start = time.time()
    history = model.fit(data.pipeline("train", args.batch_size), validation_data=data.pipeline("val", 256),
                        epochs=args.epochs, verbose=args.verbose, shuffle=False).history
    seconds = time.time() - start
    test = model.evaluate(data.pipeline("test", 256), return_dict=True, verbose=0)
    kl = model.kl_per_dim
    codes = {key: np.concatenate([np.asarray(model.encode(data.x_test[i:i + 512])[key])
                                  for i in range(0, len(data.x_test), 512)]) for key in model.encode(data.x_test[:1])}
    variance = codes["z_mean"].var(axis=0, ddof=1)
    result = {
        "family": family["family"], "epochs": args.epochs, "train_seconds": round(seconds, 1),
        "test_elbo": float(test["elbo"]), "test_reconstruction": float(test["reconstruction"]), "test_kl": float(test["kl"]),
        "val_elbo_last": float(history["val_elbo"][-1]),
        "kl_per_dim": kl.astype(float).round(4).tolist(), "active_kl": int((kl > ACTIVE).sum()),
        "mean_variance": variance.astype(float).round(4).tolist(), "active_units": int((variance >= ACTIVE).sum()),
    }
    if family["family"] == "normal_gamma":
        latent = model.latent
        floor = float(kl_normal_gamma(0.0, latent.alpha2, latent.beta2, latent.prior_alpha, latent.prior_beta))
        p = codes["informative_weight"].mean(axis=0)
        result.update({
            "hyperparameters": latent.hyperparameters(), "collapsed_floor": round(floor, 4),
            "active_kl_above_floor": int((kl - floor > ACTIVE).sum()),
            "informative_weight": p.astype(float).round(3).tolist(), "informative_dims": int((p > 0.5).sum()),
            "precision_mean": codes["precision_mean"].mean(axis=0).astype(float).round(3).tolist(),
        })
    return result


def report(results: list[dict], args) -> str:
    lines = [f"dSprites-like, {args.image_size}x{args.image_size}, n_samples={args.n_samples}, seed={args.seed}, "
             f"latent_dim={args.latent_dim}, network={args.network}, epochs={args.epochs}, "
             f"batch={args.batch_size}, lr={args.learning_rate}, kl_warmup={args.kl_warmup}", "",
             "| model | test ELBO | test KL | active (KL > 0.01) | active (KL − floor > 0.01) | AU | p split (p_i > ½) | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ng = r["family"] == "normal_gamma"
        lines.append(f"| {r['family']} | {r['test_elbo']:.2f} | {r['test_kl']:.2f} | {r['active_kl']} | "
                     f"{r['active_kl_above_floor'] if ng else '—'} | {r['active_units']} | "
                     f"{r['informative_dims'] if ng else '—'} | {r['train_seconds']} |")
    lines.append("")
    for r in results:
        lines.append(f"- {r['family']}: E_x KL_i = {r['kl_per_dim']}")
        lines.append(f"  Var_x E[z_i|x] = {r['mean_variance']}")
        if r["family"] == "normal_gamma":
            lines.append(f"  p_i = {r['informative_weight']}; E[λ_i] = {r['precision_mean']}; "
                         f"collapsed floor = {r['collapsed_floor']} nats; {r['hyperparameters']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = study_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=20000)
    parser.add_argument("--image-size", type=int, default=32, choices=(32, 64))
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--network", choices=("mlp", "conv"), default="mlp")
    parser.add_argument("--kl-warmup", type=int, default=0, help="linear KL annealing over this many steps (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default="gaussian,normal_gamma")
    parser.add_argument("--ng", type=json_object, default={},
                        help="JSON of extra normal_gamma options, e.g. '{\"alpha1\": 21}'")
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument("--json", type=json_output, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    from vae_tf.latents import LATENT_FAMILIES

    unknown = [name for name in args.families.split(",") if name not in LATENT_FAMILIES]
    if unknown:  # before the first family trains
        parser.error(f"--families: unknown latent family {', '.join(unknown)}; choose from "
                     f"{', '.join(LATENT_FAMILIES.names())}")

    from vae_tf.data import load_dataset

    data = load_dataset("dsprites", n_samples=args.n_samples, image_size=args.image_size, seed=args.seed)
    results = []
    for name in args.families.split(","):
        family = {"family": name, "latent_dim": args.latent_dim}
        if name == "normal_gamma":
            family.update(args.ng)
        results.append(train_one(family, data, args))
    print(report(results, args))
    if args.json:
        write_record(args.json, {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                 "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(run_study(main, resumable=False))  # one table at the end: nothing to resume
