"""CPU time of one signature call, four ways, in one process (issue 20: where a request's time goes).

Question: how much of a served request is the model call itself, and how much of that is the way
Python calls the graph? The four ways, all on the same export and the same input:

- ``tf2 signature``: ``tf.saved_model.load(path).signatures["encode"](x=tf.constant(x))`` and
  ``.numpy()`` on each output (how ``vae-tf serve`` called models before issue 20);
- ``session.run``: the export loaded into a ``tf.compat.v1.Session`` (TF Serving's
  ``SavedModelBundle``), ``session.run(output names, {input name: x})``;
- ``make_callable``: the public ``Session.make_callable(fetches, feed_list)`` (with feeds it
  falls back to ``session.run``);
- ``MakeCallable``: :class:`serving.model_store.SessionFunction`, ``Session::MakeCallable`` once
  and ``RunCallable`` per call (how ``vae-tf serve`` calls models now).

Each round times ``--calls`` calls of each way, in turn (so other tenants' load spreads over all
four), as CPU time of this process (``time.process_time``: every thread, TensorFlow's pools
included), after a warm-up; the table gives the median over rounds and the minimum. Outputs are
checked equal across the four ways first.

    python benchmarks/serving_model_call.py --rounds 15 --calls 300
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, default_serving_model, machine_info  # noqa: E402


def ways(version_dir: Path, x: np.ndarray) -> dict:
    import tensorflow as tf

    from serving.model_store import Servable

    encode = tf.saved_model.load(str(version_dir)).signatures["encode"]
    servable = Servable.load("vae", 1, version_dir)
    session = servable.session  # the one the servable runs in, for the session.run rows
    signature_def = servable.signature_def_map.signature_def["encode"]
    names = sorted(signature_def.outputs)
    fetches = [signature_def.outputs[n].name for n in names]
    feed = signature_def.inputs["x"].name
    public = session.make_callable(fetches, [feed])
    fast = servable.signatures["encode"]
    return {
        "tf2 signature": lambda: {k: v.numpy() for k, v in encode(x=tf.constant(x)).items()},
        "session.run": lambda: dict(zip(names, session.run(fetches, {feed: x}))),
        "make_callable": lambda: dict(zip(names, public(x))),
        "MakeCallable": lambda: fast.run({"x": x}),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300, help="calls per way per round (300)")
    parser.add_argument("--batches", default="1,32", help="rows per call, comma-separated (1,32)")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        version_dir = default_serving_model(Path(tmp)) / "1"
        for batch in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(0).random((batch, 8, 8, 1)).astype(np.float32)
            calls = ways(version_dir, x)
            reference = calls["tf2 signature"]()
            for name, call in calls.items():
                got = call()
                assert all(np.array_equal(got[k], reference[k]) for k in reference), f"{name} answers differently"
                for _ in range(100):
                    call()
            times = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    start = time.process_time()
                    for _ in range(args.calls):
                        call()
                    times[name].append((time.process_time() - start) / args.calls * 1e6)
            base = statistics.median(times["tf2 signature"])
            for name, values in times.items():
                rows.append((batch, name, statistics.median(values), min(values), statistics.median(values) / base))
    machine = machine_info()
    print(f"```bash\n{command_line()}\n```\n")
    print(f"{time.strftime('%Y-%m-%d')}, {machine['cpu']} ({machine['cpus_usable']} usable CPUs, shared), 1-minute "
          f"load average at the end {os.getloadavg()[0]:.2f}; {args.rounds} rounds x {args.calls} calls per way.\n")
    print("| batch | way | CPU us per call, median | min | / tf2 signature (median) |")
    print("|---:|---|---:|---:|---:|")
    for batch, name, median, low, ratio in rows:
        print(f"| {batch} | {name} | {median:.0f} | {low:.0f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
