"""Why did capacity control spend its KL budget without information in the `collapse` suite? (issue 18)

The suite's run ``capacity`` (digits, MLP 256-128, 16 latent dims, Bernoulli, batch 64, Adam 1e-3,
15 epochs; ``kl_weight: {kind: capacity, gamma: 30, capacity_max: 15, capacity_steps: 200}``)
ended with KL 16 nats but I_q(x; z) 0.34 nats. Burgess et al. (2018) minimise

    −E[log p(x|z)] + γ |KL − C_t|,    C_t = C_max · min(1, t / capacity_steps)

(γ = 1000, C ramped to 25 nats over 100 000 iterations on dSprites). Below C_t the penalty *rewards*
KL at γ nats per nat, however the KL is raised. For a diagonal Gaussian posterior the data-averaged
KL splits exactly into three parts (sums over dims i, expectations over the evaluated images x):

    E_x KL = ½ Σ_i (E_x μ_i)²                      "offset": the code's mean moved off 0
           + ½ Σ_i Var_x μ_i                       "spread": the means vary with x
           + ½ Σ_i E_x[σ_i² − log σ_i² − 1]        "sharpness": posteriors narrower (or wider) than 1

and E_x KL = I_q(x; z) + KL(q(z) || p(z)). Only the spread, together with a sharpness that
resolves it, is information; an offset, or a spread along directions the decoder ignores, is
paid-for KL with none. This script trains each condition on several seeds and reports, on the test
split (180 images): ELBO, KL and its three parts, I_q(x; z) (vae_tf.metrics.mutual_information,
the full-data estimator, capped at log 180 = 5.19 nats) and the same on the 1 437 training images
(cap log 1437 = 7.27 nats, to show whether the cap matters), the marginal KL = KL − I, AU, and
a logistic-regression probe of the digit class on μ (accuracy on the test split).

Conditions (``--conditions``): references ``vae`` (β = 1) and ``control_vae`` (set point 15, as in
the suite); ``capacity`` rows vary γ, the ramp length, C_max and the training length one at a time
from the suite's setting (``cap_suite``). Each (condition, seed) is one JSON file in ``--out``; an
existing file is not rerun (resumable). ``--report`` prints the table.

Usage (seconds per run at 15 epochs, about a minute at 100)::

    python experiments/capacity_study.py --conditions all --seeds 0,1,2
    python experiments/capacity_study.py --report
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

DEFAULT_OUT = ROOT / "docs" / "results" / "capacity_study"
STEPS_PER_EPOCH = 23  # ceil(1437 / 64)


def cap(gamma, c_max, steps):
    return {"kind": "capacity", "gamma": gamma, "capacity_max": c_max, "capacity_steps": steps}


#: name → (kl_weight, epochs)
CONDITIONS = {
    "vae": ({"kind": "constant", "beta": 1.0}, 15),
    "control_vae": ({"kind": "control", "set_point": 15.0}, 15),
    "cap_suite": (cap(30.0, 15.0, 200), 15),
    "cap_gamma_1": (cap(1.0, 15.0, 200), 15),
    "cap_gamma_3": (cap(3.0, 15.0, 200), 15),
    "cap_gamma_10": (cap(10.0, 15.0, 200), 15),
    "cap_gamma_1000": (cap(1000.0, 15.0, 200), 15),
    "cap_ramp_run": (cap(30.0, 15.0, 15 * STEPS_PER_EPOCH), 15),
    "cap_cmax_5": (cap(30.0, 5.0, 200), 15),
    "cap_100ep": (cap(30.0, 15.0, 200), 100),
    "cap_100ep_ramp_run": (cap(30.0, 15.0, 100 * STEPS_PER_EPOCH), 100),
    "cap_gamma_1_100ep": (cap(1.0, 15.0, 200), 100),
    "vae_100ep": ({"kind": "constant", "beta": 1.0}, 100),
    "control_vae_100ep": ({"kind": "control", "set_point": 15.0}, 100),
}


def kl_parts(mu: np.ndarray, log_var: np.ndarray) -> dict:
    """The three parts of E_x KL(N(μ, σ²) || N(0, 1)) (module docstring), summed over dims, nats."""
    var = np.exp(log_var)
    return {"offset": float(0.5 * np.sum(mu.mean(axis=0) ** 2)),
            "spread": float(0.5 * np.sum(mu.var(axis=0))),
            "sharpness": float(0.5 * np.sum(np.mean(var - log_var - 1.0, axis=0))),
            "mean_sigma2": float(var.mean())}


def run_one(name: str, seed: int) -> dict:
    import keras
    import tensorflow as tf
    from sklearn.linear_model import LogisticRegression

    from vae_tf.data import load_dataset
    from vae_tf.metrics.collapse import active_units, mutual_information
    from vae_tf.models import build_vae

    kl_weight, epochs = CONDITIONS[name]
    data = load_dataset("digits")
    keras.utils.set_random_seed(seed)
    model = build_vae(data.data_shape, latent={"family": "gaussian", "latent_dim": 16},
                      network={"kind": "mlp", "hidden": [256, 128]}, likelihood={"name": "bernoulli"},
                      objective={"kl_weight": kl_weight}, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.time()
    history = model.fit(data.pipeline("train", 64, seed=seed), epochs=epochs, verbose=0).history
    seconds = time.time() - start
    test = model.evaluate(data.pipeline("test", 256), return_dict=True, verbose=0)

    def posterior(x):
        params = np.asarray(model.posterior_params(tf.constant(x)), dtype=np.float64)
        return params[:, :16], params[:, 16:]

    mu, log_var = posterior(data.x_test)
    mu_train, log_var_train = posterior(data.x_train)
    mi = mutual_information(mu, log_var, seed=seed)
    probe = LogisticRegression(max_iter=2000).fit(mu_train, data.y_train)
    return {
        "condition": name, "seed": seed, "kl_weight": kl_weight, "epochs": epochs, "train_seconds": round(seconds, 1),
        "test_elbo": float(test["elbo"]), "test_reconstruction": float(test["reconstruction"]),
        "test_kl": float(test["kl"]), "mi_test": mi, "mi_train": mutual_information(mu_train, log_var_train, seed=seed),
        "marginal_kl": float(test["kl"]) - mi, **kl_parts(mu, log_var),
        "active_units": int(active_units(mu)[0]), "probe_accuracy": float(probe.score(mu, data.y_test)),
        "history": {k: [float(v) for v in history[k]] for k in ("kl", "elbo", "beta", "capacity") if k in history},
    }


def _provenance() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"date": datetime.date.today().isoformat(), "commit": commit,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def _ms(values, fmt="{:.2f}") -> str:
    return mean_std(values, fmt)


def report(out: Path) -> str:
    runs = runs_by_condition(out)
    lines = ["| condition | kl_weight | epochs | seeds | test ELBO | KL | offset | spread | sharpness | MI (test) "
             "| MI (train) | KL − MI | AU | probe acc. |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in (c for c in CONDITIONS if c in runs):
        rs = runs[c]
        w = {k: v for k, v in rs[0]["kl_weight"].items() if k != "kind"}
        lines.append(
            f"| {c} | {rs[0]['kl_weight']['kind']} {w} | {rs[0]['epochs']} | {len(rs)} | "
            + " | ".join(_ms([r[k] for r in rs], fmt) for k, fmt in (
                ("test_elbo", "{:.1f}"), ("test_kl", "{:.1f}"), ("offset", "{:.1f}"), ("spread", "{:.1f}"),
                ("sharpness", "{:.1f}"), ("mi_test", "{:.2f}"), ("mi_train", "{:.2f}"), ("marginal_kl", "{:.1f}"),
                ("active_units", "{:.1f}"), ("probe_accuracy", "{:.3f}"))) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = study_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--conditions", default="all", help=f"comma-separated names, or 'all': {', '.join(CONDITIONS)}")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="one JSON per run (default: the committed runs, so only runs missing there train: "
                             "give another folder to reproduce them)")
    parser.add_argument("--report", action="store_true", help="print the table from --out and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
        return 0
    for name, seed, path in pending_runs(parser, args.conditions, CONDITIONS, args.seeds, args.out):
        result = run_one(name, seed)
        write_record(path, {**result, **_provenance()})
        print(f"{name} seed {seed}: KL {result['test_kl']:.2f}, MI {result['mi_test']:.2f}, "
              f"ELBO {result['test_elbo']:.2f}, {result['train_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_study(main))
