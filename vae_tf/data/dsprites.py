"""A procedural dSprites-like generator (Matthey, Higgins, Hassabis, Lerchner 2017).

dSprites (google-deepmind/dsprites-dataset) holds every combination of five generative factors
once, 737 280 binary 64 x 64 images. This module reproduces its factor grid, its storage order
and index formula exactly, and renders the images on demand (nothing is downloaded):

========  ===========  ====================================================================
idx       factor       values
========  ===========  ====================================================================
0         shape        3 classes: 1 = square, 2 = ellipse, 3 = heart (values 1, 2, 3)
1         scale        6: ``linspace(0.5, 1, 6)``
2         orientation  40: ``linspace(0, 2*pi, 40)`` (step 2*pi/39; 0 and 2*pi both present,
                       as in the original, issue #7)
3         pos_x        32: ``linspace(0, 1, 32)``
4         pos_y        32: ``linspace(0, 1, 32)``
========  ===========  ====================================================================

The original's constant colour factor (1 value) is left out, so the bases are
``[245760, 40960, 1024, 32, 1]`` (pos_y fastest) and ``index = sum(class_f * base_f)``.

Geometry (ours; the original's LÖVE margins and sprite sizes are unknown). Everything lives on a
unit canvas ``[0, 1]^2``; x grows to the right (pos_x -> column), y grows downwards
(pos_y -> row). A sprite of scale ``s`` and orientation ``t`` is centred at
``MARGIN + pos * (1 - 2 * MARGIN)`` on each axis and rotated counter-clockwise (as seen on
screen) about that centre. At scale 1:

- square: half side ``SQUARE_HALF_SIDE = 0.15`` (bounding radius 0.2121);
- ellipse: semi-axes ``ELLIPSE_SEMI_AXES = (0.2, 0.1)`` along x and y before rotation
  (bounding radius 0.2);
- heart: the implicit curve ``(a^2 + b^2 - 1)^3 - a^2 b^3 <= 0`` in units of
  ``HEART_UNIT = 0.15``, shifted by ``HEART_Y_OFFSET = 0.118`` so the centre of its bounding box
  is the sprite centre (bounding radius 0.2014), tip pointing down at orientation 0.

``MARGIN = 0.25`` exceeds every bounding radius at scale 1 (at most 0.2125) by more than 1/32,
so at any position, scale and rotation the whole sprite lies inside the canvas and the outermost
ring of pixels stays background even at 32 x 32. Rasterisation is binary and deterministic: a
pixel is 1 when its centre ``((j + 0.5) / S, (i + 0.5) / S)`` lies inside the shape (no
anti-aliasing, like the original). ``image_size=32`` samples the same geometry at 32 x 32
(faster; a position step is then about half a pixel, so neighbouring positions can give the same
image).

Numbers obtained on these images are comparable only with numbers on identical generated arrays
(same ``GENERATOR_VERSION``, image size and seed), never with published dSprites results.
"""

from __future__ import annotations

import functools

import numpy as np

from vae_tf.data.registry import register_dataset
from vae_tf.data.splits import DataSplits, SplitPlan
from vae_tf.data.validation import is_int
from vae_tf.errors import DataError

GENERATOR_VERSION = "1"
FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
# index = sum(class_f * base_f); base_f = N / cumprod(sizes)[f] (pos_y fastest, as stored).
FACTOR_BASES: tuple[int, ...] = (245760, 40960, 1024, 32, 1)
NUM_COMBINATIONS = 737280
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")

MARGIN = 0.25
SQUARE_HALF_SIDE = 0.15
ELLIPSE_SEMI_AXES = (0.2, 0.1)
HEART_UNIT = 0.15
HEART_Y_OFFSET = 0.118
# Largest distance of any shape point from the sprite centre at scale 1 (the square's corner,
# 0.15 * sqrt(2) = 0.2121; ellipse 0.2, heart 0.2014), rounded up. MARGIN must exceed it.
BOUNDING_RADIUS = 0.2125

# Values of every factor class, exactly the original's definitions.
FACTOR_GRID: tuple[np.ndarray, ...] = (
    np.array([1.0, 2.0, 3.0]),
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2.0 * np.pi, 40),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)

_RENDER_CHUNK = 1024  # sprites per vectorised block: temporaries stay under ~8 MiB at 64 x 64


def _inside_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF_SIDE


def _inside_ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    a, b = ELLIPSE_SEMI_AXES
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _inside_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    a = u / HEART_UNIT
    b = v / HEART_UNIT + HEART_Y_OFFSET
    a2 = a * a
    return (a2 + b * b - 1.0) ** 3 - a2 * b**3 <= 0.0


_INSIDE = (_inside_square, _inside_ellipse, _inside_heart)


class DSpritesGenerator:
    """Factor grid, index arithmetic and on-demand rendering of dSprites-like images.

    Args:
        image_size: side ``S`` of the square images in pixels (64 like the original, or 32 for
            speed; any size >= 16 works, the geometry is resolution independent).
    """

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    factor_bases = FACTOR_BASES
    num_combinations = NUM_COMBINATIONS

    def __init__(self, image_size: int = 64):
        if not is_int(image_size) or image_size < 16:
            raise DataError(
                f"dSprites image_size must be an integer >= 16 (64 or 32), got {image_size!r}"
            )
        self.image_size = int(image_size)

    # -- factor arithmetic -------------------------------------------------------------------

    @staticmethod
    def _check_classes(classes) -> tuple[np.ndarray, bool]:
        arr = np.asarray(classes)
        single = arr.ndim == 1
        arr = np.atleast_2d(arr)
        if arr.ndim != 2 or arr.shape[1] != len(FACTOR_SIZES):
            raise DataError(
                f"factor classes must have shape (n, {len(FACTOR_SIZES)}) or "
                f"({len(FACTOR_SIZES)},), got {np.asarray(classes).shape}; one column per factor "
                f"{FACTOR_NAMES}"
            )
        if arr.dtype.kind not in "iu":
            raise DataError(
                f"factor classes must be integer class indices, got dtype {arr.dtype}"
            )
        sizes = np.asarray(FACTOR_SIZES)
        bad = (arr < 0) | (arr >= sizes)
        if bad.any():
            i, f = (int(k) for k in np.argwhere(bad)[0])
            raise DataError(
                f"factor class {int(arr[i, f])} of {FACTOR_NAMES[f]!r} (row {i}) is out of range; "
                f"it must lie in [0, {FACTOR_SIZES[f] - 1}]"
            )
        return arr.astype(np.int64), single

    def factor_values(self, classes) -> np.ndarray:
        """Map class indices ``(n, 5)`` (or ``(5,)``) to the original's latent values (float64).

        Shape values are 1, 2, 3 (square, ellipse, heart); the others come from the linspace
        grids of :data:`FACTOR_GRID`.
        """
        arr, single = self._check_classes(classes)
        values = np.stack([FACTOR_GRID[f][arr[:, f]] for f in range(len(FACTOR_SIZES))], axis=1)
        return values[0] if single else values

    def index_of(self, classes):
        """Index of each combination in the original storage order (``int`` for one row)."""
        arr, single = self._check_classes(classes)
        index = arr @ np.asarray(FACTOR_BASES, dtype=np.int64)
        return int(index[0]) if single else index

    def classes_of(self, index) -> np.ndarray:
        """Inverse of :meth:`index_of`: int64 classes ``(n, 5)`` (``(5,)`` for a scalar index)."""
        idx = np.asarray(index)
        if idx.dtype.kind not in "iu":
            raise DataError(f"dSprites indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= NUM_COMBINATIONS):
            raise DataError(
                f"dSprites index out of range [0, {NUM_COMBINATIONS - 1}]: "
                f"got values in [{int(idx.min())}, {int(idx.max())}]"
            )
        flat = idx.reshape(-1).astype(np.int64)
        bases = np.asarray(FACTOR_BASES, dtype=np.int64)
        sizes = np.asarray(FACTOR_SIZES, dtype=np.int64)
        classes = (flat[:, None] // bases) % sizes
        return classes[0] if idx.ndim == 0 else classes

    def sample_factors(self, n: int, random_state=None) -> np.ndarray:
        """Draw ``n`` int64 rows of class indices, every factor uniform and independent.

        ``random_state`` is anything ``np.random.default_rng`` accepts (int seed, Generator).
        This is how disentanglement_lib's ``dsprites_full`` samples factors.
        """
        if not is_int(n) or n < 0:
            raise DataError(f"number of dSprites samples must be a non-negative integer, got {n!r}")
        rng = np.random.default_rng(random_state)
        return np.stack(
            [rng.integers(0, size, size=int(n), dtype=np.int64) for size in FACTOR_SIZES], axis=1
        ).reshape(int(n), len(FACTOR_SIZES))

    # -- rendering ---------------------------------------------------------------------------

    def render(self, classes) -> np.ndarray:
        """Rasterise sprites: uint8 ``(n, S, S)`` with values in {0, 1} (``(S, S)`` for one row).

        Deterministic: the same classes give byte-identical images. Vectorised over blocks of
        sprites; cost is O(n * S^2).
        """
        arr, single = self._check_classes(classes)
        values = self.factor_values(arr)
        size = self.image_size
        out = np.zeros((len(arr), size, size), dtype=np.uint8)
        span = 1.0 - 2.0 * MARGIN
        # Only a window around each sprite is tested: every shape lies within BOUNDING_RADIUS *
        # scale of its centre, so pixels outside the window are background anyway.
        window = min(size, int(np.ceil(2.0 * BOUNDING_RADIUS * size)) + 2)
        steps = np.arange(window)
        for start in range(0, len(arr), _RENDER_CHUNK):
            v = values[start : start + _RENDER_CHUNK]
            shape = arr[start : start + _RENDER_CHUNK, 0]
            cx = MARGIN + v[:, 3] * span
            cy = MARGIN + v[:, 4] * span
            col0 = np.floor((cx - BOUNDING_RADIUS) * size).astype(np.int64)
            row0 = np.floor((cy - BOUNDING_RADIUS) * size).astype(np.int64)
            col0, row0 = np.clip(col0, 0, size - window), np.clip(row0, 0, size - window)
            cols = col0[:, None] + steps  # (b, W) pixel indices of each sprite's window
            rows = row0[:, None] + steps
            dx = ((cols + 0.5) / size - cx[:, None])[:, None, :]  # (b, 1, W)
            dy = (cy[:, None] - (rows + 0.5) / size)[:, :, None]  # (b, W, 1), y points up
            scale = v[:, 1, None, None]
            theta = v[:, 2, None, None]
            cos, sin = np.cos(theta), np.sin(theta)
            # Inverse rotation (by -theta) and scaling into the sprite's own frame.
            u = (cos * dx + sin * dy) / scale
            w = (cos * dy - sin * dx) / scale
            block = np.zeros(u.shape, dtype=bool)
            for s, inside in enumerate(_INSIDE):
                mask = shape == s
                if mask.any():
                    block[mask] = inside(u[mask], w[mask])
            sprite = np.arange(start, start + len(v))[:, None, None]
            out[sprite, rows[:, :, None], cols[:, None, :]] = block
        return out[0] if single else out


class DSpritesGroundTruth:
    """:class:`DSpritesGenerator` as :class:`vae_tf.metrics.disentanglement.GroundTruthData` (DLIB
    ``dsprites_full``):
    five factors (shape 3, scale 6, orientation 40, pos_x 32, pos_y 32), class indices drawn
    uniformly and independently, float32 ``(n, S, S, 1)`` images in {0, 1}. Rendering is
    deterministic, so ``random_state`` is not consumed by it."""

    def __init__(self, image_size: int = 64):
        self.generator = DSpritesGenerator(image_size)
        self.factor_sizes = tuple(int(s) for s in self.generator.factor_sizes)
        self.factor_names = tuple(self.generator.factor_names)

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return (self.generator.image_size, self.generator.image_size, 1)

    def sample_factors(self, num: int, random_state) -> np.ndarray:
        return self.generator.sample_factors(int(num), random_state)

    def sample_observations_from_factors(self, factors, random_state=None) -> np.ndarray:
        return self.generator.render(np.asarray(factors, dtype=np.int64)).astype(np.float32)[..., None]

    def sample(self, num: int, random_state) -> tuple[np.ndarray, np.ndarray]:
        factors = self.sample_factors(num, random_state)
        return factors, self.sample_observations_from_factors(factors, random_state)



@register_dataset("dsprites", modality="image")
def load_dsprites(plan: SplitPlan, *, n_samples: int = 20000, image_size: int = 64) -> DataSplits:
    """Procedural dSprites-like images with ground-truth factors (see the module docstring).

    Source: :class:`DSpritesGenerator` (no download; ``GENERATOR_VERSION`` in the metadata).
    ``n_samples`` factor rows are drawn uniformly and independently (as disentanglement_lib's
    ``dsprites_full`` does) from a child stream of ``plan.seed``, split by ``plan`` and rendered
    (only the kept rows are rendered, so ``max_samples`` makes quick runs cheap).

    Options:
        n_samples: number of images to draw before splitting (default 20000).
        image_size: 64 (default, like the original) or 32.

    Returns:
        float32 ``(N, S, S, 1)`` with values exactly {0, 1} (``binary=True``, no scaling);
        ``factors_*`` int64 ``(N, 5)`` class indices with ``factor_names`` / ``factor_sizes``;
        ``y_*`` is the shape class (0 square, 1 ellipse, 2 heart) for probes.
    """
    if not is_int(n_samples) or n_samples < 1:
        raise DataError(
            f"dsprites n_samples must be a positive integer, got {n_samples!r}; "
            "set data.options.n_samples (e.g. 20000)"
        )
    if image_size not in (32, 64) or isinstance(image_size, bool):
        raise DataError(f"dsprites image_size must be 64 or 32, got {image_size!r}")
    generator = DSpritesGenerator(int(image_size))
    factor_rng = np.random.default_rng(np.random.SeedSequence(int(plan.seed)).spawn(1)[0])
    factors = generator.sample_factors(int(n_samples), factor_rng)
    train, val, test = plan.indices(int(n_samples))

    def x(idx):
        return generator.render(factors[idx]).astype(np.float32)[..., None]

    x_train, x_val, x_test = x(train), x(val), x(test)
    return DataSplits(
        name="dsprites",
        x_train=x_train,
        x_val=x_val,
        x_test=x_test,
        y_train=factors[train, 0],
        y_val=factors[val, 0],
        y_test=factors[test, 0],
        factors_train=factors[train],
        factors_val=factors[val],
        factors_test=factors[test],
        factor_names=FACTOR_NAMES,
        factor_sizes=FACTOR_SIZES,
        value_range=(0.0, 1.0),
        binary=True,
        ground_truth=functools.partial(DSpritesGroundTruth, image_size),
        metadata={
            "source": "vae_tf.data.dsprites.DSpritesGenerator (procedural, dSprites-like)",
            "generator_version": GENERATOR_VERSION,
            "image_size": int(image_size),
            "n_samples": int(n_samples),
            "margin": MARGIN,
            "scaling": "none (binary {0, 1})",
            "test_split": "random",
            **plan.as_metadata(),
            "n_train": int(len(train)),
            "n_val": int(len(val)),
            "n_test": int(len(test)),
        },
    )
