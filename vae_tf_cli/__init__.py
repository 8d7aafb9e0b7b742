"""The ``vae-tf`` command line: one dispatcher over the training commands (:mod:`training.cli`) and
the serving commands (:mod:`serving.cli`), so neither application package imports the other's CLI.

    vae-tf train [--config FILE] [--set key=value ...] [--resume [RUN]]
    vae-tf sync-mlflow RUN_DIR [--tracking-uri URI]
    vae-tf evaluate MODEL [--split test] [--disentanglement quick] [--fd] ...
    vae-tf compare --suite NAME [--quick] [--seeds 0,1] [--runs a,b]
    vae-tf serve [--model-base-path /models] [--model-name model] [--port 8500] [--rest-api-port 8501] ...
    vae-tf embed --data digits --split test (--model models/vae | --server URL) -o embeddings.npz
    vae-tf probe embeddings.npz [--test other.npz]

User mistakes (bad config, bad data, missing files) print ``error: <one line>`` and exit 2;
anything else is a bug and keeps its traceback. ``python -m vae_tf_cli`` is the same command.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable


def quiet_libraries() -> None:
    """The start-up chatter of TensorFlow and MLflow kept to warnings and errors (below), in a
    process that runs vae-tf jobs (the `vae-tf` program, the MLflow project's entry script)."""
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) and MLflow's INFO lines (database
    # migrations, experiment creation) drown the progress bar and the one-line errors. TensorFlow
    # 2.21 ignores the level for its first messages; quiet_tensorflow_start applies it to them.
    from vae_tf_cli.tensorflow_start import quiet_tensorflow_start

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_tensorflow_start()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.getLogger("alembic").setLevel(logging.WARNING)


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line: argparse printed its whole usage block (22
    lines for ``vae-tf serve``) above the line that says what is wrong. ``--help`` still shows it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The ``vae-tf`` parser and the command table (name -> function(args) -> exit code)."""
    import serving.cli
    import training.cli

    parser = OneLineParser(prog="vae-tf", description="Variational autoencoders that do not collapse silently.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    training.cli.add_parsers(sub)
    serving.cli.add_parsers(sub)
    return parser, {**training.cli.COMMANDS, **serving.cli.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    from vae_tf.errors import VaeTfError

    try:
        return commands[args.command](args)
    except VaeTfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def without_final_collections(code: int) -> int:
    """``code``, after moving every live object out of the garbage collector's reach: for a process
    that is about to exit with it (:func:`run_job`, and ``vae-tf serve`` as it exits).

    After a `vae-tf train`, Python's shutdown spent ~2 s (10 % of a short run) traversing the
    TensorFlow and Keras object graphs the run left behind, only to free memory the operating
    system takes back anyway. ``gc.freeze()`` skips that; the exit itself is unchanged: ``atexit``
    handlers (MLflow's flushes, logging, temporary folders) still run and reference-counted objects
    are still finalised. Never in a process that goes on (its cyclic garbage would stay)."""
    gc.freeze()
    return code


#: The garbage collector's thresholds in a process that runs one job and ends (Python's default:
#: 700, 10, 10). See :func:`collect_less_often`.
JOB_GC_THRESHOLDS = (20_000, 10, 10)

#: Commands that run until they are stopped: they keep Python's default thresholds.
SERVER_COMMANDS = frozenset({"serve"})


def collect_less_often() -> None:
    """Run the cyclic garbage collector after every 20,000 net allocations instead of 700, in a
    process that runs one job and ends (:func:`run_job`; called first, before TensorFlow is
    imported).

    Importing TensorFlow and Keras and tracing a model's functions grow the heap to ~10^6 objects
    that all live until the end; with the default thresholds a `vae-tf train` of the default config
    ran 10 full collections walking them, 1.4 s of its ~13 s (docs/performance.md). With these, the
    same run made none, for ~1 MB more peak memory: cycles are still collected, in fewer and larger
    young collections, each a few milliseconds. ``vae-tf serve`` keeps the default (short pauses
    between requests) and freezes what exists after its start-up instead."""
    gc.set_threshold(*JOB_GC_THRESHOLDS)


#: Optional libraries that ``import keras`` loads for features vae-tf never uses, by the Keras
#: package that imports them. Each of those imports is written for a Keras without the library
#: (``try: import ...`` / ``except ImportError``). Costs on 2 CPUs (docs/performance.md, start-up):
#: scikit-learn (and much of SciPy) ~0.65 s for the scikit-learn wrappers (``SKLearnClassifier``
#: and friends); matplotlib's pyplot ~0.26 s for ``keras.visualization``'s image galleries; pandas
#: (and pyarrow) ~0.24 s so that ``fit`` would take DataFrames, which vae-tf never hands it.
KERAS_OPTIONAL_IMPORTS = {"sklearn": "keras.src.wrappers", "matplotlib": "keras.src.visualization",
                          "pandas": "keras.src.trainers.data_adapters"}


class _KeepOptionalLibrariesOutOfKeras:
    """An import hook (:data:`sys.meta_path`) that tells the Keras modules of
    :data:`KERAS_OPTIONAL_IMPORTS` that their optional library is not installed; every other
    import of those libraries goes on as usual: vae-tf's own metrics import scikit-learn when they
    need it (downstream probes, k-means, disentanglement), its figures matplotlib, MLflow pandas."""

    def find_spec(self, name, path=None, target=None):
        importer_prefix = KERAS_OPTIONAL_IMPORTS.get(name)
        if importer_prefix is None:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith("importlib"):
            frame = frame.f_back  # the import machinery's own frames, up to the importing module
        if frame is not None and frame.f_globals.get("__name__", "").startswith(importer_prefix):
            raise ModuleNotFoundError(f"No module named {name!r} (for {importer_prefix}, in vae-tf)", name=name)
        return None


def keep_optional_libraries_out_of_keras() -> None:
    """In a ``vae-tf`` process, before TensorFlow or Keras is imported: the Keras modules of
    :data:`KERAS_OPTIONAL_IMPORTS` find none of their optional libraries
    (:class:`_KeepOptionalLibrariesOutOfKeras`), so ``import keras`` loads none of them. A library
    imported already stays as it is, for Keras too."""
    if not any(isinstance(finder, _KeepOptionalLibrariesOutOfKeras) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KeepOptionalLibrariesOutOfKeras())


def prepare_job_process() -> None:
    """What a process that runs one job and ends does first, before TensorFlow is imported: the
    collector's thresholds raised (:func:`collect_less_often`), the optional libraries Keras
    does not need here kept out of ``import keras`` (:func:`keep_optional_libraries_out_of_keras`),
    and MLflow's artefact progress bars off unless the user set them (registering a run's model
    copies its local SavedModel, and a "Downloading artifacts: 100%|..." bar printed under every
    run's summary)."""
    collect_less_often()
    keep_optional_libraries_out_of_keras()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def run_job(job: Callable[..., int], *args) -> int:
    """``job(*args)``'s exit code, run as the one job of a process that then exits: prepared first
    (:func:`prepare_job_process`), no final collections after (:func:`without_final_collections`).
    The ``vae-tf`` program (but ``serve``), a ``vae-tf compare --jobs`` child and the MLflow
    project's entry script all run this way."""
    prepare_job_process()
    return without_final_collections(job(*args))


def run(argv: list[str] | None = None) -> int:
    """The ``vae-tf`` program (the console script and ``python -m vae_tf_cli``): :func:`main` as a
    :func:`run_job`, or for a server just without the final collections. :func:`main` is what
    in-process callers use; it leaves the collector alone."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SERVER_COMMANDS:
        keep_optional_libraries_out_of_keras()
        return without_final_collections(main(argv))
    return run_job(main, argv)


__all__ = ["JOB_GC_THRESHOLDS", "KERAS_OPTIONAL_IMPORTS", "OneLineParser", "SERVER_COMMANDS", "build_parser", "collect_less_often", "keep_optional_libraries_out_of_keras",
           "main", "prepare_job_process", "quiet_libraries", "run", "run_job", "without_final_collections"]
