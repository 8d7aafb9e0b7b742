"""Entry points of the MLflow project (see MLproject). MLflow passes parameters unvalidated and
creates a run (MLFLOW_RUN_ID) for each entry: the training job trains into it, an evaluation
logs into it, `embed` logs its output there, and a suite (`compare`) runs its parent and
children in the suite's own experiment and leaves its report in it. This script checks every
parameter and turns mistakes into one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _args(argv):
    parser = argparse.ArgumentParser(prog="mlflow_project/entry.py")
    sub = parser.add_subparsers(dest="entry", required=True)
    train = sub.add_parser("train")
    train.add_argument("--config", default="default")
    train.add_argument("--objective", default="")
    train.add_argument("--options", default="{}")
    train.add_argument("--beta", default="")
    train.add_argument("--latent-dim", default="")
    train.add_argument("--epochs", default="")
    train.add_argument("--seed", default="0")
    train.add_argument("--overrides", default="")
    evaluate = sub.add_parser("evaluate")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--iw-k", default="500")
    evaluate.add_argument("--disentanglement", default="quick")
    evaluate.add_argument("--output", default="")
    embed = sub.add_parser("embed")
    for option, default in (("--model", ""), ("--server", ""), ("--model-name", ""), ("--data", "digits"),
                            ("--split", ""), ("--output", "embeddings.parquet")):
        embed.add_argument(option, default=default)
    compare = sub.add_parser("compare")
    compare.add_argument("--suite", default="collapse")
    compare.add_argument("--size", default="quick")
    return parser.parse_args(argv)


def split_overrides(text: str) -> list[str]:
    """The ``overrides`` parameter as ``key=value`` items: split at spaces, except inside ``{}``,
    ``[]`` or a quoted value, so that ``objective.kl_weight={kind: control, set_point: 10}`` is one
    item (a plain ``split()`` cut it at each space, and each piece was refused). A quote opens only
    where a YAML value starts (after ``=``, ``{``, ``[``, ``,`` or ``:``), so the apostrophe of
    ``bob's`` is a character; an unclosed quote or bracket is an error, not a merge of the rest."""
    from vae_tf.errors import ConfigError

    items, current, depth, quote, last = [], [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"" and last in ("=", "{", "[", ",", ":"):
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"parameter overrides has an unmatched {ch!r}: {text!r}")
        elif ch.isspace() and depth == 0:
            if current:
                items.append("".join(current))
                current = []
            last = ""
            continue
        current.append(ch)
        if not ch.isspace():
            last = ch
    if quote or depth:
        raise ConfigError(f"parameter overrides has an unclosed {quote or '{ or ['}: {text!r}; close it, or give the "
                          "value in the dotted form (key.sub=value)")
    if current:
        items.append("".join(current))
    return items


def _int(name: str, text: str, minimum: int) -> int:
    from vae_tf.errors import ConfigError

    try:
        value = int(float(text)) if float(text).is_integer() else None
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(f"parameter {name} must be an integer >= {minimum}, got {text!r}")
    return value


def _float(name: str, text: str) -> float:
    from vae_tf.errors import ConfigError

    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"parameter {name} must be a number, got {text!r}") from None


def train(args) -> int:
    """The parameters that need no TensorFlow (numbers, the options' YAML) are checked before the
    package is imported, so that such a mistake is reported at once, not after seconds of imports."""
    import yaml

    from vae_tf.errors import ConfigError

    overrides = []
    # "" (the default): the config's own value, as for beta (the numbers 8 and 40 overrode it); the
    # seed is always set (MLproject: MLflow logs it under the config's own key, `seed`)
    numbers = [f"{key}={_int(name, text, low)}" for key, name, text, low in (
        ("model.latent.latent_dim", "latent_dim", args.latent_dim, 1), ("train.epochs", "epochs", args.epochs, 1),
        ("seed", "seed", args.seed, 0)) if text.strip()]
    if args.objective:  # a named preset (the slot form goes through `overrides`)
        try:
            options = yaml.safe_load(args.options) or {}
        except yaml.YAMLError:
            options = None
        if not isinstance(options, dict):
            raise ConfigError(f"parameter options must be a YAML mapping like \"{{kl_set_point: 10}}\", got "
                              f"{args.options!r}")
        overrides += [f"objective.name={args.objective}",
                      "objective.options=" + yaml.safe_dump(options, default_flow_style=True).strip()]
        if args.beta:
            overrides.append(f"objective.beta={_float('beta', args.beta)}")
    elif args.options.strip() not in ("", "{}"):
        raise ConfigError("parameter options needs parameter objective (a preset name); compose slots with "
                          "overrides=\"objective.kl_weight={kind: control, set_point: 10}\"")
    elif args.beta:
        overrides.append(f"objective.kl_weight.beta={_float('beta', args.beta)}")

    from training.config import DEFAULT_CONFIG, load_config
    from training.train import run_training
    from vae_tf.remedies import PRESETS

    if args.objective and args.objective not in PRESETS:
        raise ConfigError(f"parameter objective must be one of {', '.join(PRESETS)} (a preset; compose slots "
                          f"with overrides=\"objective.kl_weight={{kind: control, set_point: 10}} ...\"), got "
                          f"{args.objective!r}")
    config_path = DEFAULT_CONFIG if args.config == "default" else Path(args.config)
    extra = split_overrides(args.overrides)
    if any(item.startswith("seed=") for item in extra):  # MLflow logged the seed parameter already: refused mid-run
        raise ConfigError("give the seed as the project parameter (-P seed=N), not in overrides: MLflow logs it as the "
                          "run's param seed before training starts")
    overrides += [*numbers, *extra]
    config = load_config(config_path, overrides)
    store = config.mlflow.tracking_uri
    if os.environ.get("MLFLOW_RUN_ID") and store and store != os.environ.get("MLFLOW_TRACKING_URI"):
        # the run `mlflow run` made is in its own store: another one has no such run (a traceback)
        raise ConfigError(f"mlflow.tracking_uri={store} names another store than the one `mlflow run` made this "
                          "run in; drop it, and give the store to mlflow run itself (MLFLOW_TRACKING_URI)")
    result = run_training(config)
    print(f"run id: {result.run_id}\nexport: {result.export_dir.resolve()}")
    return 0


def embed(args) -> int:
    """Batch embeddings through ``vae-tf embed`` (a local export or a server), logged as an artifact."""
    import mlflow

    from vae_tf_cli import main as cli
    from vae_tf.errors import ConfigError

    if bool(args.model) == bool(args.server):
        raise ConfigError("give exactly one of the parameters model (an export directory) or server (a URL)")
    argv = ["embed", "--data", args.data, "--output", args.output] + (["--split", args.split] if args.split else [])
    argv += ["--model", args.model] if args.model else ["--server", args.server]
    if args.model_name:
        argv += ["--model-name", args.model_name]
    code = cli(argv)
    if code == 0 and os.environ.get("MLFLOW_RUN_ID"):
        with mlflow.start_run():
            mlflow.log_artifact(args.output, artifact_path="embeddings")
    return code


def compare(args) -> int:
    """A suite, as `vae-tf compare` runs it: its parent and children are runs of their own in the
    suite's experiment (what resuming and reusing finished children look up). MLflow's variable
    naming the project's run is taken out of the environment first: MLflow's ``start_run`` would
    put every child into that run. The project's run gets the report and the suite's name."""
    from mlflow import MlflowClient

    from training.compare import load_suite, run_suite

    project_run = os.environ.pop("MLFLOW_RUN_ID", None)
    report = run_suite(args.suite, size=args.size)
    if project_run and report is not None:
        client = MlflowClient()
        client.set_tag(project_run, "vae_tf.suite", load_suite(args.suite).name)
        client.set_tag(project_run, "vae_tf.suite_size", args.size)
        client.log_artifacts(project_run, str(report.parent), "report")
    return 0


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """A parameter that takes one of ``choices``, checked here so that the message names the
    parameter (the CLI's own message names its flag, --disentanglement)."""
    from vae_tf.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"parameter {name} must be one of {', '.join(choices)}, got {value!r}")


def main(argv=None) -> int:
    from vae_tf.errors import VaeTfError
    from vae_tf_cli import quiet_libraries

    quiet_libraries()  # TensorFlow's start-up lines filtered by level, as in a `vae-tf` process
    args = _args(argv)
    try:
        if args.entry == "train":
            return train(args)
        if args.entry == "evaluate":
            from training.evaluate import DISENTANGLEMENT_SIZES, evaluate  # no TensorFlow yet
            from vae_tf.data.splits import SPLIT_NAMES

            _choice("split", args.split, SPLIT_NAMES)
            _choice("disentanglement", args.disentanglement, ("off", *DISENTANGLEMENT_SIZES))

            # Into the run `mlflow run` made (its experiment, not the model config's).
            evaluate(args.model, split=args.split, iw_k=_int("iw_k", args.iw_k, 0),
                     disentanglement=args.disentanglement, output=args.output or None,
                     into_run=os.environ.get("MLFLOW_RUN_ID") or None)
            return 0
        if args.entry == "embed":
            return embed(args)
        return compare(args)
    except VaeTfError as err:
        print(f"error: {err}", file=sys.stderr)
        _tag_the_project_run(f"{type(err).__name__}: {err}")
        return 2


def _tag_the_project_run(message: str) -> None:
    """The run `mlflow run` made says why it failed (tag ``error``, as a training run that fails
    says), not only the terminal: a mistake found before training left a FAILED run with no reason."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        from mlflow import MlflowClient

        MlflowClient().set_tag(run_id, "error", message[:5000])
    except Exception:  # the store itself may be the problem: the message is on stderr already
        pass


if __name__ == "__main__":
    from vae_tf_cli import run_job

    sys.exit(run_job(main))
