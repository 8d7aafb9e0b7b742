"""serving/tensor_proto.py against TensorFlow's own converters (``tf.make_ndarray`` and
``tf.make_tensor_proto``), which it replaces on the gRPC hot path."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving.tensor_proto import read_ndarray, write_content, write_fields

RNG = np.random.default_rng(0)
ARRAYS = [
    RNG.standard_normal((3, 4)).astype(np.float32),
    RNG.standard_normal((2, 1, 3)),
    np.array([[1, -2], [3, 2**31 - 1]], dtype=np.int32),
    np.array([0, 255, 7], dtype=np.uint8),
    np.array([-(2**15), 5], dtype=np.int16),
    np.array([-128, 127], dtype=np.int8),
    np.array([2**62, -(2**62)], dtype=np.int64),
    np.array([[True, False]]),
    np.array([65535, 1], dtype=np.uint16),
    np.array([2**32 - 1], dtype=np.uint32),
    np.array([2**64 - 1], dtype=np.uint64),
    np.array([1.5, -0.25], dtype=np.float16),
    np.array([1 + 2j], dtype=np.complex64),  # not in the table: TensorFlow's path
    np.zeros((0, 3), dtype=np.float32),
    np.float32(2.5).reshape(()),
    np.array([b"a", b"\xff\x00", b""], dtype=object),
    np.array([["a", "b"], ["c", "d"]], dtype=object),
    np.array(["a cat", "é ü"]),
    np.array([], dtype=object),
]


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_read_ndarray_equals_tf_make_ndarray_for_content_and_typed_fields(array):
    if array.dtype != np.complex64:
        typed = tensor_pb2.TensorProto()
        write_fields(typed, array)  # the typed *_val field, as the server answers
        assert not typed.tensor_content
        _same(read_ndarray(typed), tf.make_ndarray(typed))
        _same(tf.make_ndarray(typed), tf.make_ndarray(tf.make_tensor_proto(array)))
    content = tf.make_tensor_proto(array)  # tensor_content for numbers, as TF clients send
    _same(read_ndarray(content), tf.make_ndarray(content))


@pytest.mark.parametrize("array", [a for a in ARRAYS if a.dtype != np.complex64], ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_write_content_reads_back_as_tf_make_tensor_proto_does(array):
    ours = tensor_pb2.TensorProto()
    write_content(ours, array)
    _same(tf.make_ndarray(ours), tf.make_ndarray(tf.make_tensor_proto(array)))
    if array.dtype.kind in "OSU" or (array.dtype.kind == "f" and array.size > 1 and array.dtype != np.float16):
        # same message, byte for byte (TensorFlow writes a one-value tensor into float_val instead)
        assert ours.SerializeToString() == tf.make_tensor_proto(array).SerializeToString()


def test_short_typed_field_is_padded_with_its_last_value_as_tensorflow_does():
    """TF Serving accepts a typed field shorter than the shape (one value fills a tensor);
    the fast path hands that case to TensorFlow."""
    proto = tensor_pb2.TensorProto(dtype=1, float_val=[1.0, 2.0])
    proto.tensor_shape.dim.add().size = 4
    assert read_ndarray(proto).tolist() == tf.make_ndarray(proto).tolist() == [1.0, 2.0, 2.0, 2.0]
    strings = tensor_pb2.TensorProto(dtype=7, string_val=[b"x"])
    strings.tensor_shape.dim.add().size = 3
    assert read_ndarray(strings).tolist() == [b"x", b"x", b"x"]


def test_malformed_protos_raise_as_tensorflow_does():
    wrong_size = tensor_pb2.TensorProto(dtype=1, tensor_content=b"\x00" * 7)
    wrong_size.tensor_shape.dim.add().size = 2
    with pytest.raises(ValueError):
        read_ndarray(wrong_size)
    with pytest.raises(Exception):
        tf.make_ndarray(wrong_size)
    with pytest.raises(TypeError, match="not int"):
        write_fields(tensor_pb2.TensorProto(), np.array(["a", 3], dtype=object))


@pytest.mark.parametrize("values, shape", [
    ([b"w12 w7", b"w3 w44"], [2]),
    ([b"", b"a" * 300, "é ü".encode(), b"\xff\x00"], [4]),  # 300 bytes: a two-byte length
    ([b"a", b"b", b"c", b""], [2, 2]),
    ([b"x" * 70_000], [1, 1]),  # a three-byte length
    ([], [0]),
])
def test_string_tensor_content_is_read_as_tensorflows_cpp_reads_it(values, shape):
    """C++ clients (``Tensor::AsProtoTensorContent``) put a string tensor in ``tensor_content``:
    the lengths as varints, then the bytes. ``tf.make_ndarray`` cannot read it; TF Serving reads
    it with ``Tensor::FromProto``, which ``tf.io.parse_tensor`` runs."""
    from google.protobuf.internal.encoder import _VarintBytes

    proto = tensor_pb2.TensorProto(dtype=7, tensor_content=b"".join(_VarintBytes(len(v)) for v in values) + b"".join(values))
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    want = tf.io.parse_tensor(proto.SerializeToString(), tf.string).numpy()
    got = read_ndarray(proto)
    assert got.dtype == object and got.shape == want.shape == tuple(shape) and got.tolist() == want.tolist()


@pytest.mark.parametrize("content", [b"\x02\x05ab", b"\x02", b"\x80", b"\x01\x01abc", b"\xff\xff\xff\xff\x7f\x00"])
def test_a_malformed_string_tensor_content_is_refused_as_tensorflows_cpp_refuses_it(content):
    proto = tensor_pb2.TensorProto(dtype=7, tensor_content=content)
    proto.tensor_shape.dim.add().size = 2
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.parse_tensor(proto.SerializeToString(), tf.string)
    with pytest.raises(ValueError):
        read_ndarray(proto)
