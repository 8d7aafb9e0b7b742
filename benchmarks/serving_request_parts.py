"""CPU time of the parts of a served request, each two or four ways, in one process (issue 20:
where a request's time goes).

The model call, four ways, on the same export and the same input:

- ``tf2 signature``: ``tf.saved_model.load(path).signatures["encode"](x=tf.constant(x))`` and
  ``.numpy()`` on each output (how ``vae-tf serve`` called models before issue 20);
- ``session.run``: the export loaded into a ``tf.compat.v1.Session`` (TF Serving's
  ``SavedModelBundle``), ``session.run(output names, {input name: x})``;
- ``make_callable``: the public ``Session.make_callable(fetches, feed_list)`` (with feeds it
  falls back to ``session.run``);
- ``MakeCallable``: :class:`serving.model_store.SessionFunction`, ``Session::MakeCallable`` once
  and ``RunCallable`` per call (how ``vae-tf serve`` calls models now).

The JSON of a REST ``encode`` request (TF Serving's row format) and of its response, two ways:
``json.loads`` against ``orjson.loads`` of the body, ``np.asarray`` of the parsed instances (the
same either way), and the response written by ``serving.json_codec.predict_response`` with its
``json`` path (``tolist`` + ``json.dumps``, before issue 20) against its orjson path (now).

Each round times ``--calls`` calls of each part, in turn (so other tenants' load spreads over all
of them), as CPU time of this process (``time.process_time``: every thread, TensorFlow's pools
included), after a warm-up, with the objects that exist then frozen out of the garbage collector
(``gc.freeze``, as ``vae-tf serve`` does); the table gives the median over rounds and the minimum. The model
call's outputs are checked equal across the four ways, and both JSON ways read back alike.

    python benchmarks/serving_request_parts.py --rounds 15 --calls 300
"""

from __future__ import annotations

import argparse
import gc
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


def json_parts(x: np.ndarray, outputs: dict) -> dict:
    import json

    import orjson

    from serving import json_codec

    body = json.dumps({"signature_name": "encode", "instances": x.tolist()}).encode()
    instances = json.loads(body)["instances"]
    assert orjson.loads(body) == json.loads(body)
    fast = json.loads(json_codec.predict_response(outputs, json_codec.ROW))
    slow = json.loads(json_codec.predict_response(outputs, json_codec.ROW, use_orjson=False))
    assert [{k: np.float32(v).tolist() for k, v in row.items()} for row in fast["predictions"]] == \
        [{k: np.float32(v).tolist() for k, v in row.items()} for row in slow["predictions"]]
    return {"parse: json.loads": lambda: json.loads(body), "parse: orjson.loads": lambda: orjson.loads(body),
            "instances -> np.asarray": lambda: np.asarray(instances),
            "write outputs: json": lambda: json_codec.predict_response(outputs, json_codec.ROW, use_orjson=False),
            "write outputs: orjson": lambda: json_codec.predict_response(outputs, json_codec.ROW)}


# Each part's way before issue 20, for the ratio column.
BEFORE = {"session.run": "tf2 signature", "make_callable": "tf2 signature", "MakeCallable": "tf2 signature",
          "parse: orjson.loads": "parse: json.loads", "write outputs: orjson": "write outputs: json"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300, help="calls per part per round (300)")
    parser.add_argument("--batches", default="1,32", help="rows per request, comma-separated (1,32)")
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
            calls.update(json_parts(x, reference))
            for call in calls.values():
                for _ in range(100):
                    call()
            gc.collect()
            gc.freeze()  # as `vae-tf serve` does: full collections would walk TensorFlow's objects
            times = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    start = time.process_time()
                    for _ in range(args.calls):
                        call()
                    times[name].append((time.process_time() - start) / args.calls * 1e6)
            medians = {name: statistics.median(values) for name, values in times.items()}
            for name, values in times.items():
                ratio = f"{medians[name] / medians[BEFORE[name]]:.2f}" if name in BEFORE else ""
                rows.append((batch, name, medians[name], min(values), BEFORE.get(name, ""), ratio))
    machine = machine_info()
    print(f"```bash\n{command_line()}\n```\n")
    print(f"{time.strftime('%Y-%m-%d')}, {machine['cpu']} ({machine['cpus_usable']} usable CPUs, shared), 1-minute "
          f"load average at the end {os.getloadavg()[0]:.2f}; {args.rounds} rounds x {args.calls} calls per part.\n")
    print("| batch | part | CPU us per call, median | min | / before (median) |")
    print("|---:|---|---:|---:|---:|")
    for batch, name, median, low, before, ratio in rows:
        print(f"| {batch} | {name} | {median:.0f} | {low:.0f} | {f'{ratio} (of {before})' if ratio else ''} |")
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
