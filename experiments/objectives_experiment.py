"""Objectives I experiment (documented, not a CI test): ControlVAE reaching its KL set point, and
AR-ELBO vs a fixed / learned decoder σ_x on digits.

Each run goes through the real training job (`training.train.run_training`: MLflow-tracked,
exported) and is then measured on the test split of its export-time model:

- KL (nats, test mean), reconstruction log p(x|z) (nats, not comparable across likelihoods),
  the reconstruction MSE per pixel of the deterministic decode (comparable), active units
  (Burda et al.: Cov_x E[z_u] >= 0.01) and the full-data mutual information I_q(x; z).

Usage::

    python experiments/objectives_experiment.py --epochs 60 --seed 0 > /tmp/objectives.md

MLflow runs go to ``$MLFLOW_TRACKING_URI`` (default: ``sqlite:///mlflow.db`` here), experiment
``objectives-experiment``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.study_files import run_study, study_parser  # noqa: E402

RUNS = {
    "control_vae (KL set point 10)": ["objective.kl_weight={kind: control, set_point: 10.0, kp: 0.01, ki: 0.001}"],
    "elbo, Bernoulli (reference)": [],
    "ar_elbo (σ_x² = running MSE)": ["model.likelihood={name: gaussian_adaptive, sigma: 1.0}"],
    "elbo, Gaussian σ_x = 1 fixed": ["model.likelihood={name: gaussian, sigma: 1.0}"],
    "elbo, Gaussian σ_x learned": ["model.likelihood={name: gaussian_learned, sigma: 1.0}"],
}


def measure(result, config) -> dict:
    import numpy as np
    import tensorflow as tf

    from training.train import prepare_data
    from vae_tf.metrics import active_units, mutual_information

    data = prepare_data(config)
    model = tf.saved_model.load(str(result.export_dir))
    x = tf.constant(data.x_test)
    codes = model.signatures["encode"](x=x)
    mean, log_var = codes["z_mean"].numpy(), codes["z_log_var"].numpy()
    x_mean = model.signatures["reconstruct"](x=x)["x_mean"].numpy()
    au, _ = active_units(mean)
    history = result.history
    return {
        "kl": result.test_metrics["test_kl"],
        "reconstruction": result.test_metrics["test_reconstruction"],
        "mse": float(np.mean((x_mean - data.x_test) ** 2)),
        "au": au,
        "mi": mutual_information(mean, log_var, seed=0),
        "sigma_x2": history.get("sigma_x2", [float("nan")])[-1],
        "beta": history["beta"][-1],
        "latent_dim": mean.shape[1],
    }


def main(argv=None) -> int:
    parser = study_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from training.config import DEFAULT_CONFIG, load_config
    from training.train import run_training

    rows = []
    for title, overrides in RUNS.items():
        config = load_config(DEFAULT_CONFIG, [*overrides, f"train.epochs={args.epochs}", f"seed={args.seed}",
                                              "train.early_stopping_patience=null", "train.verbose=0",
                                              "mlflow.experiment=objectives-experiment", "mlflow.register=false",
                                              f"name=objectives-{len(rows)}", "mlflow.log_figures=false"])
        print(f"training: {title}", file=sys.stderr, flush=True)
        result = run_training(config)
        rows.append((title, measure(result, config)))

    command = "python experiments/objectives_experiment.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Command: `{command.strip()}` (digits, MLP 256/128, latent 8, batch 64, Adam 1e-3, "
          f"{args.epochs} epochs, seed {args.seed}; metrics on the 180-image test split)\n")
    print("| run | test KL (nats) | log p(x\\|z) (nats) | MSE/pixel | active units | MI (nats) | final β | σ_x² |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for title, m in rows:
        sigma = "—" if m["sigma_x2"] != m["sigma_x2"] else f"{m['sigma_x2']:.4f}"
        print(f"| {title} | {m['kl']:.2f} | {m['reconstruction']:.1f} | {m['mse']:.4f} | {m['au']}/{m['latent_dim']} "
              f"| {m['mi']:.2f} | {m['beta']:.3f} | {sigma} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_study(main, resumable=False))  # one table at the end: nothing to resume
