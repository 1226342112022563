"""Cached pooled features of a frozen backbone: phase 1's fast path (the head and the probe train on
them instead of running the backbone every epoch).

:func:`extract_features` runs the whole model up to its ``pool`` layer over plain or augmented
images; :func:`features_from_maps` computes them from the map cache a map-head run fills anyway
(the trunk once per flip, the backbone above the cut on its maps). Both cache their arrays on
disk (:func:`feature_cache_path`), keyed by backbone, weights, size, data, view and augmentation,
so a rerun of the same configuration reads them back.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from gc10lib import maphead, progress
from gc10lib.backbones import weights_identity
from gc10lib.config import AUG_OPS, TrainConfig
from gc10lib.inputs import ImageCache, aug_ops, augmenter, make_dataset
from gc10lib.layers import tile_grid
from gc10lib.settings import cache_dir, writable_dir


def feature_cache_path(
    backbone: str,
    weights_id: str,
    size: int,
    policy: str,
    files: list[str],
    view: int,
    seed: int,
    ops: tuple[str, ...] = AUG_OPS,
    tiling: tuple[int, str] | None = None,
    from_maps: str | None = None,
) -> Path:
    """Disk location of cached pooled features, keyed by backbone, weights, size, data, view,
    augmentation, tiling (``(grid, pool)`` of a tiled classifier) and, for features computed from
    the map cache (:func:`features_from_maps`), the cut they were computed from."""
    parts = [backbone, weights_id, size, policy, files, view, seed if view else 0, keras.__version__]
    if view and tuple(ops) != AUG_OPS:
        parts.append(list(ops))
    if tiling is not None:
        parts.append({"tiles": list(tiling)})
    if from_maps is not None:
        parts.append({"from_maps": from_maps})
    key = json.dumps(parts)
    digest = hashlib.sha1(key.encode()).hexdigest()[:24]
    return cache_dir() / "features" / backbone / f"{size}_{policy}_v{view}_{digest}.npy"


def extract_features(
    model,
    paths: list[str],
    *,
    size: int,
    policy: str,
    weights_source: str,
    backbone: str,
    view: int = 0,
    seed: int = 42,
    batch_size: int = 32,
    verbose: int | str = 0,
    ops: tuple[str, ...] = AUG_OPS,
) -> tuple[np.ndarray, bool]:
    """Pooled backbone features for ``paths`` (view 0 plain, view k>0 augmented with its own seed).

    Cached on disk; returns ``(features, was_cached)``.
    """
    cache = ImageCache(size, policy)
    files = cache.ensure(paths)
    names = [Path(f).name for f in files]
    path = feature_cache_path(
        backbone, weights_identity(weights_source, seed), size, policy, names, view, seed, ops, tiling_of(model)
    )

    def compute() -> np.ndarray:
        extractor = keras.Model(model.inputs, model.get_layer("pool").output)
        ds = make_dataset(paths, None, size, policy=policy, batch_size=batch_size, cache=cache)
        if view:
            aug = augmenter(seed + 1000 * view, ops)
            ds = ds.map(lambda x: aug(x, training=True))
        bar = progress.predict_callback(int(np.ceil(len(paths) / batch_size)), f"{backbone} features, view {view}")
        return np.asarray(extractor.predict(ds, verbose=verbose, callbacks=[bar]), dtype=np.float32)

    return cached_features(path, len(paths), compute)


def cached_features(path: Path, n: int, compute) -> tuple[np.ndarray, bool]:
    """``(features, was_cached)``: the ``n`` rows cached at ``path``, else ``compute()``'s, saved there."""
    if path.is_file():
        try:
            feats = np.load(path)
            if feats.shape[0] == n:
                return feats, True
        except (OSError, ValueError, EOFError):
            pass  # a cut-off or corrupt entry is rebuilt below, never trusted
    feats = compute()
    writable_dir(path.parent, "the feature cache (set GC10_CACHE_DIR to a writable folder)")
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats, False


@dataclass(frozen=True)
class FeatureSource:
    """Where phase 1's pooled features come from: ``model`` (a gc10lib classifier whose backbone's
    weights are ``weights_source``) at ``size``, under ``cfg``'s policy, augmentation and seed."""

    model: keras.Model
    cfg: TrainConfig
    backbone: str
    size: int
    weights_source: str

    def view(self, paths: list[str], view: int) -> tuple[np.ndarray, bool]:
        """:func:`extract_features` of ``paths`` for ``view`` (0 plain, ``k`` augmented as ``cfg.augment`` says)."""
        return extract_features(
            self.model,
            paths,
            size=self.size,
            policy=self.cfg.policy,
            weights_source=self.weights_source,
            backbone=self.backbone,
            view=view,
            seed=self.cfg.seed,
            batch_size=self.cfg.batch_size,
            ops=aug_ops(self.cfg.augment),
        )


def features_from_images(
    src: FeatureSource, train_paths: list[str], val_paths: list[str], views: int
) -> tuple[list[np.ndarray], np.ndarray, list[bool]]:
    """Phase 1's pooled features, each view a pass of the whole model over the images (view 0 plain,
    view ``k`` augmented with its own seed; :func:`extract_features`). Returns ``(one feature array
    per train view, val features, cached flags)``."""
    out = [src.view(train_paths, v) for v in range(views)]
    xv, c = src.view(val_paths, 0)
    return [f for f, _ in out], xv, [*(c for _, c in out), c]


def features_from_maps(
    src: FeatureSource, train_paths: list[str], val_paths: list[str], views: int
) -> tuple[list[np.ndarray], np.ndarray, list[bool]]:
    """Phase 1's pooled features of a map-head run, from the trunk maps the map phase needs anyway.

    The trunk (the backbone below the cut) runs once per flip into the map cache; the pooled
    features are the backbone above the cut on those maps (:func:`gc10lib.maphead.pooled_from_maps`),
    so those images do not go through the whole backbone a second time. View 0 (plain) and the val
    images always come from the maps. An augmented view comes from them too when augmentation is
    flips only and every flip is cached (:func:`augmented_views_from_maps`): each image under a
    seeded random flip (:func:`gc10lib.maphead.flip_codes`). Any other augmented view is a pass of
    the whole model over augmented images, as without maps (:func:`extract_features`). The maps are
    float16, so their features differ from a float32 pass by float16 rounding (the hand-over check
    records the effect). Returns ``(one feature array per train view, val features, cached flags)``.
    """
    model, cfg, backbone, size = src.model, src.cfg, src.backbone, src.size
    maps_of, _, cut = maphead.map_source(model, cfg.map_fraction, backbone, size, cfg.policy, cfg.batch_size)
    flips = augmented_views_from_maps(cfg)
    plan = maphead.flip_codes(cfg.seed, views if flips else 1, len(train_paths))
    used = sorted({int(c) for codes in plan for c in np.unique(codes)})
    cache = ImageCache(size, cfg.policy)
    weights_id = weights_identity(src.weights_source, cfg.seed)

    def key(paths, view):
        names = [Path(f).name for f in cache.ensure(paths)]
        return feature_cache_path(
            backbone, weights_id, size, cfg.policy, names, view, cfg.seed, ("flip",), None, from_maps=cut
        )

    def view_features(codes):
        maps = [maps_of.maps(train_paths, c) for c in used]
        return maphead.pooled_from_maps(model, cut, maphead.MixedRows(maps, np.searchsorted(used, codes)))

    xs, cached = [], []
    for v, codes in enumerate(plan):
        f, c = cached_features(key(train_paths, v), len(train_paths), lambda codes=codes: view_features(codes))
        xs.append(f)
        cached.append(c)
    for v in range(len(plan), views):  # augmentation the maps do not hold: the whole model, as before
        f, c = src.view(train_paths, v)
        xs.append(f)
        cached.append(c)
    xv, c = cached_features(
        key(val_paths, 0), len(val_paths), lambda: maphead.pooled_from_maps(model, cut, maps_of.maps(val_paths, 0))
    )
    return xs, xv, [*cached, c]


def phase1_features(src: FeatureSource, train_paths: list[str], val_paths: list[str]):
    """Phase 1's pooled features, from wherever they are cheapest: the map cache of a map-head run
    (:func:`features_from_maps`), else passes of the whole model (:func:`features_from_images`).
    Returns ``(one array per train view, val features, cached flags, where they came from)``."""
    cfg = src.cfg
    views = max(1, int(cfg.aug_views)) if aug_ops(cfg.augment) else 1
    if not uses_maps_for_features(cfg):
        fetch, source = features_from_images, "images"
    elif views == 1 or augmented_views_from_maps(cfg):
        fetch, source = features_from_maps, "maps"
    else:  # the plain view and val from the maps, other augmentation from the whole model
        fetch, source = features_from_maps, "maps and images"
    xs, xv, cached = fetch(src, train_paths, val_paths, views)
    return xs, xv, cached, source


def uses_maps_for_features(cfg: TrainConfig) -> bool:
    """Whether phase 1 takes features from the map cache (:func:`features_from_maps`): a map-head
    run on cached features, in this process, untiled."""
    return bool(cfg.map_head) and cfg.head_mode == "features" and cfg.strategy != "multiworker" and int(cfg.tiles) <= 1


def augmented_views_from_maps(cfg: TrainConfig) -> bool:
    """Whether a map-head run's augmented views come from the maps too: flips only, and all four
    flips cached for the map phase, so no trunk pass is extra."""
    return aug_ops(cfg.augment) == ("flip",) and int(cfg.map_flips) == len(maphead.FLIPS)


def tiling_of(model) -> tuple[int, str] | None:
    """``(grid, pool)`` of a tiled classifier (:class:`gc10lib.layers.TileGrid`), else None."""
    grid = tile_grid(model)
    return None if grid is None else (int(grid.grid), str(model.get_layer("pool").mode))
