"""``TensorProto`` <-> NumPy for the gRPC server and client, without TensorFlow's per-call work.

``tf.make_ndarray`` and ``tf.make_tensor_proto`` infer and convert types through TensorFlow's
``DType`` objects on every call: ~15-25 us per tensor, paid three to six times per Predict on
each side (inputs, every output). For the dtypes a VAE signature uses this module does the
same with one table lookup and one NumPy call, and hands anything else (half precision,
complex, a typed field shorter than the shape, which TensorFlow pads with its last value) to
TensorFlow, so the results are always those of ``tf.make_ndarray`` (checked value for value in
tests/test_serving_tensor_proto.py).

- :func:`read_ndarray`: ``tensor_content`` or the typed ``*_val`` field -> array (a string
  tensor's ``tensor_content`` as TensorFlow's C++ reads it, which ``tf.make_ndarray`` cannot).
- :func:`write_fields`: array -> the typed ``*_val`` fields, as TF Serving writes its outputs
  by default (``Tensor::AsProtoField``), so ``outputs[k].float_val`` works for clients.
- :func:`write_content`: array -> ``tensor_content`` (raw bytes), as ``tf.make_tensor_proto``
  writes numeric inputs; strings go to ``string_val``.
"""

from __future__ import annotations

import numpy as np

DT_STRING = 7

# numpy dtype -> (DataType enum, typed field); types.proto / Tensor::AsProtoField.
_FIELD_OF = {
    np.dtype(np.float32): (1, "float_val"), np.dtype(np.float64): (2, "double_val"),
    np.dtype(np.int32): (3, "int_val"), np.dtype(np.uint8): (4, "int_val"), np.dtype(np.int16): (5, "int_val"),
    np.dtype(np.int8): (6, "int_val"), np.dtype(np.int64): (9, "int64_val"), np.dtype(np.bool_): (10, "bool_val"),
    np.dtype(np.uint16): (17, "int_val"), np.dtype(np.uint32): (22, "uint32_val"),
    np.dtype(np.uint64): (23, "uint64_val"),
}
_DTYPE_OF = {enum: (dtype, field) for dtype, (enum, field) in _FIELD_OF.items()}


def _shape(proto) -> tuple[int, ...]:
    return tuple(dim.size for dim in proto.tensor_shape.dim)


def _set_shape(proto, shape) -> None:
    proto.tensor_shape.SetInParent()  # a scalar's shape is present and empty, as TensorFlow writes it
    dims = proto.tensor_shape.dim
    for size in shape:
        dims.add().size = int(size)


def read_ndarray(proto) -> np.ndarray:
    """The array of ``proto``, exactly as ``tf.make_ndarray`` gives it (its errors too); a
    string tensor in ``tensor_content`` as TF Serving reads it (:func:`_string_list`)."""
    shape = _shape(proto)
    count = 1
    for size in shape:
        count *= size
    if proto.dtype == DT_STRING:
        if proto.tensor_content and min(shape, default=0) >= 0:
            return _string_list(proto.tensor_content, count).reshape(shape)
        if not proto.tensor_content and len(proto.string_val) == count:
            return np.array(list(proto.string_val), dtype=object).reshape(shape)
    else:
        known = _DTYPE_OF.get(proto.dtype)
        if known is not None and min(shape, default=0) >= 0:
            dtype, field = known
            if proto.tensor_content:
                return np.frombuffer(proto.tensor_content, dtype=dtype).copy().reshape(shape)
            values = getattr(proto, field)
            if len(values) == count:
                return np.fromiter(values, dtype=dtype, count=count).reshape(shape)
    import tensorflow as tf  # the rare cases: padding, half precision, complex, malformed

    return tf.make_ndarray(proto)


def parse_problem(proto) -> str:
    """Why :func:`read_ndarray` could not read ``proto``, in words for its sender, or "" when
    that is not one of the usual mistakes. (TF Serving answers only ``tensor parsing error:
    <alias>``; its C++ ``Tensor::FromProto`` also takes more typed values than the shape holds,
    keeping the first ones, where this server refuses the tensor, which was built wrong.)"""
    if proto.tensor_shape.unknown_rank:
        return "its tensor_shape has unknown_rank set; give every dimension of the batch"
    shape = _shape(proto)
    dims = "[" + ",".join(str(size) for size in shape) + "]"
    if any(size < 0 for size in shape):
        return f"its shape {dims} has a negative dimension"
    count = 1
    for size in shape:
        count *= size
    if proto.dtype == DT_STRING:
        if proto.tensor_content:
            try:
                _string_list(proto.tensor_content, count)
            except ValueError as err:
                return str(err)
            return ""
        given, field = len(proto.string_val), "string_val"
    else:
        known = {**_DTYPE_OF, 19: (np.float16, "half_val")}.get(proto.dtype)
        if proto.dtype == 0:
            return "its dtype is not set (DT_INVALID); set DT_FLOAT = 1 for images, DT_STRING = 7 for sentences"
        if known is None:
            from tensorflow.core.framework import types_pb2

            try:
                types_pb2.DataType.Name(proto.dtype)
            except ValueError:
                return f"its dtype {proto.dtype} is not a TensorFlow DataType; set DT_FLOAT = 1 for images"
            return ""  # a DataType the reader hands to TensorFlow: its own failure, no guess here
        dtype, field = known
        if proto.tensor_content:
            size = np.dtype(dtype).itemsize
            if len(proto.tensor_content) != count * size:
                return (f"its tensor_content holds {len(proto.tensor_content)} bytes, not the {count * size} of the "
                        f"{count} values of {size} bytes its shape {dims} holds")
            return ""
        given = len(getattr(proto, field))
    if given > count:
        if not shape:
            return f"its {field} has {given} values but it has no tensor_shape, which makes it a scalar; give its shape"
        return f"its {field} has {given} values, more than the {count} its shape {dims} holds"
    return ""


def _string_list(content: bytes, count: int) -> np.ndarray:
    """The ``count`` strings of a string tensor's ``tensor_content``, as TensorFlow's C++
    ``Tensor::FromProto`` (``port::DecodeStringList``) reads it, which TF Serving uses: every
    length first (varint32), then the bytes, which the lengths must cover exactly.
    (``tf.make_ndarray`` cannot read this layout, which ``tf.io.serialize_tensor`` and C++
    clients write.) A malformed one raises ValueError."""
    lengths, at = [], 0
    for _ in range(count):
        value, shift = 0, 0
        while True:
            if at >= len(content) or shift > 28:
                raise ValueError("a string tensor's tensor_content ends before its lengths do")
            byte = content[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if value >= 2**32:
            raise ValueError("a string tensor's tensor_content has a length beyond 32 bits")
        lengths.append(value)
    if sum(lengths) != len(content) - at:
        raise ValueError(f"a string tensor's tensor_content holds {len(content) - at} bytes after its lengths, "
                         f"not the {sum(lengths)} they add up to")
    out = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = content[at:at + length]
        at += length
    return out


def write_fields(proto, arr: np.ndarray) -> None:
    """``proto`` (an empty ``TensorProto``) := ``arr`` in its typed ``*_val`` field."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "OSU":
        _write_strings(proto, arr)
        return
    _set_shape(proto, arr.shape)
    if arr.dtype == np.float16:
        proto.dtype = 19
        proto.half_val.extend(arr.reshape(-1).view(np.uint16).tolist())
    else:
        enum, field = _FIELD_OF[arr.dtype]
        proto.dtype = enum
        getattr(proto, field).extend(arr.reshape(-1).tolist())


def write_content(proto, arr: np.ndarray) -> None:
    """``proto`` (an empty ``TensorProto``) := ``arr`` as ``tf.make_tensor_proto`` writes it: raw
    bytes in ``tensor_content`` for numbers, ``string_val`` for strings (``str`` as UTF-8)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "OSU":
        _write_strings(proto, arr)
        return
    enum = 19 if arr.dtype == np.float16 else _FIELD_OF.get(arr.dtype, (None,))[0]
    if enum is None:
        import tensorflow as tf

        proto.CopyFrom(tf.make_tensor_proto(arr))
        return
    _set_shape(proto, arr.shape)
    proto.dtype = enum
    proto.tensor_content = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _write_strings(proto, arr: np.ndarray) -> None:
    """A string tensor has one layout for both writers: ``string_val`` (``str`` as UTF-8)."""
    _set_shape(proto, arr.shape)
    proto.dtype = DT_STRING
    proto.string_val.extend(_utf8(v) for v in arr.reshape(-1))


def _utf8(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"a string tensor holds str or bytes, not {type(value).__name__} ({value!r:.40})")


__all__ = ["parse_problem", "read_ndarray", "write_content", "write_fields"]
