"""tf.data input pipeline with a persistent on-disk cache of resized images.

Decoding a 2048x1000 GC10 JPEG costs far more than the rest of the pipeline, so each image is
decoded **once per target size and resize policy** and stored as a small lossless PNG under
``<cache>/images/<policy>_<size>/``. Later epochs, runs and notebooks read those instead.

Resize policies (``policy``):

* ``stretch`` – resize to ``size x size`` ignoring the aspect ratio (GC10's 2.05:1 becomes 1:1);
* ``pad`` – keep the aspect ratio, scale the long side to ``size`` and pad the short side
  symmetrically with black (value 0). :func:`resize_geometry` gives the mapping, so boxes and
  CAMs can be mapped back to the original image.

Images leave the pipeline as float32 RGB in 0..255 (grayscale is repeated to three channels);
each model applies its own backbone preprocessing inside itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gc10lib import progress, settings
from gc10lib.config import AUG_OPS, POLICIES
from gc10lib.data import DECODE_ERRORS
from gc10lib.errors import InputError

PREFETCH = 2  # fixed: AUTOTUNE sometimes left predict/fit idle for seconds on 2-core CPUs
PARALLEL = 2


class ImageReadError(InputError):
    """An image file that cannot be decoded; the message names the file."""


@dataclass(frozen=True)
class Geometry:
    """Maps original-image pixel coordinates to model-input coordinates: ``x' = x*sx + ox``."""

    sx: float
    sy: float
    ox: float
    oy: float
    out_w: int
    out_h: int

    def to_input(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        return (x0 * self.sx + self.ox, y0 * self.sy + self.oy, x1 * self.sx + self.ox, y1 * self.sy + self.oy)

    def to_original(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        return ((x0 - self.ox) / self.sx, (y0 - self.oy) / self.sy, (x1 - self.ox) / self.sx, (y1 - self.oy) / self.sy)


def resize_geometry(width: int, height: int, size: int, policy: str = "stretch") -> Geometry:
    """The affine map from a ``width x height`` image to the ``size x size`` model input."""
    if policy == "stretch":
        return Geometry(size / width, size / height, 0.0, 0.0, size, size)
    if policy == "pad":
        s = size / max(width, height)
        nw, nh = max(1, round(width * s)), max(1, round(height * s))
        return Geometry(nw / width, nh / height, (size - nw) // 2, (size - nh) // 2, size, size)
    raise InputError(f"unknown resize policy {policy!r}; expected one of {POLICIES}")


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb8(im: Image.Image) -> np.ndarray:
    """A Pillow image as uint8 RGB. 16-bit grayscale (common in industrial cameras) is scaled to
    8 bit (``round(v / 257)``), not clipped as ``convert("RGB")`` would; alpha is dropped."""
    if im.mode == "F":  # 32-bit float: 0..1 is scaled to 0..255, anything else clipped (no NaN)
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        gray = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in HIGH_BIT_MODES:
        a = np.asarray(im, dtype=np.float64)
        gray = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB, raising :class:`ImageReadError` naming the file."""
    try:
        with Image.open(path) as im:
            return to_rgb8(im)
    except DECODE_ERRORS as exc:
        raise ImageReadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def resize_array(img: np.ndarray, size: int, policy: str = "stretch") -> np.ndarray:
    """Resize a uint8 RGB array to ``size x size`` under ``policy`` (bilinear, antialiased)."""
    h, w = img.shape[:2]
    g = resize_geometry(w, h, size, policy)
    if policy == "stretch":
        return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    nw, nh = round(w * g.sx), round(h * g.sy)
    small = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)
    out[int(g.oy) : int(g.oy) + nh, int(g.ox) : int(g.ox) + nw] = small
    return out


PNG_END = b"IEND\xaeB`\x82"


def _complete_png(path: Path) -> bool:
    """Whether a cache entry ends like a whole PNG (a zero-byte or cut-off file is rebuilt, not trusted)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-len(PNG_END), os.SEEK_END)
            return fh.read() == PNG_END
    except OSError:
        return False


def _cache_key(path: Path) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


class ImageCache:
    """Persistent cache of resized uint8 images, one PNG per (source file, size, policy)."""

    def __init__(self, size: int, policy: str = "stretch", cache_dir: str | Path | None = None):
        if policy not in POLICIES:
            raise InputError(f"unknown resize policy {policy!r}; expected one of {POLICIES}")
        self.size, self.policy = int(size), policy
        self.dir = settings.writable_dir(
            Path(cache_dir or settings.cache_dir()) / "images" / f"{policy}_{self.size}",
            "the image cache (set GC10_CACHE_DIR to a writable folder)",
        )
        self.hits = self.misses = 0

    def cached_path(self, src: str | Path) -> Path:
        return self.dir / f"{_cache_key(Path(src))}.png"

    def ensure_one(self, src: str | Path) -> str:
        """Cached PNG path for one file (decoding and resizing it if needed)."""
        return self._ensure_one(str(src))

    def _ensure_one(self, src: str) -> str:
        dst = self.cached_path(src)
        if dst.is_file() and _complete_png(dst):
            self.hits += 1
            return str(dst)
        self.misses += 1
        arr = resize_array(load_rgb(src), self.size, self.policy)
        tmp = dst.with_suffix(f".{os.getpid()}.tmp.png")
        Image.fromarray(arr).save(tmp, compress_level=1)
        tmp.replace(dst)
        return str(dst)

    def ensure(self, paths: Sequence[str | Path], workers: int = PARALLEL) -> list[str]:
        """Cached PNG paths for ``paths``, decoding and resizing only those not yet cached."""
        desc = f"caching {self.policy} {self.size}px images"
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(progress.bar(pool.map(self._ensure_one, map(str, paths)), total=len(paths), desc=desc))

    def load(self, paths: Sequence[str | Path]) -> np.ndarray:
        """All images as one uint8 array ``(n, size, size, 3)``."""
        cached = self.ensure(paths)
        return (
            np.stack([np.asarray(Image.open(p).convert("RGB")) for p in cached])
            if cached
            else np.zeros((0, self.size, self.size, 3), np.uint8)
        )


def aug_ops(augment) -> tuple[str, ...]:
    """The augmentation ops that ``augment`` asks for: ``True`` all of :data:`AUG_OPS`, ``False``
    none, or a list of op names (e.g. ``[flip]`` where intensity carries the label, as in EL images)."""
    if augment is True:
        return AUG_OPS
    if not augment:
        return ()
    ops = (augment,) if isinstance(augment, str) else tuple(augment)
    unknown = sorted(set(ops) - set(AUG_OPS))
    if unknown:
        raise InputError(f"unknown augmentation {unknown}; expected True, False or a list of {list(AUG_OPS)}")
    return tuple(o for o in AUG_OPS if o in ops)


def augmenter(seed: int, ops: tuple[str, ...] = AUG_OPS):
    """The train-time augmentation: flips, small shifts, small brightness/contrast changes (``ops``).

    Works on float 0..255 images; seeded so that a run is repeatable.
    """
    # lazy: keras/TensorFlow take seconds to import; data tools and the EDA do not need them
    import keras

    layers = {
        "flip": lambda: keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        "shift": lambda: keras.layers.RandomTranslation(0.05, 0.05, fill_mode="reflect", seed=seed + 1),
        "brightness": lambda: keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 2),
        "contrast": lambda: keras.layers.RandomContrast(0.1, seed=seed + 3),
    }
    return keras.Sequential([layers[o]() for o in aug_ops(list(ops))], name="augment")


def make_dataset(
    paths: Sequence[str | Path],
    labels: Sequence[int] | None,
    size: int,
    *,
    policy: str = "stretch",
    batch_size: int = 32,
    training: bool = False,
    augment: bool | Sequence[str] = False,
    seed: int = 42,
    cache_dir: str | Path | None = None,
    cache: ImageCache | None = None,
):
    """A batched ``tf.data.Dataset`` of ``(image float32 0..255, label int32)`` (or images only).

    Shuffles (seeded) only when ``training``; augments (seeded) only when ``augment`` is set, which
    callers do for the train split alone. Fixed prefetch and parallelism.
    """
    # lazy: TensorFlow takes seconds to import; data tools and the EDA do not need it
    import tensorflow as tf

    cache = cache or ImageCache(size, policy, cache_dir)
    files = cache.ensure(paths)

    def decode(f):
        img = tf.io.decode_png(tf.io.read_file(f), channels=3)
        img = tf.ensure_shape(img, (size, size, 3))
        return tf.cast(img, tf.float32)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if labels is not None:
        lab = tf.constant(np.asarray(labels, dtype=np.int32))
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(lab)))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if labels is not None:
        ds = ds.map(lambda f, y: (decode(f), y), num_parallel_calls=PARALLEL, deterministic=True)
    else:
        ds = ds.map(decode, num_parallel_calls=PARALLEL, deterministic=True)
    ds = ds.batch(batch_size)
    ops = aug_ops(augment)
    if ops:
        aug = augmenter(seed, ops)
        if labels is not None:
            ds = ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=1)
        else:
            ds = ds.map(lambda x: aug(x, training=True), num_parallel_calls=1)
    return ds.prefetch(PREFETCH)


def uncached_dataset(paths: Sequence[str | Path], labels: Sequence[int], size: int, batch_size: int = 32):
    """The naive pipeline (decode + resize every epoch), kept for the benchmark only."""
    # lazy: as in make_dataset
    import tensorflow as tf

    def load(f, y):
        img = tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False)
        img = tf.image.resize(tf.cast(img, tf.float32), (size, size))
        return img, y

    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], np.asarray(labels, np.int32)))
    return ds.map(load, num_parallel_calls=PARALLEL).batch(batch_size).prefetch(PREFETCH)
