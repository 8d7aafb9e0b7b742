"""Start-up and end-to-end time of a short training run: vae-tf against pythae, each in a fresh process.

Question answered (issue #20): on a short run, does the time before the first training step
(imports, data, model, tracing) eat vae-tf's faster steps? The run: the reference conv VAE
(28x28x1, conv 32/64, dense 256, latent 16, Bernoulli / BCE, Adam 1e-3, batch 128) trained
``--epochs`` epochs (4) on ``--images`` images (8,192, uniform in [0, 1], one ``.npy`` file), no
validation set, by:

- **vae_tf_library**: a script as a library user writes it (README "From Python"):
  ``load_dataset("npy", path=...)``, ``build_vae``, ``compile(FusedAdam(1e-3),
  steps_per_execution=4)``, ``fit(data.pipeline("train", 128), epochs=4)``;
- **vae_tf_train**: ``vae-tf train --config <yaml>`` (the same model, data and epochs; the CLI
  also creates an MLflow run, checkpoints every epoch, evaluates, writes the collapse verdict and
  figures, exports the SavedModel and registers it: the "training done → exit" column);
- **pythae**: pythae's README way (benchmarks/pythae_reference.py's networks, ``pythae.models.VAE``,
  ``BaseTrainer(training_config=BaseTrainerConfig(num_epochs=4, learning_rate=1e-3,
  per_device_train_batch_size=128))``, ``trainer.train()``, which also saves the final model).

Each variant runs as its own process (``python benchmarks/startup.py --child NAME``), its
framework's default threads. Marks, seconds from the moment the parent starts the process:
``python`` (the interpreter has started and runs the script), ``imports`` (the script's imports
done; for ``vae_tf_train``: ``import keras``, needed to add the timing callback, before the CLI's
own imports), ``fit`` (data loaded, model built; ``fit`` / ``train()`` entered), ``first step``
(the end of the first training step: Keras' first ``on_train_batch_end``, i.e. the first
``steps_per_execution`` group with its tracing; pythae's first ``on_train_step_end``), ``trained``
(``fit`` / ``train()`` returned), ``exit`` (the process ended). One untimed warm-up round first
(the OS file cache, ``__pycache__``, the MLflow database's creation), then ``--rounds`` rounds, the
variants' order rotating each round. Reported: median (min-max) of every mark, the per-round
ratio pythae / vae-tf of the time to exit (> 1: vae-tf finished first), and the load average.
For ``vae_tf_train`` also the wall seconds of each stage outside ``fit`` (:data:`CLI_PHASES`: data
and model, the MLflow run's start, ``evaluate``, the collapse verdict, the figures, the export,
logging and registering the model), timed by wrapping those functions in the child: where the
time after training goes.

``--importtime`` adds one more run of each variant under ``python -X importtime``, ended right after
its first training step (nothing later is read), and sums the import time spent before that step
per top-level package (self times: each module's own time counted once, in its package), which is
how the avoidable imports were found.

``--compare-tree DIR`` also runs the two vae-tf variants with another checkout of vae-tf (``DIR``
first on ``PYTHONPATH``, e.g. a ``git worktree`` of the commit before a change), interleaved in
the same rounds: before and after, side by side.

Usage::

    python benchmarks/startup.py --rounds 5 --importtime
    git worktree add /tmp/before main && python benchmarks/startup.py --compare-tree /tmp/before
    python benchmarks/startup.py --rounds 1 --images 256 --epochs 1 --variants vae_tf_library   # smoke run
"""

from __future__ import annotations

import json
import os
import sys
import time

CHILD_START = time.time()  # as early as the script can look at a clock (its own imports are the stdlib's)
CHILD_CPU = time.process_time()

VARIANTS = ("vae_tf_library", "vae_tf_train", "pythae")
VARIANT_TITLES = {"vae_tf_library": "vae-tf library script", "vae_tf_train": "`vae-tf train` (CLI)",
                  "pythae": "pythae BaseTrainer script"}
MARKS = ("python", "imports", "fit", "first_step", "trained", "exit")
MARK_TITLES = {"python": "interpreter up", "imports": "imports done", "fit": "fit entered",
               "first_step": "first step done", "trained": "training done", "exit": "process exit"}
#: The packages whose import time ``--importtime`` reports separately (the rest is "other").
IMPORT_GROUPS = ("tensorflow", "keras", "tensorflow_probability", "tf_keras", "sklearn", "scipy", "pandas",
                 "matplotlib", "mlflow", "pydantic", "torch", "pythae", "vae_tf", "training", "serving", "numpy")
MARKER = "#vae-tf-startup-mark"  # a line on stderr when the first step ends (splits -X importtime's output)
LATENT_DIM, FILTERS, DENSE = 16, (32, 64), 256


# --- the children ---------------------------------------------------------------------------------
class Marks:
    """Wall-clock marks of one child process, written as JSON to ``path`` at the end."""

    def __init__(self, path: str, stop_after_first_step: bool = False):
        self.path = path
        self.stop_after_first_step = stop_after_first_step
        self.times = {"python": CHILD_START}
        self.cpu = {"python": CHILD_CPU}  # CPU seconds of the process (all threads) at each mark
        self.extra: dict = {}

    def mark(self, name: str) -> None:
        if name not in self.times:
            self.times[name], self.cpu[name] = time.time(), time.process_time()
        if name == "first_step":
            print(MARKER, file=sys.stderr, flush=True)
            if self.stop_after_first_step:  # an -X importtime run: what follows the first step is not read
                sys.stdout.flush()
                os._exit(0)

    def save(self) -> None:
        with open(self.path + ".part", "w") as f:
            json.dump({"times": self.times, "cpu": self.cpu, **self.extra}, f)
        os.replace(self.path + ".part", self.path)

    def keras_callback(self):
        import keras

        marks = self

        class FirstStep(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                marks.mark("fit")

            def on_train_batch_end(self, batch, logs=None):
                marks.mark("first_step")

        return FirstStep()


def child_vae_tf_library(args, marks: Marks) -> None:
    from vae_tf.data import load_dataset
    from vae_tf.models import build_vae
    from vae_tf.optimizers import FusedAdam

    marks.mark("imports")
    data = load_dataset("npy", path=str(args.data), seed=0, val_fraction=0.0, test_fraction=0.0)
    model = build_vae(data.data_shape, latent={"family": "gaussian", "latent_dim": LATENT_DIM},
                      likelihood={"name": "bernoulli"},
                      network={"kind": "conv", "filters": list(FILTERS), "dense": DENSE}, seed=0)
    model.compile(optimizer=FusedAdam(1e-3), steps_per_execution=4)
    history = model.fit(data.pipeline("train", args.batch_size), epochs=args.epochs, verbose=0,
                        callbacks=[marks.keras_callback()])
    marks.mark("trained")
    marks.extra["final_loss"] = float(history.history["loss"][-1])


def child_vae_tf_train(args, marks: Marks) -> int:
    import vae_tf_cli  # light: argparse, gc, logging

    # What the program does before anything else (`run`: `prepare_job_process`), here before the
    # early `import keras` too. A --compare-tree checkout from before that function has its parts, or none.
    prepare = getattr(vae_tf_cli, "prepare_job_process", None)
    if prepare is None:
        getattr(vae_tf_cli, "collect_less_often", lambda: None)()
        getattr(vae_tf_cli, "keep_scikit_learn_out_of_keras", lambda: None)()
    else:
        prepare()
    import keras  # the CLI imports it anyway; here first, to give its fit one more callback

    marks.mark("imports")
    fit = keras.Model.fit

    def timed_fit(self, *a, callbacks=None, **kw):
        history = fit(self, *a, callbacks=[*(callbacks or []), marks.keras_callback()], **kw)
        marks.times["trained"], marks.cpu["trained"] = time.time(), time.process_time()  # the last fit's end
        marks.extra["final_loss"] = float(history.history["loss"][-1])
        return history

    keras.Model.fit = timed_fit
    time_cli_phases(marks)

    # The program the console script runs (`run`: main, then an exit without the final garbage
    # collections); a --compare-tree checkout from before it existed has `main` only.
    return getattr(vae_tf_cli, "run", vae_tf_cli.main)(["train", "--config", str(args.config)])


#: The stages of a `vae-tf train` run outside `fit`, timed in the CLI child: (module, attribute, name).
#: Each is looked up when the run calls it, so wrapping the attribute times every call.
CLI_PHASES = (("training.train", "prepare", "data and model"),
              ("training.tracking", "TrackedRun.start", "MLflow run start"),
              ("keras", "Model.evaluate", "evaluate"),
              ("training.lineage", "model_verdict", "collapse verdict"),
              ("training.train", "log_model_figures", "figures"),
              ("vae_tf.export", "export_model", "export"),
              ("training.tracking", "TrackedRun.log_model", "log and register the model"))


def time_cli_phases(marks: Marks) -> None:
    """Wrap the :data:`CLI_PHASES` of the run so that each call's wall seconds add up in
    ``marks.extra["phases"]``; a phase a --compare-tree checkout lacks is left out."""
    import functools
    import importlib

    phases = marks.extra.setdefault("phases", {})
    for module_name, attribute, name in CLI_PHASES:
        owner = importlib.import_module(module_name)
        *path, last = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, last, None)
        if original is None:
            continue

        def timed(*a, _original=original, _name=name, **kw):
            start = time.perf_counter()
            try:
                return _original(*a, **kw)
            finally:
                phases[_name] = phases.get(_name, 0.0) + time.perf_counter() - start

        setattr(owner, last, functools.wraps(original)(timed))


def child_pythae(args, marks: Marks) -> None:
    import numpy as np
    import torch
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    from benchmarks.pythae_reference import build_model

    marks.mark("imports")

    class FirstStep(TrainingCallback):
        def on_train_begin(self, training_config, **kwargs):
            marks.mark("fit")

        def on_train_step_end(self, training_config, **kwargs):
            marks.mark("first_step")

        def on_log(self, training_config, logs, **kwargs):
            marks.extra["final_loss"] = float(logs["train_epoch_loss"])

    x = torch.from_numpy(np.load(args.data)).permute(0, 3, 1, 2).contiguous()  # NHWC file -> NCHW
    model, _ = build_model(torch, tuple(x.shape[2:]) + (x.shape[1],), latent_dim=LATENT_DIM, filters=FILTERS,
                           dense=DENSE)
    config = BaseTrainerConfig(output_dir=str(args.workdir / "pythae"), num_epochs=args.epochs, learning_rate=1e-3,
                               per_device_train_batch_size=args.batch_size)
    trainer = BaseTrainer(model=model, train_dataset=BaseDataset(x, torch.zeros(len(x))), training_config=config,
                          callbacks=[FirstStep()])
    trainer.train()
    marks.mark("trained")


CHILDREN = {"vae_tf_library": child_vae_tf_library, "vae_tf_train": child_vae_tf_train, "pythae": child_pythae}


def run_child(argv) -> int:
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=VARIANTS, required=True)
    p.add_argument("--marks", required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--stop-after-first-step", action="store_true")
    args = p.parse_args(argv)
    args.data, args.config = args.workdir / "data.npy", args.workdir / "vae_tf_train.yaml"
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # after PYTHONPATH: a --compare-tree checkout's vae_tf comes first
        sys.path.append(root)
    marks = Marks(args.marks, stop_after_first_step=args.stop_after_first_step)
    code = CHILDREN[args.child](args, marks) or 0
    marks.save()
    return code


# --- the parent -----------------------------------------------------------------------------------
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare(workdir, images: int, epochs: int, batch_size: int, seed: int) -> None:
    """The data file and the CLI's config in ``workdir``."""
    import numpy as np
    import yaml

    x = np.random.default_rng(seed).random((images, 28, 28, 1), dtype=np.float32)
    np.save(workdir / "data.npy", x)
    config = {
        "name": "startup",
        "seed": 0,
        "data": {"name": "npy", "path": str(workdir / "data.npy"), "val_fraction": 0.0, "test_fraction": 0.0},
        "model": {"latent": {"family": "gaussian", "latent_dim": LATENT_DIM}, "likelihood": {"name": "bernoulli"},
                  "network": {"kind": "conv", "filters": list(FILTERS), "dense": DENSE}},
        "train": {"epochs": epochs, "batch_size": batch_size, "learning_rate": 1e-3, "steps_per_execution": 4,
                  "run_dir": str(workdir / "runs"), "verbose": 0},
        "export": {"base_dir": str(workdir / "models")},
        "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": "startup"},
    }
    (workdir / "vae_tf_train.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def child_command(variant: str, workdir, marks, args, importtime: bool = False) -> list[str]:
    return [sys.executable, *(["-X", "importtime"] if importtime else []), os.path.abspath(__file__),
            "--child", variant.split("@")[0], "--marks", str(marks), "--workdir", str(workdir),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            *(["--stop-after-first-step"] if importtime else [])]


def child_env(variant: str, args) -> dict:
    """The environment of a child: this checkout first on PYTHONPATH, or the --compare-tree
    checkout for a ``NAME@before`` variant."""
    from benchmarks.common import REPO_ROOT

    tree = args.compare_tree if variant.endswith("@before") else REPO_ROOT
    paths = (str(tree), os.environ.get("PYTHONPATH"))
    # TensorFlow's C++ log level as the CLI sets it, for every variant alike (chatter, not time).
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_once(variant: str, workdir, args, run_id: str) -> dict:
    """One timed process: its marks as wall seconds since launch and as the process's CPU seconds
    (user + system, all threads; less sensitive than wall time to other tenants), and the final loss."""
    import subprocess

    marks_path = workdir / f"marks-{run_id}.json"
    log_path = workdir / f"{variant}.log"
    with open(log_path, "w") as log_file:
        start = time.time()
        proc = subprocess.Popen(child_command(variant, workdir, marks_path, args), env=child_env(variant, args),
                                cwd=workdir,
                                stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        end = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed (exit {proc.returncode}); its output is in {log_path}:\n"
                         + log_path.read_text()[-2000:])
    record = json.loads(marks_path.read_text())
    seconds = {name: t - start for name, t in record.pop("times").items()}
    seconds["exit"] = end - start
    cpu = record.pop("cpu")
    cpu["exit"] = usage.ru_utime + usage.ru_stime
    missing = [m for m in MARKS if m not in seconds]
    if missing:
        raise SystemExit(f"{variant} did not record {missing}; see {log_path}")
    return {"seconds": seconds, "cpu_seconds": cpu, **record}


def import_breakdown(variant: str, workdir, args) -> dict:
    """Seconds of import (``-X importtime`` self times) before the first training step, per package."""
    import re
    import subprocess

    proc = subprocess.run(child_command(variant, workdir, workdir / f"marks-importtime-{variant}.json", args,
                                        importtime=True),
                          env=child_env(variant, args), cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} under -X importtime failed: {proc.stderr[-2000:]}")
    before = proc.stderr.split(MARKER)[0]
    groups = dict.fromkeys((*IMPORT_GROUPS, "other"), 0.0)
    for self_us, name in re.findall(r"^import time:\s+(\d+) \|\s+\d+ \| +(\S+)", before, flags=re.M):
        top = name.split(".")[0]
        groups[top if top in groups else "other"] += int(self_us) / 1e6
    return {"total": sum(groups.values()), "packages": {k: v for k, v in groups.items() if v >= 0.005}}


def main(argv=None) -> int:
    import argparse
    import datetime
    import tempfile
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import common
    from benchmarks.common import summary

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=5, help="timed rounds")
    p.add_argument("--warmup-rounds", type=int, default=1, help="untimed rounds first (file cache, MLflow database)")
    p.add_argument("--images", type=int, default=8192, help="training images")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--importtime", action="store_true",
                   help="also the import time before the first step per package (one -X importtime run each)")
    p.add_argument("--compare-tree", type=Path, default=None,
                   help="another vae-tf checkout whose two vae-tf variants run too (NAME@before), interleaved")
    p.add_argument("--seed", type=int, default=0, help="seed of the data")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if "pythae" in args.variants:
        from benchmarks.pythae_reference import import_pythae

        if import_pythae()[0] is None:
            log("pythae is not installed; pip install -e '.[bench]' adds it. Timing the vae-tf variants only.")
            args.variants = [v for v in args.variants if v != "pythae"]

    args.compare_commit = common.git_state(args.compare_tree)[0] if args.compare_tree else None
    if args.compare_tree:
        args.variants += [f"{v}@before" for v in args.variants if v != "pythae"]
    machine = common.machine_info()
    with tempfile.TemporaryDirectory(prefix="vae-tf-startup-") as tmp:
        workdir = Path(tmp)
        prepare(workdir, args.images, args.epochs, args.batch_size, args.seed)
        for w in range(args.warmup_rounds):  # the OS file cache, __pycache__, the MLflow database
            for variant in args.variants:
                s = run_once(variant, workdir, args, f"warmup{w}-{variant}")["seconds"]
                log(f"warm-up {variant}: first step {s['first_step']:.1f} s, exit {s['exit']:.1f} s")
        rounds = []
        for r in range(args.rounds):
            k = r % len(args.variants)
            order = args.variants[k:] + args.variants[:k]
            row = {"order": order, "load_average": common.load_average()}
            for variant in order:
                row[variant] = run_once(variant, workdir, args, f"{r}-{variant}")
            rounds.append(row)
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{v} first step {row[v]['seconds']['first_step']:.1f} s, exit {row[v]['seconds']['exit']:.1f} s"
                for v in args.variants))
        imports = {v: import_breakdown(v, workdir, args) for v in args.variants} if args.importtime else {}
    machine["load_average_end"] = common.load_average()

    results = {}
    for variant in args.variants:
        results[variant] = {mark: summary([row[variant]["seconds"][mark] for row in rounds]) for mark in MARKS}
        results[variant]["cpu"] = {mark: summary([row[variant]["cpu_seconds"][mark] for row in rounds])
                                   for mark in MARKS}
        results[variant]["training_seconds"] = summary(
            [row[variant]["seconds"]["trained"] - row[variant]["seconds"]["first_step"] for row in rounds])
        results[variant]["final_loss"] = rounds[-1][variant].get("final_loss")
        phases = [row[variant].get("phases") or {} for row in rounds]
        if any(phases):
            results[variant]["phases"] = {name: summary([p.get(name, 0.0) for p in phases])
                                          for name in dict.fromkeys(n for p in phases for n in p)}
    def ratio_of(numerator: str, denominator: str) -> dict:
        return {mark: summary([row[numerator]["seconds"][mark] / row[denominator]["seconds"][mark] for row in rounds])
                for mark in ("first_step", "exit")}

    ratios = {v: ratio_of("pythae", v) for v in args.variants if v != "pythae"} if "pythae" in args.variants else {}
    before_over_after = {v: ratio_of(f"{v}@before", v) for v in args.variants if f"{v}@before" in args.variants}
    report = {"command": common.command_line(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "results": results, "pythae_over_vae_tf": ratios, "before_over_after": before_over_after,
              "imports_before_first_step": imports, "rounds": rounds}
    print(render(report))
    if args.json:
        common.write_json(args.json, report)
    return 0


def variant_title(variant: str, report: dict) -> str:
    kind, _, before = variant.partition("@")
    if not before:
        return VARIANT_TITLES[kind]
    return f"{VARIANT_TITLES[kind]}, before ({report['settings'].get('compare_commit') or report['settings']['compare_tree']})"


def render(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    load = lambda v: " / ".join(f"{x:.2f}" for x in v) if v else "unknown"  # noqa: E731
    lines = [f"Command: `{report['command']}`", "",
             f"- Date: {report['date']}; commit {m['git_commit']}{' + uncommitted changes' if m['git_dirty'] else ''}",
             f"- Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable); Python {m['python']}; load "
             f"average (1/5/15 min) {load(m['load_average'])} at the start, {load(m['load_average_end'])} at the end",
             f"- Run: conv reference VAE, {s['images']:,} images 28x28x1, batch {s['batch_size']}, {s['epochs']} epochs; "
             f"{s['warmup_rounds']} warm-up round(s), then {s['rounds']} rounds (order rotating), a fresh process per "
             "variant per round; "
             "seconds since the process was started, median (min–max)",
             "",
             "| Variant | " + " | ".join(MARK_TITLES[mk] for mk in MARKS) + " | training (first step → done) "
             "| final loss |",
             "|---|" + "---:|" * (len(MARKS) + 2)]
    for variant, r in report["results"].items():
        cells = [f"{r[mk]['median']:.1f} ({r[mk]['min']:.1f}–{r[mk]['max']:.1f})" for mk in MARKS]
        t = r["training_seconds"]
        loss = r.get("final_loss")
        lines.append(f"| {variant_title(variant, report)} | " + " | ".join(cells)
                     + f" | {t['median']:.1f} ({t['min']:.1f}–{t['max']:.1f}) | {'–' if loss is None else f'{loss:.2f}'} |")
    lines += ["", "The same marks in CPU seconds of the process (user + system, all threads):", "",
              "| Variant | " + " | ".join(MARK_TITLES[mk] for mk in MARKS) + " |", "|---|" + "---:|" * len(MARKS)]
    for variant, r in report["results"].items():
        lines.append(f"| {variant_title(variant, report)} | " + " | ".join(
            f"{r['cpu'][mk]['median']:.1f} ({r['cpu'][mk]['min']:.1f}–{r['cpu'][mk]['max']:.1f})" for mk in MARKS) + " |")
    for variant, ratio in report["pythae_over_vae_tf"].items():
        f, e = ratio["first_step"], ratio["exit"]
        lines.append(f"\npythae / {variant_title(variant, report)}, per round, median (min–max): time to the first step "
                     f"{f['median']:.2f} ({f['min']:.2f}–{f['max']:.2f}), time to exit {e['median']:.2f} "
                     f"({e['min']:.2f}–{e['max']:.2f}) (> 1: vae-tf is done first).")
    for variant, ratio in report.get("before_over_after", {}).items():
        f, e = ratio["first_step"], ratio["exit"]
        lines.append(f"\nBefore / after, {VARIANT_TITLES[variant]}, per round, median (min–max): time to the first "
                     f"step {f['median']:.2f} ({f['min']:.2f}–{f['max']:.2f}), time to exit {e['median']:.2f} "
                     f"({e['min']:.2f}–{e['max']:.2f}) (> 1: faster after).")
    phased = {v: r["phases"] for v, r in report["results"].items() if r.get("phases")}
    if phased:
        names = list(dict.fromkeys(n for p in phased.values() for n in p))
        lines += ["", "Where `vae-tf train` spends its time outside `fit`: wall seconds in each stage, median "
                      "(min–max) over the rounds:", "",
                  "| Variant | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for variant, p in phased.items():
            lines.append(f"| {variant_title(variant, report)} | " + " | ".join(
                f"{p[n]['median']:.2f} ({p[n]['min']:.2f}–{p[n]['max']:.2f})" if n in p else "–" for n in names) + " |")
    if report["imports_before_first_step"]:
        groups = [g for g in (*IMPORT_GROUPS, "other")
                  if any(g in b["packages"] for b in report["imports_before_first_step"].values())]
        lines += ["", "Import time before the first step (`-X importtime` self times summed per top-level package, "
                      "one run each; importtime itself slows imports down):", "",
                  "| Variant | total | " + " | ".join(groups) + " |", "|---|" + "---:|" * (len(groups) + 1)]
        for variant, b in report["imports_before_first_step"].items():
            lines.append(f"| {variant_title(variant, report)} | {b['total']:.2f} | "
                         + " | ".join(f"{b['packages'][g]:.2f}" if g in b["packages"] else "–" for g in groups) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--child" in sys.argv:
        sys.exit(run_child(sys.argv[1:]))
    sys.exit(main())
