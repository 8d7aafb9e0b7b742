"""TensorProto conversion per gRPC Predict: TensorFlow's converters against serving/tensor_proto.py.

Question answered: how much of a text ``encode`` request's time over gRPC is spent turning
tensors into ``TensorProto`` messages and back, the way the server and client did it before
(commit 8889194: ``tf.make_ndarray`` for every tensor read; the server built each output as a
new ``TensorProto`` and copied it into the response) and with ``serving/tensor_proto.py`` (what
they call now: one table lookup, outputs written in place)? One request of the text-latency benchmark
(benchmarks/serving_latency.py --text): one 10-word sentence in, three 1x2 float32 outputs
(``embedding``, ``z_mean``, ``z_log_var``) out.

- server: read the request's string tensor, write the three outputs into a ``PredictResponse``;
- client: read the three outputs of that response.

``timeit``, best of ``--repeat`` x ``--number`` calls, both ways side by side in one process.

Usage::

    python benchmarks/tensor_proto_conversion.py
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import sys  # noqa: E402
import timeit  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--number", type=int, default=2000, help="calls per timing")
    p.add_argument("--repeat", type=int, default=5, help="timings; the best is reported")
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
    from tensorflow_serving.apis import predict_pb2

    from serving.tensor_proto import read_ndarray, write_fields

    sentence = tf.make_tensor_proto(np.array([b"w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"], dtype=object))
    outputs = {name: np.random.default_rng(0).random((1, 2)).astype(np.float32)
               for name in ("embedding", "z_mean", "z_log_var")}

    def server_tf():  # commit 8889194's grpc_server: make_ndarray in, ndarray_to_proto + CopyFrom out
        tf.make_ndarray(sentence)
        response = predict_pb2.PredictResponse()
        for name, value in outputs.items():
            proto = tensor_pb2.TensorProto(tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in value.shape]))
            proto.dtype = 1
            proto.float_val.extend(value.ravel().tolist())
            response.outputs[name].CopyFrom(proto)
        return response

    def server_ours():
        read_ndarray(sentence)
        response = predict_pb2.PredictResponse()
        for name, value in outputs.items():
            write_fields(response.outputs[name], value)
        return response

    response = server_ours()

    def client_tf():
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def client_ours():
        return {name: read_ndarray(proto) for name, proto in response.outputs.items()}

    assert server_tf() == server_ours()  # both ways build the same message
    for name in outputs:  # and read the same values
        np.testing.assert_array_equal(client_tf()[name], client_ours()[name])
    print(f"Command: `python benchmarks/tensor_proto_conversion.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print("| side | before (tf.make_ndarray, build + CopyFrom), us per request | serving/tensor_proto.py, us per request |")
    print("|---|---:|---:|")
    for side, (theirs, ours) in {"server": (server_tf, server_ours), "client": (client_tf, client_ours)}.items():
        us = [min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number * 1e6 for fn in (theirs, ours)]
        print(f"| {side} | {us[0]:.1f} | {us[1]:.1f} |")
    return 0


if __name__ == "__main__":
    from benchmarks.common import start_as_vae_tf_does

    start_as_vae_tf_does()
    sys.exit(main())
