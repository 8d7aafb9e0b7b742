"""The serving commands of ``vae-tf``: ``serve``, ``embed`` and ``probe``.

The ``vae-tf`` dispatcher (:mod:`vae_tf_cli`) registers them (:func:`add_parsers`) and runs the
functions of :data:`COMMANDS`. User mistakes raise :class:`vae_tf.errors.VaeTfError`
subclasses, which the CLI prints as one ``error: ...`` line (exit 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from serving.connections import DEFAULT_KEEP_ALIVE_SECONDS, DEFAULT_MAX_CONNECTIONS
from serving.text import DEFAULT_LONG_TEXT, DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, LONG_TEXT_MODES
from vae_tf_cli.argtypes import non_negative_float, port, positive_float, positive_int

#: The model name TF Serving's binary serves ``--model_base_path`` under without ``--model_name``.
TF_SERVING_MODEL_NAME = "default"


def add_parsers(sub) -> None:
    """Add ``serve``, ``embed`` and ``probe`` to the ``vae-tf`` sub-parsers."""
    serve = sub.add_parser(
        "serve", help="serve exported models with TensorFlow Serving's REST and gRPC APIs",
        description="Serve MODEL_BASE_PATH/MODEL_NAME/<version>/ like the tensorflow/serving image: REST on 8501, "
                    "gRPC on 8500, the highest version (plus labelled ones), hot-swapped when a new version appears. "
                    "Binds 127.0.0.1 unless --host is given. Details: docs/serving.md.")
    serve.add_argument("--model", metavar="DIR",
                       help="a model directory (models/NAME); shorthand for --model-base-path models --model-name NAME")
    serve.add_argument("--model-base-path", help="parent of the model directory (default: $MODEL_BASE_PATH or /models)")
    serve.add_argument("--model-name", "--model_name", dest="model_name",
                       help="model directory name, also the name in URLs (default: $MODEL_NAME or model)")
    serve.add_argument("--model_base_path", dest="tf_model_base_path", metavar="DIR",
                       help="TF Serving's own flag: the model directory itself (numbered versions inside), served "
                            "as --model_name, or as `default` without it, as there (the tensorflow/serving image "
                            "passes $MODEL_BASE_PATH/$MODEL_NAME here)")
    serve.add_argument("--host", default=os.environ.get("VAE_TF_SERVE_HOST") or "127.0.0.1",
                       help="address to bind (default: $VAE_TF_SERVE_HOST or 127.0.0.1; the app image sets 0.0.0.0)")
    serve.add_argument("--port", type=port, default=8500, help="gRPC port (default 8500; 0: any free port)")
    serve.add_argument("--rest-api-port", "--rest_api_port", dest="rest_api_port", type=port, default=8501,
                       help="REST port (default 8501; 0: any free port)")
    serve.add_argument("--no-grpc", action="store_true", help="do not start the gRPC server")
    serve.add_argument("--no-rest", action="store_true", help="do not start the REST server")
    serve.add_argument("--labels-file", metavar="FILE",
                       help="YAML/JSON {labels: {stable: 1, canary: 2}} for /labels/NAME URLs (re-read on change)")
    serve.add_argument("--poll-seconds", "--file_system_poll_wait_seconds", dest="poll_seconds",
                       type=non_negative_float, default=1.0,
                       help="how often the base path is rescanned for new versions (default 1; 0: never)")
    serve.add_argument("--rest-max-body-bytes", type=positive_int, default=64 * 1024 * 1024,
                       help="largest accepted REST request body (default 64 MiB; larger: HTTP 413)")
    serve.add_argument("--grpc-max-message-bytes", type=positive_int, default=64 * 1024 * 1024,
                       help="largest gRPC message in either direction (default 64 MiB)")
    serve.add_argument("--rest-timeout-seconds", type=non_negative_float, default=30.0,
                       help="REST request deadline from arrival (default 30; then HTTP 504, or 408 if the body is "
                            "still incomplete; 0: no deadline, as TF Serving's --rest_api_timeout_in_ms 0)")
    serve.add_argument("--max-in-flight", type=positive_int, default=128,
                       help="requests each protocol admits at once, running or queued (default 128; beyond: REST "
                            "HTTP 429, gRPC RESOURCE_EXHAUSTED)")
    serve.add_argument("--keep-alive-seconds", type=positive_float, default=DEFAULT_KEEP_ALIVE_SECONDS,
                       help=f"close a connection idle this long since it opened or since its last answer (default "
                            f"{DEFAULT_KEEP_ALIVE_SECONDS:g}; REST keep-alive, gRPC idle connections)")
    serve.add_argument("--max-connections", type=positive_int, default=DEFAULT_MAX_CONNECTIONS,
                       help=f"connections each protocol holds at once (default {DEFAULT_MAX_CONNECTIONS}; beyond it "
                            "REST closes the longest-idle one, gRPC refuses the new one)")
    serve.add_argument("--follow-external-links", action="store_true",
                       help="load versions whose files are symbolic links to places outside the model base path "
                            "(default: refuse them)")
    serve.add_argument("--allow-non-finite", action="store_true",
                       help="pass NaN and Infinity in float inputs to the model, as TF Serving does (default: refuse "
                            "them with HTTP 400 / INVALID_ARGUMENT naming the input, position and value)")
    serve.add_argument("--long-text", choices=LONG_TEXT_MODES, default=DEFAULT_LONG_TEXT,
                       help="text models: a sentence longer than the model's max_length words is truncated to its "
                            "first max_length words, as the model does (default), or refused with HTTP 400 / "
                            "INVALID_ARGUMENT")
    serve.add_argument("--max-text-rows", type=positive_int, default=DEFAULT_MAX_ROWS,
                       help=f"text models: most sentences in one request, or rows of codes or seeds for decode and "
                            f"sample, which make one sentence each (default {DEFAULT_MAX_ROWS}; more: HTTP 400)")
    serve.add_argument("--max-text-bytes", type=positive_int, default=DEFAULT_MAX_BYTES,
                       help=f"text models: longest sentence in bytes (default {DEFAULT_MAX_BYTES}; longer: HTTP 400)")
    serve.add_argument("--enable-batching", "--enable_batching", dest="enable_batching", nargs="?", const=True,
                       default=False, type=_tf_bool, metavar="true|false",
                       help="merge concurrent small requests for one signature into one model call (TF Serving's "
                            "--enable_batching=true|false is taken too)")
    serve.add_argument("--max-batch-size", type=positive_int, default=32, help="rows per merged call (default 32)")
    serve.add_argument("--batch-timeout-ms", type=non_negative_float, default=1.0,
                       help="longest a request waits for others to join its batch (default 1 ms)")
    serve.add_argument("--grace-seconds", type=non_negative_float, default=5.0,
                       help="on SIGINT/SIGTERM, how long in-flight requests may take to finish (default 5)")
    # TF Serving's own flags, as its users will type them: what they mean there where we have
    # it, else a one-line answer saying what to do instead.
    serve.add_argument("--rest_api_timeout_in_ms", dest="rest_timeout_seconds", type=_milliseconds_as_seconds,
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    serve.add_argument("--rest_api_num_threads", dest="rest_threads", type=positive_int, default=None,
                       help="TF Serving's flag: REST worker threads (default: 4 per CPU, at most 32)")
    serve.add_argument("--grpc_max_threads", dest="grpc_threads", type=positive_int, default=None,
                       help="TF Serving's flag: gRPC worker threads")
    for flag, hint in TF_SERVING_FLAGS_NOT_TAKEN.items():
        serve.add_argument(flag, action=_NotTakenHere, hint=hint)

    embed = sub.add_parser(
        "embed", help="extract embeddings of a data set (local SavedModel or server) to .npz or Parquet",
        description="Encode a data set in chunks and write the `embedding` output (and labels) to .npz or "
                    ".parquet. Resumable: rerunning the same command skips finished chunks.")
    embed.add_argument("--data", "-d", default=None,
                       help="registered data set (digits, dsprites, mnist, text_synthetic, ...) or a .npz/.npy file or "
                            "image folder; with --runner beam also Parquet files (a path or glob ending in .parquet); "
                            "for a text model also a .txt/.txt.gz file (one sentence per line; with --runner beam "
                            "--data text --path GLOB for several) or a .parquet/.csv file with a column of sentences. "
                            "With --model, the data set the model was trained on (the default) is read as its training "
                            "run read it: its options (e.g. n_samples, image_size), seed, fractions and max_samples, "
                            "unless given here; with --server the default is digits")
    embed.add_argument("--column", help="Parquet/CSV input: the column of sentences (text models; default: text, "
                                        "sentence, sentences or x, else the only string column) or of rows (image "
                                        "models; default: x, images, x_train or imgs)")
    embed.add_argument("--label-column", help="Parquet/CSV input: a column of integer labels to keep (default: y, "
                                              "labels or label when present)")
    embed.add_argument("--no-labels", action="store_true",
                       help="write no label column, even where the input has labels (a label column of strings or "
                            "with nulls, or labels a downstream user must not see)")
    embed.add_argument("--keep-columns", metavar="COLS",
                       help="--runner beam, Parquet input: input columns to copy into the output beside each row's "
                            "embedding (comma-separated, e.g. id,date: a key to join on)")
    embed.add_argument("--path", help="file or folder for --data npz/npy/images")
    embed.add_argument("--split", default=None, choices=["train", "val", "test", "all"],
                       help="the split of a data set or array file to embed (default test); all: every row (a file's "
                            "in file order, a registered data set's splits one after another; what text, Parquet and "
                            "CSV inputs always get)")
    embed.add_argument("--seed", type=int, default=None,
                       help="split seed (default: the model's training seed for its own data set, else 0)")
    embed.add_argument("--val-fraction", type=float, default=None,
                       help="as data.val_fraction in training (default: the model's for its own data set, else 0.1)")
    embed.add_argument("--test-fraction", type=float, default=None,
                       help="as data.test_fraction in training (default: the model's for its own data set, else 0.1)")
    embed.add_argument("--max-samples", type=positive_int, default=None,
                       help="cap the data set size (default: the model's for its own data set, else none)")
    source = embed.add_mutually_exclusive_group()  # one is required: cmd_embed says so (and why it may be missing)
    source.add_argument("--model", "-m", help="export directory models/NAME[/VERSION] (runs locally)")
    source.add_argument("--server", help="http://HOST:8501 (REST) or grpc://HOST:8500 (gRPC)")
    embed.add_argument("--model-name", help="model name on the server (default: $MODEL_NAME or model)")
    embed.add_argument("--model-version", type=positive_int,
                       help="server version to use (default: the one served when the run starts, kept for the run)")
    embed.add_argument("--output", "-o",  # required; checked in cmd_embed, whose error can tell why it is missing
                       help="(required) output file, .npz or .parquet (--runner beam: a directory for Parquet files)")
    embed.add_argument("--outputs", default="embedding",
                       help="comma-separated encode outputs to keep (default embedding; e.g. embedding,z_mean)")
    embed.add_argument("--chunk-size", type=positive_int, default=4096, help="rows per chunk file (default 4096)")
    embed.add_argument("--batch-size", type=positive_int, default=256,
                       help="rows per model call / request (default 256)")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing output and discard old chunks")
    embed.add_argument("--runner", choices=["local", "beam"], default="local",
                       help="local: this process (default); beam: an Apache Beam pipeline (RunInference) writing a "
                            "directory of Parquet files, on the local runner or the one named after -- "
                            "(docs/serving.md)")
    embed.add_argument("--workers", type=positive_int, help="--runner beam on the local runner: worker processes")
    embed.add_argument("beam_args", nargs=argparse.REMAINDER, metavar="-- BEAM_OPTIONS",
                       help="with --runner beam: Beam pipeline options, e.g. -- --runner=DataflowRunner --project=P")

    probe = sub.add_parser(
        "probe", help="linear-probe accuracy of extracted embeddings (logistic regression)",
        description="Fit a logistic regression on embeddings written by `vae-tf embed` and report test accuracy.")
    probe.add_argument("embeddings", help=".npz or .parquet from vae-tf embed (with labels)")
    probe.add_argument("--test", help="a second file to test on (default: a stratified split of the first)")
    probe.add_argument("--test-fraction", type=float, default=0.2, help="test share when --test is absent (0.2)")
    probe.add_argument("--column", default="embedding", help="which column to probe (default embedding)")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--json", action="store_true", help="print the full result as JSON")


#: TensorFlow Serving flags (``model_servers/main.cc``) that ``vae-tf serve`` does not take, and
#: what to do instead.
TF_SERVING_FLAGS_NOT_TAKEN = {
    "--model_config_file": "it serves one model: give --model DIR (or --model_base_path), one server per model",
    "--model_config_file_poll_wait_seconds": "it serves one model: give --model DIR, one server per model",
    "--batching_parameters_file": "give --enable-batching with --max-batch-size and --batch-timeout-ms",
    "--monitoring_config_file": "it has no metrics endpoint",
    "--ssl_config_file": "it speaks no TLS: put a TLS-terminating proxy in front of it",
    "--use_alts_credentials": "it speaks no TLS or ALTS: put a proxy in front of it",
    "--tensorflow_intra_op_parallelism": "set TF_NUM_INTRAOP_THREADS in its environment",
    "--tensorflow_inter_op_parallelism": "set TF_NUM_INTEROP_THREADS in its environment",
    "--tensorflow_session_parallelism": "set TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS in its environment",
    "--rest_api_enable_cors_support": "it adds no CORS headers: put a proxy in front of it that does",
    "--grpc_channel_arguments": "its gRPC limits are --grpc-max-message-bytes, --max-connections and "
                                "--keep-alive-seconds",
    "--grpc_socket_path": "it listens on TCP only (--host, --port)",
    "--saved_model_tags": "it loads the `serve` tag set, the one vae-tf exports",
    "--platform_config_file": "it serves TensorFlow SavedModels exported by vae-tf only",
    "--enable_model_warmup": "it always runs each signature once after loading a version",
    "--num_request_iterations_for_warmup": "it runs each signature once, on one row, after loading a version",
    "--enable_grpc_healthcheck_service": "health checks read the model status (GET /v1/models/NAME, or gRPC "
                                         "GetModelStatus): look for a version AVAILABLE",
    "--max_num_load_retries": "a version that fails to load is tried again whenever any of its files changes",
    "--load_retry_interval_micros": "a version that fails to load is tried again whenever any of its files changes",
    "--num_load_threads": "it loads one version at a time",
    "--num_unload_threads": "it unloads one version at a time",
    "--flush_filesystem_caches": "it reads a version's files once, when it loads it",
    "--mixed_precision": "it runs the SavedModel as exported: export a bfloat16/float16 model instead "
                         "(train.precision)",
    "--prefer_tflite_model": "it serves SavedModels only",
    "--skip_initialize_tpu": "it runs on CPUs and GPUs, not TPUs",
    "--enable_profiler": "it has no profiler endpoint: profile with benchmarks/profile_step.py or TensorBoard",
    "--thread_pool_factory_config_file": "set TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS in its environment",
    "--per_process_gpu_memory_fraction": "set TF_FORCE_GPU_ALLOW_GROWTH=true in its environment",
    "--allow_version_labels_for_unavailable_models": "a label may name only a version it serves (--labels-file)",
    "--enable_signature_method_name_check": "it serves predict signatures and does not check method names",
    "--version": "it is vae-tf's server (pip show vae-tf gives its version)",
}


#: Values of those flags that ask for what ``vae-tf serve`` does anyway: accepted, so that a TF
#: Serving command line that spells out a default still runs (None: the flag without a value).
_ANY_BOOL = {None, "true", "false", "1", "0"}
TF_SERVING_VALUES_TAKEN = {"--enable_model_warmup": {None, "true", "1"}, "--saved_model_tags": {"serve"},
                           "--tensorflow_session_parallelism": {"0"}, "--tensorflow_intra_op_parallelism": {"0"},
                           "--tensorflow_inter_op_parallelism": {"0"}, "--rest_api_enable_cors_support": {"false", "0"},
                           "--num_request_iterations_for_warmup": {"1"},
                           "--enable_grpc_healthcheck_service": {"false", "0"}, "--num_load_threads": {"0", "1"},
                           "--num_unload_threads": {"0", "1"}, "--flush_filesystem_caches": _ANY_BOOL,
                           "--mixed_precision": {""}, "--prefer_tflite_model": {"false", "0"},
                           "--skip_initialize_tpu": _ANY_BOOL, "--enable_profiler": {"false", "0"},
                           "--allow_version_labels_for_unavailable_models": {"false", "0"},
                           "--enable_signature_method_name_check": {"false", "0"}}


class _NotTakenHere(argparse.Action):
    """A TF Serving flag ``vae-tf serve`` does not take: one line saying what to do instead
    (unless its value asks for what it does anyway: :data:`TF_SERVING_VALUES_TAKEN`)."""

    def __init__(self, option_strings, dest, hint: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        if (values.lower() if isinstance(values, str) else values) in TF_SERVING_VALUES_TAKEN.get(option_string, ()):
            return
        parser.error(f"{option_string} is a TensorFlow Serving flag that vae-tf serve does not take: {self.hint}")


def _tf_bool(text: str) -> bool:
    """A TF Serving boolean flag's value: true/false/1/0 (any case)."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return value in ("true", "1")


def _milliseconds_as_seconds(text: str) -> float:
    """TF Serving's ``--rest_api_timeout_in_ms`` (an integer; <= 0: no deadline) in seconds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer number of milliseconds, got {text!r}") from None
    return max(value, 0) / 1000.0


def cmd_serve(args) -> int:
    from pathlib import Path

    from serving.batching import BatchingOptions
    from serving.server import ServerConfig, serve
    from serving.text import TextLimits
    from vae_tf.errors import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow gives its logger a handler of its own when it is imported before the root logger
    # has one (it is, here): its records would print twice, once in each format.
    tf_logger = logging.getLogger("tensorflow")
    for handler in list(tf_logger.handlers):
        tf_logger.removeHandler(handler)
    config = ServerConfig()
    if args.tf_model_base_path:
        if args.model or args.model_base_path:
            raise ConfigError("--model_base_path (TF Serving's: the model directory itself) replaces --model and "
                              "--model-base-path (the directory that holds it); give one of them")
        # As TF Serving's binary: the directory is the model, named by --model_name or "default".
        config.model_dir, config.model_name = args.tf_model_base_path, args.model_name or TF_SERVING_MODEL_NAME
    if args.model:
        model_dir = Path(args.model)
        config.model_base_path, config.model_name = str(model_dir.parent), model_dir.name
    if args.model_base_path:
        config.model_base_path = args.model_base_path
    if args.model_name:
        config.model_name = args.model_name
    config.rest_threads, config.grpc_threads = args.rest_threads, args.grpc_threads
    config.host = args.host
    config.grpc_port = None if args.no_grpc else args.port
    config.rest_port = None if args.no_rest else args.rest_api_port
    config.labels_file = args.labels_file
    config.poll_seconds = args.poll_seconds
    config.rest_max_body_bytes = args.rest_max_body_bytes
    config.grpc_max_message_bytes = args.grpc_max_message_bytes
    config.rest_timeout_seconds = args.rest_timeout_seconds
    config.max_in_flight = args.max_in_flight
    config.keep_alive_seconds = args.keep_alive_seconds
    config.max_connections = args.max_connections
    config.follow_external_links = args.follow_external_links
    config.allow_non_finite = args.allow_non_finite
    config.text_limits = TextLimits(args.long_text, args.max_text_rows, args.max_text_bytes)
    config.grace_seconds = args.grace_seconds
    if args.enable_batching:
        config.batching = BatchingOptions(max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms)
    return serve(config, announce=lambda line: print(line, flush=True))


def cmd_embed(args) -> int:
    from serving.embed import (LocalEncoder, RemoteEncoder, extract_embeddings, load_split_source, load_text_source,
                               refuse_modality_mismatch, refuse_split_options, resolve_embed_data, split_summary,
                               truncation_summary)
    from serving.text_rows import input_kind
    from vae_tf.errors import ConfigError

    stray = list(args.beam_args or [])
    if stray and stray[0] != "--":
        # Words after the options that are no option's value: most often a glob the shell expanded
        # (--data rows/*.parquet), whose second file started the Beam options and took -o with it.
        raise ConfigError(f"unexpected argument(s) {' '.join(stray[:3])}{' ...' if len(stray) > 3 else ''}: quote a "
                          "glob so that the shell passes it whole (--data 'rows/*.parquet'), and put Beam options "
                          "after --")
    if not args.model and not args.server:
        raise ConfigError("give --model models/NAME[/VERSION] (a local export) or --server URL (a running vae-tf serve)")
    if not args.output:
        raise ConfigError("--output/-o is required: a .npz or .parquet file (--runner beam: a directory)")
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    if not outputs:
        raise ConfigError("--outputs is empty; name at least one encode output, e.g. embedding")
    if args.no_labels and args.label_column:
        raise ConfigError("--no-labels drops the labels that --label-column names; give one of them")
    folder = args.path or args.data
    if folder and Path(folder).expanduser().is_dir() and any(Path(folder).expanduser().glob("*.parquet")):
        # A folder of Parquet part files (what Spark, Beam and pandas write): its files, in name order.
        if args.runner != "beam":
            raise ConfigError(f"{folder} is a folder of Parquet files, which the Beam pipeline reads: add --runner "
                              f"beam (or give one of its files)")
        args.data, args.path = str(Path(folder) / "*.parquet"), None
    if args.runner == "beam":
        return _beam_embed().cmd_embed_beam(args, outputs)
    if args.workers is not None or args.beam_args:
        raise ConfigError("--workers and Beam options after -- go with --runner beam")
    if args.keep_columns:
        raise ConfigError("--keep-columns goes with Parquet input on --runner beam; in one process the output's "
                          "index is the row of the input to join on")
    if args.model:
        if args.model_name or args.model_version:
            raise ConfigError("--model-name/--model-version go with --server; with --model give models/NAME/VERSION")
        encoder = LocalEncoder(args.model)
    else:
        encoder = RemoteEncoder(args.server, args.model_name or os.environ.get("MODEL_NAME") or "model",
                                version=args.model_version)
    options = resolve_embed_data(args, encoder.version_dir if args.model else None)
    text_input = input_kind(args.path or args.data) is not None or args.data.lower() in ("text", "parquet", "csv")
    if encoder.text and text_input:
        refuse_split_options(args, "Text, Parquet and CSV input")
        source = load_text_source(args.path or args.data, column=args.column,
                                  label_column=False if args.no_labels else args.label_column)
    else:
        source = None
        if args.data.lower() == "parquet" or args.data.lower().endswith(".parquet"):
            source = _parquet_image_source(args, encoder)
        elif text_input:
            refuse_modality_mismatch("text", encoder.text, args.path or args.data)
        if source is None:
            if args.column or args.label_column:
                raise ConfigError("--column and --label-column name the columns of a Parquet/CSV file (sentences for a "
                                  "text model, rows for an image model)")
            if encoder.text and Path(args.path or args.data).expanduser().is_dir():
                raise ConfigError(f"{args.path or args.data} is a folder, but this text model reads sentences: give a "
                                  ".txt/.txt.gz/.parquet/.csv file or a text data set (text_synthetic, wordnet)")
            source = load_split_source(args, encoder.text, options)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rchunk {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    result = extract_embeddings(source, encoder, args.output, outputs=outputs, chunk_size=args.chunk_size,
                                batch_size=args.batch_size, overwrite=args.overwrite, progress=progress)
    identity = result.identity
    where = identity.get("model") or f"{identity['server']} {identity['model_name']} version {identity['version']}"
    print(f"embeddings:    {result.output.resolve()} ({result.rows} rows; columns {', '.join(result.columns)})")
    print(f"model:         {where}")
    read = split_summary(source, result.rows, as_trained=bool(getattr(args, "as_trained", False)))
    if read:
        print(f"data:          {read}")
    if result.reused_chunks:
        print(f"resumed:       {result.reused_chunks} of {result.chunks} chunks were already done")
    cut = truncation_summary(result.truncated, result.rows)
    if cut:
        print(f"truncated:     {cut}")
    return 0


def _beam_embed():
    """:mod:`serving.beam_embed`, or one line saying how to install Apache Beam."""
    from vae_tf.errors import ConfigError

    try:
        from serving import beam_embed
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("apache_beam"):
            raise
        raise ConfigError("--runner beam needs Apache Beam; install it with pip install 'vae-tf[beam]'") from None
    return beam_embed


def _parquet_image_source(args, encoder):
    """An image model's rows from one Parquet file, read a row group at a time (every row, in file
    order; ``index`` the row of the file), as ``--runner beam`` reads each of its files."""
    from serving.embed import EmbedSource, refuse_split_options
    from serving.parquet_rows import ParquetImageRows
    from vae_tf.errors import ConfigError

    path = args.path if args.data.lower() == "parquet" else args.data
    if not path:
        raise ConfigError("--data parquet needs --path FILE (e.g. rows.parquet)")
    if any(ch in path for ch in "*?["):
        raise ConfigError(f"{path} is a pattern: the one-process runner reads one Parquet file; add --runner beam for "
                          "several")
    if encoder.data_shape is None:
        raise ConfigError("the model's input shape is not known (an export without vae_tf_model.json, or a served "
                          "signature without a fixed shape), so Parquet rows cannot be shaped; use --runner beam")
    refuse_split_options(args, "Parquet input")
    rows = ParquetImageRows(path, encoder.data_shape, column=args.column,
                            label_column=False if args.no_labels else args.label_column)
    return EmbedSource(rows, rows.labels, {"data": "parquet", "path": path, "rows": len(rows)})


def cmd_probe(args) -> int:
    import json

    from serving.embed import probe

    result = probe(args.embeddings, args.test, test_fraction=args.test_fraction, seed=args.seed, column=args.column)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    print(f"linear probe accuracy: {result['test_accuracy']:.4f} (train {result['train_accuracy']:.4f}; "
          f"{result['num_train']} train / {result['num_test']} test rows, {result['num_classes']} classes, "
          f"{result['dims']} dims; majority class {result['majority_accuracy']:.4f})")
    if result.get("split", "stratified") != "stratified":  # said: the help promises a stratified split
        print(f"warning: the split is {result['split']}; a larger --test-fraction (or --test FILE) gives every "
              "class test rows", file=sys.stderr)
    return 0


__all__ = ["add_parsers", "cmd_embed", "cmd_probe", "cmd_serve"]


#: The serving commands: name -> function(args) -> exit code.
COMMANDS = {"serve": cmd_serve, "embed": cmd_embed, "probe": cmd_probe}
