"""User data: ``.npz`` / ``.npy`` arrays and folders of PNG / JPEG images.

Scaling rules, the same for every loader here:

- ``uint8`` values are divided by 255 to ``[0, 1]`` — unless every value is 0 or 1 (binary data
  stored as ``uint8``, e.g. the original dSprites ``imgs``), which is kept as is;
- ``bool`` becomes 0.0 / 1.0;
- other integer and float arrays are kept as they are (cast to float32) and their
  ``value_range`` is the observed (min, max) over the whole source;
- image files are 8-bit and always divided by 255.

``binary`` is True when every converted value is exactly 0 or 1. Arrays of shape ``(N, D)`` stay
vectors, ``(N, H, W)`` gets a channel axis, ``(N, H, W, C)`` is kept. Splits follow the seeded
:class:`~vae_tf.data.splits.SplitPlan`; the raw arrays are indexed before conversion, so
``max_samples`` bounds the memory of a quick run.

Each loader is an *opener* returning :class:`~vae_tf.data.lazy.LazySplits` (the checks and the
value range come from one block-by-block scan of the raw data; rows are read when asked for);
``load_dataset`` materialises it, ``open_dataset`` returns it. What stays on disk: ``.npy`` files
and arrays that ``np.savez`` stored uncompressed in a ``.npz`` (read by row with positioned reads,
:mod:`vae_tf.data.rows`) and image files (decoded per chunk). What is held in memory: arrays
compressed by ``np.savez_compressed`` (in their stored dtype: they cannot be read by row),
Fortran-order ``.npy`` files (memory-mapped), labels and factors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vae_tf.data.lazy import LazySplits, Segment, SplitRows, choose_scaling
from vae_tf.data.registry import register_lazy_dataset
from vae_tf.data.rows import ArrayRows, npy_rows, npz_member_rows
from vae_tf.data.splits import DataSplits, SplitPlan
from vae_tf.data.validation import exception_cause, is_int, joint_class_codes, validate_array
from vae_tf.errors import DataError

X_KEYS = ("x", "images", "x_train", "imgs")
Y_KEYS = ("y", "labels")
FACTOR_KEYS = ("factors", "latents_classes")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# -- paths ----------------------------------------------------------------------------------


def _require_file(name: str, path, suffix: str, hint: str) -> Path:
    if path is None:
        raise DataError(f"data set {name!r} needs a path: set data.path to a {suffix} file")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"no such file: {str(p)!r} (data.path); check the path")
    if not p.is_file():
        raise DataError(f"{str(p)!r} is not a file; data set {name!r} needs a {suffix} file")
    if p.suffix.lower() != suffix:
        raise DataError(f"expected a {suffix} file, got {str(p)!r}; {hint}")
    return p


def _unreadable(p: Path, what: str, exc: Exception) -> DataError:
    cause = exception_cause(exc)
    return DataError(f"could not read {str(p)!r} as {what} ({cause}); check or re-create the file")


# -- arrays -> splits -----------------------------------------------------------------------


#: How to go on without labels that cannot be read, said after each of their errors.
#: Pillow modes of more than 8 bits per channel, which ``convert("L" / "RGB")`` clips at 255.
WIDE_IMAGE_MODES = {"I;16": "16-bit", "I;16L": "16-bit", "I;16B": "16-bit", "I;16N": "16-bit", "I": "32-bit integer",
                    "F": "32-bit float"}
_NO_LABELS = "; or leave them out: data.options.labels false (training), --no-labels (vae-tf embed)"


def _labels(arrays: list[np.ndarray], what: str) -> tuple[list[np.ndarray], list[str] | None]:
    """int64 class indices from integer, integral float or string labels (joint encoding)."""
    fixed = []
    for arr in arrays:
        arr = np.asarray(arr)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise DataError(
                f"{what} has shape {arr.shape}; labels must be one value per example (N,){_NO_LABELS}"
            )
        fixed.append(arr)
    kinds = {a.dtype.kind for a in fixed}
    if kinds <= {"f"} and not all(np.all(np.isfinite(a)) and np.all(a == np.round(a)) for a in fixed):
        raise DataError(f"{what} holds non-integer values; labels must be class indices{_NO_LABELS}")
    if kinds <= {"i", "u", "b"} or kinds <= {"f"}:
        lowest = min((a.min() for a in fixed if a.size), default=0)
        if lowest < 0:  # e.g. -1 for "unlabelled": a class to the probe, refused by pretraining after the run began
            raise DataError(f"{what} holds negative values (e.g. {lowest:g}); labels must be class indices >= 0"
                            f"{_NO_LABELS}")
        return [a.astype(np.int64) for a in fixed], None
    if kinds <= {"U", "S"}:
        codes, names = joint_class_codes(fixed)
        return codes, [str(n) for n in names]
    raise DataError(f"{what} has dtype {fixed[0].dtype}; labels must be integers or strings{_NO_LABELS}")


def _open_arrays(
    name: str,
    plan: SplitPlan,
    *,
    x,
    y: np.ndarray | None = None,
    factors: np.ndarray | None = None,
    x_test=None,
    y_test: np.ndarray | None = None,
    metadata: dict,
) -> LazySplits:
    """Check raw data (row readers of :mod:`vae_tf.data.rows` for ``x`` / ``x_test``; labels and
    factors in memory) and cut it by ``plan`` (official test when ``x_test`` is given) into lazy
    splits. Every value is scanned once, block by block, for the checks and the value range."""
    # Name the file in messages: a NaN found here is reported by training and `vae-tf embed` alike.
    where = f" in {metadata['source']!r}" if metadata.get("source") else ""
    lo, hi = validate_array(x, what=f"{name} data{where}")
    n = len(x)
    if x_test is not None:
        t_lo, t_hi = validate_array(x_test, what=f"{name} x_test{where}")
        if x_test.shape[1:] != x.shape[1:] or x_test.dtype.kind != x.dtype.kind:
            raise DataError(
                f"{name}: x_test has shape {x_test.shape[1:]} / dtype {x_test.dtype} per "
                f"example but x_train has {x.shape[1:]} / {x.dtype}; save both with the same layout"
            )
        lo, hi = min(lo, t_lo), max(hi, t_hi)
    for what, arr in (("y", y), ("y_test", y_test), ("factors", factors)):
        if arr is None:
            continue
        expected = len(x_test) if what == "y_test" else n
        if len(arr) != expected:
            raise DataError(
                f"{name}: {what} has {len(arr)} rows but the data has {expected}; "
                "give one row per example"
            )
    if (y is None) != (y_test is None) and x_test is not None:
        raise DataError(
            f"{name}: labels are given for only one of train and test; give both or neither"
        )

    if x.dtype.kind == "f" and x.dtype.itemsize > 4:
        biggest = max(abs(float(lo)), abs(float(hi)))  # the values are finite (checked above)
        if biggest > float(np.finfo(np.float32).max):
            raise DataError(
                f"{name} values reach {biggest:.4g}, beyond float32 (max 3.4e38); "
                "rescale the data before training"
            )
    scaling, declared = choose_scaling(x.dtype, hi)
    value_range = (float(lo), float(hi)) if declared is None else declared

    class_names = None
    if y is not None:
        given = [y] if y_test is None else [y, y_test]
        encoded, class_names = _labels(given, f"{name} labels")
        y = encoded[0]
        y_test = encoded[1] if y_test is not None else None

    factor_sizes = factor_names = None
    if factors is not None:
        factors = np.asarray(factors)
        if x_test is not None:
            raise DataError(
                f"{name}: factors are supported only without an official x_test split; "
                "save all examples under 'x' with their 'factors' and let the loader split them"
            )
        bad = factors.ndim != 2 or factors.size == 0 or factors.dtype.kind not in "iu"
        if bad or factors.min() < 0:
            raise DataError(
                f"{name}: factors must be non-negative integer class indices of shape "
                f"(N, n_factors), got shape {factors.shape} and dtype {factors.dtype}"
            )
        factors = factors.astype(np.int64)
        factor_sizes = tuple(int(s) for s in factors.max(axis=0) + 1)
        factor_names = tuple(f"factor_{i}" for i in range(factors.shape[1]))

    if x_test is not None:
        train, val, test = plan.indices_with_official_test(n, len(x_test))
        sources = {"train": (x, y), "val": (x, y), "test": (x_test, y_test)}
        test_split = "official"
    else:
        train, val, test = plan.indices(n)
        sources = {"train": (x, y), "val": (x, y), "test": (x, y)}
        test_split = "random"
    indices = {"train": train, "val": val, "test": test}
    splits = {
        k: SplitRows(
            [Segment(sources[k][0], idx, scaling)],
            None if sources[k][1] is None else sources[k][1][idx],
            None if factors is None else factors[idx],
        )
        for k, idx in indices.items()
    }
    meta = {
        **metadata,
        "scaling": scaling,
        "test_split": test_split,
        **plan.as_metadata(),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "n_test": int(len(test)),
    }
    if class_names is not None:
        meta["class_names"] = class_names
    return LazySplits(
        name=name,
        splits=splits,
        factor_names=factor_names,
        factor_sizes=factor_sizes,
        value_range=value_range,
        metadata=meta,
    )


# -- loaders --------------------------------------------------------------------------------


def open_npz(plan: SplitPlan, *, path: str | None = None, labels: bool = True) -> LazySplits:
    """Arrays from a NumPy ``.npz`` archive (``np.savez``), loaded without pickle.

    Keys: the data under ``x``, ``images``, ``x_train`` or ``imgs`` (the first present);
    optional labels under ``y`` or ``labels`` (``y_train`` with ``x_train``); optional factor
    class indices under ``factors`` or ``latents_classes``. A Keras-style archive with ``x_train``
    and ``x_test`` (and ``y_train`` / ``y_test``) keeps its official test split, so a
    ``mnist.npz`` fetched elsewhere can be used offline. ``labels: false`` reads no labels (ones
    that are not class indices, or that must not be used).

    Memory: a data array that ``np.savez`` stored (uncompressed, C order) is read from the archive
    row by row, like a ``.npy`` file; one compressed by ``np.savez_compressed`` cannot be read by
    row and is decompressed into memory in its stored dtype. Labels and factors are read into
    memory.

    Returns:
        float32 data scaled by the module's rules (uint8 / 255; float kept, range observed),
        int64 labels where given (string labels are encoded in sorted order, names in
        ``metadata["class_names"]``), factors with ``factor_sizes = max + 1`` per column.
    """
    if not isinstance(labels, bool):  # "false" (a string) read the labels
        raise DataError(f"npz labels must be true or false, got {labels!r}")
    p = _require_file(
        "npz", path, ".npz", "use data set 'npy' for .npy files or 'images' for a folder"
    )

    def rows(archive, key):
        return npz_member_rows(p, key) or ArrayRows(archive[key])

    try:
        with np.load(p, allow_pickle=False) as archive:
            keys = list(archive.files)
            x_key = next((k for k in X_KEYS if k in keys), None)
            if x_key is None:
                raise DataError(
                    f"no data array in {str(p)!r}: expected key {', '.join(map(repr, X_KEYS))}, found "
                    f"{', '.join(map(repr, keys)) or 'no keys'}; save it with np.savez(path, x=...)"
                )
            x = rows(archive, x_key)
            official = x_key == "x_train" and "x_test" in keys
            y_keys = ("y_train",) + Y_KEYS if x_key == "x_train" else Y_KEYS
            y_key = next((k for k in y_keys if k in keys), None) if labels else None
            y = archive[y_key] if y_key else None
            x_test = rows(archive, "x_test") if official else None
            y_test = archive["y_test"] if official and "y_test" in keys and labels else None
            f_key = next((k for k in FACTOR_KEYS if k in keys), None)
            factors = archive[f_key] if f_key else None
            read = {x_key, y_key, f_key} | ({"x_test", "y_test"} if official else set())
            # arrays the archive holds that nothing reads (an x_val, an x_test beside x, a 'target'):
            # said by `vae-tf train` (they were ignored without a word)
            unread = [k for k in keys if k not in read and not (k in Y_KEYS + ("y_train", "y_test") and not labels)]
    except DataError:
        raise
    except Exception as exc:
        raise _unreadable(p, "a .npz archive", exc) from None
    return _open_arrays(
        "npz",
        plan,
        x=x,
        y=y,
        factors=factors,
        x_test=x_test,
        y_test=y_test,
        metadata={"source": str(p), "x_key": x_key, "y_key": y_key, **({"unread_keys": unread} if unread else {})},
    )


def open_npy(plan: SplitPlan, *, path: str | None = None) -> LazySplits:
    """One unlabelled array from a NumPy ``.npy`` file (``np.save``), no pickle.

    Memory: a C-order file (what ``np.save`` writes for ordinary arrays) is read row by row with
    positioned reads, never held whole; a Fortran-order file is memory-mapped (its rows are not
    contiguous), so the pages read stay resident.

    Returns:
        float32 data scaled by the module's rules (uint8 / 255; float kept, range observed),
        no labels, random test split.
    """
    p = _require_file(
        "npy", path, ".npy", "use data set 'npz' for .npz archives or 'images' for a folder"
    )
    try:
        x = npy_rows(np.load(p, mmap_mode="r", allow_pickle=False))
    except Exception as exc:
        raise _unreadable(p, "a .npy array", exc) from None
    return _open_arrays("npy", plan, x=x, metadata={"source": str(p)})


class ImageRows:
    """Image files as a row reader: ``take(rows)`` reads and stacks those files (uint8)."""

    def __init__(self, files: list[Path], read, shape: tuple[int, ...]):
        self.files, self.read = files, read
        self.shape = (len(files),) + tuple(shape)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros((0,) + self.shape[1:], dtype=np.uint8)
        return np.stack([self.read(self.files[int(i)]) for i in rows])


def _images(plan: SplitPlan, path, image_size, grayscale, *, keep: bool) -> LazySplits:
    """The image folder as lazy splits. Every kept image is read once here, in split order
    (train, val, test), for the checks; ``keep`` holds the decoded images (the eager loader),
    otherwise they are read again when their rows are asked for."""
    from PIL import Image  # noqa: PLC0415 - Pillow only when images are read

    if path is None:
        raise DataError(
            "data set 'images' needs a path: set data.path to a folder of PNG/JPEG files"
        )
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"no such folder: {str(root)!r} (data.path); check the path")
    if not root.is_dir():
        raise DataError(
            f"{str(root)!r} is not a folder; data set 'images' needs a folder of PNG/JPEG files "
            "(use 'npz' or 'npy' for array files)"
        )
    if image_size is not None and (not is_int(image_size) or image_size < 1):
        raise DataError(f"images image_size must be a positive integer or null, got {image_size!r}")
    if not isinstance(grayscale, (bool, np.bool_)):
        raise DataError(f"images grayscale must be true or false, got {grayscale!r}")

    def is_image(p: Path) -> bool:
        return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")

    top = sorted(p for p in root.iterdir() if is_image(p))
    classes = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in d.rglob("*") if is_image(p))
        if files:
            classes.append((d.name, files))
    if top and classes:
        raise DataError(
            f"{str(root)!r} has images both at top level (e.g. {top[0].name!r}) and in class "
            "sub-folders; put every image in a class sub-folder, or none"
        )
    if classes:
        files = [f for _, fs in classes for f in fs]
        labels = np.concatenate(
            [np.full(len(fs), i, dtype=np.int64) for i, (_, fs) in enumerate(classes)]
        )
    else:
        files, labels = top, None
    if not files:
        raise DataError(
            f"no PNG/JPEG files in {str(root)!r}; put images (.png, .jpg, .jpeg) in it or in "
            "one sub-folder per class"
        )

    mode = "L" if grayscale else "RGB"
    ref: dict = {}

    def read(f: Path) -> np.ndarray:
        try:
            with Image.open(f) as im:
                if im.mode in WIDE_IMAGE_MODES:  # convert() clips them at 255: nearly every pixel white
                    raise DataError(f"image {str(f)!r} has {WIDE_IMAGE_MODES[im.mode]} pixels (Pillow mode {im.mode}), "
                                    "but image folders are read as 8-bit (0-255); convert the images to 8 bits, or "
                                    "save the arrays scaled to [0, 1] with np.savez and use data set npz")
                im = im.convert(mode)
                if image_size is not None:
                    im = im.resize((int(image_size), int(image_size)), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except DataError:
            raise
        except Exception as exc:
            cause = exception_cause(exc)
            raise DataError(
                f"could not read image {str(f)!r} ({cause}); remove or fix the file"
            ) from None
        if not ref:
            ref.update(shape=arr.shape, file=f)
        elif arr.shape != ref["shape"]:
            h, w = arr.shape[:2]
            rh, rw = ref["shape"][:2]
            raise DataError(
                f"image {str(f)!r} is {w}x{h} but {str(ref['file'].relative_to(root))!r} is {rw}x{rh}; all "
                "images must share one size: resize them or set the images option image_size "
                "(data.options.image_size)"
            )
        return arr

    train, val, test = plan.indices(len(files))
    indices = {"train": train, "val": val, "test": test}
    kept = {}
    for split, idx in indices.items():
        images = [] if keep else None
        for i in idx:
            image = read(files[i])
            if keep:
                images.append(image)
        if keep:
            kept[split] = (
                np.stack(images) if images else np.zeros((0,) + ref["shape"], dtype=np.uint8)
            )
    if keep:
        segments = {
            k: Segment(ArrayRows(v), np.arange(len(v), dtype=np.int64), "x / 255")
            for k, v in kept.items()
        }
    else:
        reader = ImageRows(files, read, ref["shape"])
        segments = {k: Segment(reader, idx, "x / 255") for k, idx in indices.items()}
    splits = {
        k: SplitRows([segments[k]], None if labels is None else labels[idx])
        for k, idx in indices.items()
    }
    meta = {
        "source": str(root),
        "n_files": len(files),
        "image_size": None if image_size is None else int(image_size),
        "grayscale": bool(grayscale),
        "scaling": "x / 255",
        "test_split": "random",
        **plan.as_metadata(),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "n_test": int(len(test)),
    }
    if classes:
        meta["class_names"] = [name for name, _ in classes]
    return LazySplits(name="images", splits=splits, value_range=(0.0, 1.0), metadata=meta)


def open_images(
    plan: SplitPlan,
    *,
    path: str | None = None,
    image_size: int | None = None,
    grayscale: bool = True,
) -> LazySplits:
    """A folder of PNG / JPEG files read with Pillow.

    Layout: either all images directly in the folder (unlabelled) or one sub-folder per class
    (labels 0, 1, ... in sorted sub-folder order, names in ``metadata["class_names"]``; files
    are searched recursively inside each class folder; sub-folders without images are ignored).
    Files are listed in sorted order, split by ``plan``, and only the kept files are read.

    Options:
        image_size: resize every image to ``image_size x image_size`` (bilinear); without it all
            images must share one size.
        grayscale: True (default) reads ``L`` (one channel), False reads ``RGB`` (three).

    Memory: lazily (``open_dataset``) every kept image is decoded once to check it and again when
    its rows are read; only the file list and labels stay in memory.

    Returns:
        float32 ``(N, H, W, 1)`` (or ``C = 3``) scaled by ``x / 255`` to ``[0, 1]``; int64
        labels when the folder has class sub-folders.
    """
    return _images(plan, path, image_size, grayscale, keep=False)


def load_images(
    plan: SplitPlan,
    *,
    path: str | None = None,
    image_size: int | None = None,
    grayscale: bool = True,
) -> DataSplits:
    """:func:`open_images`, every image decoded once and held (what training needs)."""
    return _images(plan, path, image_size, grayscale, keep=True).materialise()


load_npz = register_lazy_dataset("npz", open_npz)
load_npy = register_lazy_dataset("npy", open_npy)
register_lazy_dataset("images", open_images, load_images, modality="image")
