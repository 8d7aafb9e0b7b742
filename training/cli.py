"""The training commands of ``vae-tf``: ``train``, ``sync-mlflow``, ``evaluate`` and ``compare``.

    vae-tf train [--config FILE] [--set key=value ...] [--resume [RUN]]
    vae-tf sync-mlflow RUN_DIR [--tracking-uri URI]
    vae-tf evaluate MODEL [--split test] [--disentanglement quick] [--fd] ...
    vae-tf compare --suite NAME [--quick] [--seeds 0,1] [--runs a,b]

The ``vae-tf`` dispatcher (:mod:`vae_tf_cli`) registers them (:func:`add_parsers`) and runs the
functions of :data:`COMMANDS`; the serving commands are :mod:`serving.cli`'s.
"""

from __future__ import annotations

import argparse
import logging

from vae_tf_cli.argtypes import non_negative_int, positive_int

def _iw_samples(text: str) -> int:
    from training.evaluate import iw_k_problem  # light: no TensorFlow

    value = non_negative_int(text)
    problem = iw_k_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _examples(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (active units are a variance over examples), got {text}")
    return value


def add_parsers(sub) -> None:
    """Register ``train``, ``sync-mlflow``, ``evaluate`` and ``compare`` on the ``vae-tf`` parser."""
    train = sub.add_parser("train", help="train a model with MLflow tracking and export a SavedModel",
                           description="Train, evaluate, export and track one model.")
    train.add_argument("--config", "-c", help="YAML config file (default: the embedded digits config)")
    train.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set train.epochs=5 (repeatable)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("--strategy", choices=["none", "mirrored", "multi_worker"], default=None,
                       help="tf.distribute strategy (same as --set train.strategy=...): mirrored over local GPUs "
                            "(or train.cpu_replicas CPUs), multi_worker from TF_CONFIG")
    train.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                       help="continue an interrupted run from its last checkpoint, in the same MLflow run: the "
                            "latest unfinished run of the config's model in train.run_dir, or RUN (its run id). "
                            "The run's own config is used; --set may change train.epochs, learning_rate, ...")

    sync = sub.add_parser("sync-mlflow", help="send a run's buffered MLflow logging (kept while MLflow was unreachable)",
                          description="Replay RUN_DIR/mlflow_journal.jsonl, the logging a training run buffered while "
                                      "MLflow was unreachable, into the run's tracking URI (or --tracking-uri).")
    sync.add_argument("run_dir", help="the run's directory, e.g. runs/<run id> or runs/offline-<hex>")
    sync.add_argument("--tracking-uri", default=None, help="send to this tracking URI instead of the run's own")

    evaluate = sub.add_parser(
        "evaluate", help="diagnose a trained model (collapse, likelihood, disentanglement, downstream)",
        description="Compute every diagnostic that applies to a trained model on its data; write a JSON "
                    "report and log metrics, figures and the report to MLflow.")
    evaluate.add_argument("model", help="export directory (models/NAME[/VERSION]), models:/NAME/VERSION, "
                                        "models:/NAME@ALIAS or runs:/RUN_ID")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"],
                          help="the split of the model's data to evaluate on (default: test)")
    evaluate.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override the data.*, mlflow.* or seed of the training config stored with "
                               "the model (the model itself is as exported)")
    evaluate.add_argument("--max-examples", type=_examples, default=None,
                          help="evaluate a random subset of this many examples (at least 2; default: the whole split)")
    evaluate.add_argument("--iw-k", type=_iw_samples, default=500,
                          help="importance samples for IW-NLL: up to 100, or a multiple of 100 (default 500; 0 skips it)")
    evaluate.add_argument("--disentanglement", choices=["off", "quick", "full"], default="quick",
                          help="factor metrics on data with known factors: quick (1000/500 points; the default), full "
                               "(disentanglement_lib's 10000/5000, tens of minutes on a CPU) or off")
    evaluate.add_argument("--allow-unnormalised-nll", action="store_true",
                          help="compute IW-NLL even where the likelihood is not a normalised density on the data "
                               "(a Bernoulli on non-binary pixels): a number, not a negative log-likelihood")
    evaluate.add_argument("--fd", action="store_true",
                          help="also the Fréchet and kernel classifier distances of prior samples (trains a "
                               "cached classifier once)")
    evaluate.add_argument("--output", "-o", help="JSON report path (default evaluation/NAME-vVERSION-SPLIT.json, "
                                                 "NAME-registered-vVERSION-SPLIT.json for models:/NAME/VERSION, "
                                                 "...-SPLIT-maxN.json with --max-examples N)")
    evaluate.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")

    compare = sub.add_parser(
        "compare", help="run an experiment suite (configs x seeds) and write a comparison report",
        description="Run a suite from training/suites/ as MLflow parent/child runs, evaluate every child and "
                    "write a Markdown report with figures (also logged to the parent run). Resumable.")
    compare.add_argument("--suite", required=True, help="suite name (training/suites/NAME.yaml) or a suite YAML path")
    compare.add_argument("--quick", action="store_true", help="the suite's quick size (minutes on 2 CPU cores)")
    compare.add_argument("--size", default=None, help="a size the suite defines (default: full, or quick with --quick)")
    compare.add_argument("--seeds", default=None, help="comma-separated seeds (default: the size's seeds)")
    compare.add_argument("--runs", default=None, help="comma-separated run names (default: all)")
    compare.add_argument("--output-dir", default=None, help="report directory (default reports/SUITE-SIZE)")
    compare.add_argument("--jobs", type=positive_int, default=1,
                         help="children trained at a time, each in its own process with CPUs/jobs threads (default 1)")


def cmd_train(args) -> int:
    import yaml

    from training.config import DEFAULT_CONFIG, load_config

    if args.strategy:
        args.overrides.append(f"train.strategy={args.strategy}")
    # With --resume the run's own config is used; --config (and --set train.run_dir=) only says
    # where its runs are and, without a RUN, --config (or --set name=) which model's latest run to take.
    locators = ("train.run_dir=",) + (("name=",) if args.resume is True else ())
    if args.resume:
        config = load_config(args.config or DEFAULT_CONFIG, [o for o in args.overrides if o.startswith(locators)])
    else:
        config = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    if args.print_config:
        if args.resume:  # the config the resumed run continues with: its own, with the --set it allows
            from training.resume import find_run, resumed_config

            _, record = find_run(config.train.run_dir, args.resume if isinstance(args.resume, str) else None,
                                 None if isinstance(args.resume, str) else config.name, config.mlflow.tracking_uri)
            config = resumed_config(record, [o for o in args.overrides if not o.startswith(locators)])
        from vae_tf.models import model_spec_with_defaults

        shown = config.to_dict()
        shown["model"] = {**shown["model"], **model_spec_with_defaults(config.model.latent, config.model.likelihood,
                                                                         config.model.network)}
        print(yaml.safe_dump(shown, sort_keys=False), end="")
        return 0

    if not args.resume and not config.mlflow.tracking_uri and config.train.strategy != "multi_worker":
        # the store the run will open, said before TensorFlow and MLflow load (~5 s), as a config's is
        # (a cluster's workers other than the chief open no store)
        from training.config import env_tracking_uri

        env_tracking_uri()

    from training.tracking import ui_command
    from training.train import run_training

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # mlflow was imported before (tests, notebooks)

    overrides = tuple(o for o in args.overrides if not o.startswith(locators))
    result = run_training(config, resume=args.resume, overrides=overrides)
    if result.run_id is None:  # a non-chief worker of a multi_worker cluster
        losses = result.history.get("loss", [])
        print(f"worker done: {len(losses)} epochs, final loss {losses[-1] if losses else float('nan'):.6f}; "
              "the chief logged the run and exported the model")
        return 0
    metrics = ", ".join(f"{k}={v:.3f}" for k, v in result.test_metrics.items()
                        if k.endswith(("elbo", "kl", "active_kl_dims")))
    print()
    print(f"run id:        {result.run_id}")
    print(f"metrics:       {metrics}")
    print(f"export:        {result.export_dir.resolve()}")
    if result.registered_version:
        name = result.name or config.name
        print(f"model version: {name} v{result.registered_version} (models:/{name}/{result.registered_version}; "
              f"logged model {result.model_uri})")
    print(f"checkpoints:   {result.checkpoint_dir.resolve()}")
    print(f"MLflow UI:     {ui_command(result.tracking_uri)}")
    return 0


def cmd_sync_mlflow(args) -> int:
    from training.tracking import sync_run

    sent, uri = sync_run(args.run_dir, tracking_uri=args.tracking_uri)
    print(f"sent {sent} buffered logging calls to {uri}")
    return 0


def cmd_evaluate(args) -> int:
    from training.evaluate import evaluate

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    evaluate(args.model, split=args.split, overrides=args.overrides, max_examples=args.max_examples,
             iw_k=args.iw_k, disentanglement=args.disentanglement, fd=args.fd, output=args.output,
             log_to_mlflow=not args.no_mlflow, allow_unnormalised_nll=args.allow_unnormalised_nll)
    return 0


def cmd_compare(args) -> int:
    from training.compare import run_suite
    from vae_tf.errors import ConfigError

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if args.quick and args.size not in (None, "quick"):
        raise ConfigError(f"--quick is --size quick; drop it or --size {args.size}")
    size = args.size or ("quick" if args.quick else "full")
    try:
        seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if seeds is not None and (not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"--seeds must name at least one seed, each once and >= 0, got {args.seeds!r}")
    runs = None if args.runs is None else [r.strip() for r in args.runs.split(",") if r.strip()]
    if runs is not None and (not runs or len(set(runs)) != len(runs)):
        raise ConfigError(f"--runs must name at least one run, each once, got {args.runs!r}")
    run_suite(args.suite, size=size, seeds=seeds, only=runs, output_dir=args.output_dir, jobs=args.jobs)
    return 0


#: The training commands: name -> function(args) -> exit code.
COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare, "sync-mlflow": cmd_sync_mlflow}
