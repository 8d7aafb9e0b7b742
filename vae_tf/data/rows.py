"""Row readers: the raw rows of a data array, read by index, without holding the whole array.

A reader has ``shape`` and ``dtype`` (of the whole array, rows first) and two methods:

- ``take(rows)`` -> the rows at the given **ascending** indices, as a new in-memory array in the
  stored dtype;
- ``blocks()`` -> ``(start, rows)`` pairs that cover the array in order, each at most
  :data:`BLOCK_BYTES` (or one row) -- what a validation scan walks (a block may be overwritten by
  the next, so keep what you need from it, not the block).

:class:`NpyFileRows` reads a C-order ``.npy`` payload (a ``.npy`` file, or a member of a ``.npz``
that ``np.savez`` stored uncompressed) with positioned reads into arrays it allocates. Unlike a
memory map, nothing of the file stays mapped in the process: a memory-mapped page that was read
counts in the resident set (``VmRSS``) until it is unmapped, and the kernel maps neighbouring
cached pages with every fault (fault-around), so gathering scattered rows through ``np.memmap``
ends up with most of the file resident. With positioned reads the resident memory is the arrays
handed back, nothing else. :class:`ArrayRows` wraps an array already in memory (or a memory map,
where no better reader exists).
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from vae_tf.errors import DataError

#: Most bytes one scan block (and one gather's read-ahead window) holds.
BLOCK_BYTES = 4 * 1024 * 1024
#: Rows closer than this many bytes are read in one call (the gap is read and dropped): one
#: system call costs about as much as copying a page.
MERGE_GAP_BYTES = 4096


def _row_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) * int(dtype.itemsize)


def block_rows(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Rows per scan block: as many as fit in :data:`BLOCK_BYTES`, at least one."""
    return max(1, BLOCK_BYTES // max(1, _row_bytes(shape, dtype)))


class ArrayRows:
    """An array in memory (or a memory map) seen as a row reader."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = tuple(int(d) for d in array.shape)
        self.dtype = array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[rows])

    def blocks(self):
        # Already in memory: one block (views, no copy) gives the same answers as many.
        if isinstance(self.array, np.memmap):
            step = block_rows(self.shape, self.dtype)
            for start in range(0, self.shape[0], step):
                yield start, np.asarray(self.array[start : start + step])
        else:
            yield 0, self.array


class NpyFileRows:
    """The C-order array stored at byte ``offset`` of ``path`` (shape ``shape``, dtype ``dtype``).

    Every byte comes from :meth:`_read_into` (positioned reads of an unbuffered file), into
    arrays this reader allocates: one chunk's rows, plus at most one :data:`BLOCK_BYTES` window
    when neighbouring rows are read in one call.
    """

    def __init__(self, path: str | os.PathLike, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path = Path(path)
        self.offset = int(offset)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = _row_bytes(self.shape, self.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def _read_into(self, handle, buffer: np.ndarray, position: int) -> None:
        """Fill ``buffer`` (a flat uint8 array) with the bytes at ``position`` of the file."""
        view = memoryview(buffer)
        done = 0
        while done < len(view):
            handle.seek(position + done)
            got = handle.readinto(view[done:])
            if not got:
                raise DataError(
                    f"{str(self.path)!r} ended at byte {position + done} while {len(view) - done} more "
                    "bytes of data were expected (was it truncated or rewritten while being read?); "
                    "check or re-create the file"
                )
            done += got

    def _open(self):
        return open(self.path, "rb", buffering=0)

    def blocks(self):
        """Blocks read into one reused buffer: a block is valid until the next one is read."""
        step = max(1, min(block_rows(self.shape, self.dtype), self.shape[0]))
        buffer = np.empty((step,) + self.shape[1:], self.dtype)
        with self._open() as handle:
            for start in range(0, self.shape[0], step):
                out = buffer[: min(self.shape[0], start + step) - start]
                self._read_into(handle, out.reshape(-1).view(np.uint8), self.offset + start * self.row_bytes)
                yield start, out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at ascending indices ``rows``: runs of consecutive rows are read in one call,
        and runs whose gap is under :data:`MERGE_GAP_BYTES` share one window (at most
        :data:`BLOCK_BYTES`) that is read once and copied from."""
        rows = np.asarray(rows, dtype=np.int64)
        n = len(rows)
        out = np.empty((n,) + self.shape[1:], self.dtype)
        if n == 0 or self.row_bytes == 0:
            return out
        if rows[0] < 0 or rows[-1] >= self.shape[0]:
            raise IndexError(f"row index out of range [0, {self.shape[0]})")
        rb = self.row_bytes
        flat = out.reshape(-1).view(np.uint8)
        cut = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate(([0], cut)).tolist()
        stops = np.concatenate((cut, [n])).tolist()
        first_row = rows[starts].tolist()
        last_row = rows[np.asarray(stops) - 1].tolist()
        max_gap = MERGE_GAP_BYTES // rb
        max_span = max(1, BLOCK_BYTES // rb)
        with self._open() as handle:
            i = 0
            while i < len(starts):
                j = i
                while (j + 1 < len(starts) and first_row[j + 1] - last_row[j] - 1 <= max_gap
                       and last_row[j + 1] - first_row[i] + 1 <= max_span):
                    j += 1
                a, b, first = starts[i], stops[j], first_row[i]
                if j == i:  # one run: straight into the output
                    self._read_into(handle, flat[a * rb : b * rb], self.offset + first * rb)
                else:
                    window = np.empty((last_row[j] - first + 1) * rb, np.uint8)
                    self._read_into(handle, window, self.offset + first * rb)
                    out[a:b] = window.view(self.dtype).reshape((-1,) + self.shape[1:])[rows[a:b] - first]
                i = j + 1
        return out


def npy_rows(array: np.ndarray) -> ArrayRows | NpyFileRows:
    """A reader for what ``np.load(path, mmap_mode="r")`` returned: positioned reads for a C-order
    memory map (the map itself is never read), else the array as it is (a Fortran-order file
    stays memory-mapped: its rows are not contiguous in the file)."""
    if isinstance(array, np.memmap) and array.flags.c_contiguous and array.filename:
        return NpyFileRows(array.filename, array.offset, array.shape, array.dtype)
    return ArrayRows(array)


def npz_member_rows(path: str | os.PathLike, key: str) -> NpyFileRows | None:
    """A reader for array ``key`` of a ``.npz`` when ``np.savez`` stored it uncompressed in C
    order (its bytes then lie contiguous in the archive); ``None`` otherwise (compressed by
    ``np.savez_compressed``, Fortran order, object dtype, an unknown header version), where the
    caller loads the array into memory instead."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            member = key + ".npy" if key + ".npy" in names else key
            info = archive.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return None
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            handle.seek(start)
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                return None
            offset = handle.tell()
    except (OSError, ValueError, KeyError, struct.error, zipfile.BadZipFile):
        # anything odd: np.load reads the member instead (and reports what is wrong)
        return None
    if fortran or dtype.hasobject:
        return None
    if info.file_size != offset - start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        return None
    return NpyFileRows(path, offset, shape, dtype)
