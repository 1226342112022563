"""Grad-CAM for gc10lib classifiers and ensembles, scored against the ground-truth VOC boxes.

Flow: an image at the model's input size -> Grad-CAM on the backbone's last convolutional
feature map (``BackboneSpec.cam_layer``, default the backbone's output) -> upsampled to the input
-> mapped back to the *original* image (undoing the stretch or pad of :func:`resize_geometry`)
-> pointing game and energy-in-box against the true class's boxes.

For an ensemble, each branch's CAM is computed on the branch's own input, mapped to the original
image and averaged with weights equal to the branch's probability for the target class.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from gc10lib import data, progress
from gc10lib.backbones import REGISTRY, load_model
from gc10lib.errors import InputError
from gc10lib.inference import labelled_subset
from gc10lib.inputs import ImageCache, resize_geometry
from gc10lib.layers import model_info, model_input_size, tile_grid
from gc10lib.maphead import is_map_head

Box = Sequence[float]


# --------------------------------------------------------------------------- scores on one CAM


def box_mask(shape: tuple[int, int], boxes: Sequence[Box]) -> np.ndarray:
    """Boolean ``(h, w)`` mask of the union of ``(x0, y0, x1, y1)`` pixel boxes."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        xa, xb = max(0, int(np.floor(x0))), min(w, int(np.ceil(x1)))
        ya, yb = max(0, int(np.floor(y0))), min(h, int(np.ceil(y1)))
        mask[ya:yb, xa:xb] = True
    return mask


def pointing_hit(cam: np.ndarray, boxes: Sequence[Box], tolerance: float = 15.0) -> bool | None:
    """Whether the CAM's maximum lies inside a box grown by ``tolerance`` pixels.

    ``None`` without boxes; a flat CAM points nowhere and counts as a miss.
    """
    if not len(boxes):
        return None
    if float(cam.max() - cam.min()) <= 1e-6:
        return False
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    cx, cy = x + 0.5, y + 0.5  # pixel centre
    return any(
        x0 - tolerance <= cx <= x1 + tolerance and y0 - tolerance <= cy <= y1 + tolerance for x0, y0, x1, y1 in boxes
    )


def energy_in_boxes(cam: np.ndarray, boxes: Sequence[Box]) -> float | None:
    """Share of the positive CAM mass inside the union of the boxes (``None`` without boxes)."""
    if not len(boxes):
        return None
    pos = np.clip(cam, 0, None)
    total = float(pos.sum())
    return float(pos[box_mask(cam.shape, boxes)].sum() / total) if total > 0 else 0.0


# --------------------------------------------------------------------------- geometry


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return tf.image.resize(a[..., None].astype(np.float32), (h, w), method="bilinear").numpy()[..., 0]


def cam_to_original(cam: np.ndarray, width: int, height: int, policy: str = "stretch") -> np.ndarray:
    """A CAM over the square model input, mapped onto the original ``width x height`` image."""
    size = cam.shape[0]
    g = resize_geometry(width, height, size, policy)
    x0, y0, x1, y1 = g.to_input((0, 0, width, height))
    crop = cam[int(round(y0)) : int(round(y1)), int(round(x0)) : int(round(x1))]
    return _resize(crop, height, width)


# --------------------------------------------------------------------------- Grad-CAM


def _branches(model) -> list:
    """The classifier sub-models of an ensemble, or ``[model]`` for a single classifier."""
    names = {layer.name for layer in model.layers}
    if "backbone" in names:
        return [model]
    found = [
        layer for layer in model.layers if hasattr(layer, "layers") and "backbone" in {sub.name for sub in layer.layers}
    ]
    if not found:
        raise InputError(f"model {model.name!r} has no gc10lib classifier inside (no 'backbone' layer)")
    return found


def _spec_of(classifier):
    backbones = model_info(classifier).backbones
    return REGISTRY.get(backbones[0]) if backbones else None


@lru_cache(maxsize=8)
def _feature_model(classifier):
    """Backbone input -> (CAM feature map, backbone output); built once per classifier, not per batch."""
    spec = _spec_of(classifier)
    backbone = classifier.get_layer("backbone")
    # a map head reads the cut backbone's maps: they are the CAM's feature map
    layer = spec.cam_layer if spec is not None and not is_map_head(classifier) else None
    outputs = [backbone.get_layer(layer).output, backbone.output] if layer else [backbone.output]
    return keras.Model(backbone.inputs, outputs), bool(layer)


@lru_cache(maxsize=8)
def _head_body(classifier):
    """Backbone output -> the input of the head's ``logits`` layer: the head up to its last layer for
    a map head; pooling and the feature standardization otherwise."""
    head = classifier.get_layer("head")
    if is_map_head(classifier):
        body = keras.Model(head.inputs, head.get_layer("logits").input)
        return lambda x: body(x, training=False)
    pool, norm = classifier.get_layer("pool"), head.get_layer("feature_norm")
    if tile_grid(classifier) is not None:  # per-tile pooling, then the tiles' pooling ("pool")
        per_tile = classifier.get_layer("tile_features")
        return lambda x: norm(pool(per_tile(x)))
    return lambda x: norm(pool(x))


def gradcam(classifier, images: np.ndarray, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of a single classifier at its input resolution.

    ``images``: ``(n, s, s, 3)`` RGB 0..255 at the classifier's input size; ``targets``: one class
    index per image. Returns CAMs ``(n, s, s)`` scaled to [0, 1] per image (zeros where no
    evidence is positive) and the class probabilities ``(n, n_classes)``. The class score is the
    pre-softmax logit.
    """
    feats, layer = _feature_model(classifier)
    pre, head = classifier.get_layer("preprocess"), classifier.get_layer("head")
    body = _head_body(classifier)
    dense = head.get_layer("logits")
    tiles = tile_grid(classifier)
    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = pre(x)
        out = feats(tiles(z) if tiles is not None else z, training=False)
        fmap, last = (out[0], out[1]) if layer else (out, out)
        logits = tf.matmul(body(last), dense.kernel) + dense.bias
        score = tf.reduce_sum(tf.gather(logits, np.asarray(targets), axis=1, batch_dims=1))
    grads = tape.gradient(score, fmap)
    if tiles is not None:  # per-tile maps back into whole-image maps, tile by tile
        grads, fmap = tiles.merge(grads), tiles.merge(fmap)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
    peak = cam.reshape(len(cam), -1).max(1)
    cam = np.where(peak[:, None, None] > 0, cam / np.maximum(peak, 1e-12)[:, None, None], 0.0)
    size = int(images.shape[1])
    up = np.stack([_resize(c, size, size) for c in cam]) if len(cam) else np.zeros((0, size, size))
    return np.clip(up, 0.0, 1.0), tf.nn.softmax(logits).numpy()


def model_cams(
    model, images: np.ndarray, targets: Sequence[int], sizes: Sequence[tuple[int, int]], policy: str = "stretch"
) -> list[np.ndarray]:
    """CAMs of a classifier or ensemble on the original images (each ``(height, width)`` in [0, 1]).

    ``images`` are at the model's input size, made from originals of ``sizes`` (``(width, height)``)
    with ``policy``.
    """
    branches = _branches(model)
    targets = np.asarray(targets)
    maps: list[list[np.ndarray]] = [[] for _ in images]
    weights = np.zeros((len(images), len(branches)))
    for j, branch in enumerate(branches):
        s = model_input_size(branch)
        x = (
            images
            if s == images.shape[1]
            else tf.image.resize(np.asarray(images, np.float32), (s, s), antialias=True).numpy()
        )
        cams, proba = gradcam(branch, x, targets)
        weights[:, j] = proba[np.arange(len(images)), targets]
        for i, cam in enumerate(cams):
            if s != images.shape[1]:
                cam = _resize(cam, images.shape[1], images.shape[1])
            maps[i].append(cam_to_original(cam, *sizes[i], policy))
    out = []
    for i, per_branch in enumerate(maps):
        w = weights[i] if weights[i].sum() > 0 else np.ones(len(branches))
        cam = np.tensordot(w / w.sum(), np.stack(per_branch), axes=1)
        out.append(cam / cam.max() if cam.max() > 0 else cam)
    return out


# --------------------------------------------------------------------------- a dataset split


def true_class_boxes(row) -> list[Box]:
    """The row's boxes whose label is the image's own class."""
    return [b for b, c in zip(row["boxes"], row["box_classes"], strict=True) if c == row["class"]]


def explain_split(
    model_path: str | Path,
    data_dir: str | Path,
    split_csv: str | Path | None,
    *,
    subset: str = "test",
    per_class: int | None = None,
    policy: str | None = None,
    target: str = "true",
    tolerance: float = 15.0,
    seed: int = 0,
    batch_size: int = 8,
    keep_cams: int = 0,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Localization scores of a model on one split subset, one row per image.

    Rows: path, class, predicted, correct, n_boxes (of the true class), hit (pointing game, NA
    without boxes), energy (NA without boxes). ``target``: CAM of the ``true`` or ``predicted``
    class. ``keep_cams`` > 0 also returns up to that many CAMs per (class, correct) pair, by path.
    ``policy`` overrides the resize policy the model records.
    """
    if target not in ("true", "predicted"):
        raise InputError(f"target must be 'true' or 'predicted', got {target!r}")
    model = load_model(model_path)
    info = model_info(model)
    classes, size, policy = info.classes, info.input_size, policy or info.policy
    table, mapping = labelled_subset(data_dir, split_csv, classes, subset)
    if split_csv:  # the manifest has no boxes: take them from the dataset itself
        found = data.discover(data_dir).table
        boxes = found.set_index(found.path.map(str))
        table = table.assign(
            boxes=[boxes.at[str(p), "boxes"] if str(p) in boxes.index else [] for p in table.path],
            box_classes=[boxes.at[str(p), "box_classes"] if str(p) in boxes.index else [] for p in table.path],
            width=[boxes.at[str(p), "width"] for p in table.path],
            height=[boxes.at[str(p), "height"] for p in table.path],
        )
    if per_class:
        table = (
            table.groupby("class", group_keys=False)
            .sample(frac=1.0, random_state=seed)
            .groupby("class")
            .head(per_class)
        )
    cache = ImageCache(size, policy)
    rows, kept, counts = [], {}, {}
    for start in progress.bar(range(0, len(table), batch_size), desc="Grad-CAM", unit="batch"):
        chunk = table.iloc[start : start + batch_size]
        images = cache.load(list(chunk.path))
        y = np.array([mapping[int(label)] for label in chunk.label])
        proba = np.asarray(model.predict(images.astype(np.float32), verbose=0))
        pred = proba.argmax(1)
        tgt = y if target == "true" else pred
        sizes = [(int(r.width), int(r.height)) for r in chunk.itertuples()]
        cams = model_cams(model, images, tgt, sizes, policy)
        for r, cam, yi, pi in zip(chunk.to_dict("records"), cams, y, pred, strict=True):
            b = true_class_boxes(r)
            hit = pointing_hit(cam, b, tolerance)
            rows.append(
                {
                    "path": str(r["path"]),
                    "class": classes[yi],
                    "predicted": classes[pi],
                    "correct": bool(yi == pi),
                    "n_boxes": len(b),
                    "boxes": b,
                    "hit": hit,
                    "energy": energy_in_boxes(cam, b),
                    "box_fraction": float(box_mask(cam.shape, b).mean()) if b else None,
                }
            )
            key = (classes[yi], bool(yi == pi))
            if keep_cams and counts.get(key, 0) < keep_cams:
                counts[key] = counts.get(key, 0) + 1
                kept[str(r["path"])] = cam
    return pd.DataFrame(rows), kept


def localization_summary(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per class and overall: images, images without boxes, pointing-game accuracy, mean energy.

    ``box_fraction`` is the mean share of the image inside the boxes: the energy a uniform map gets.
    """

    def agg(g: pd.DataFrame) -> dict:
        scored = g[g.n_boxes > 0]
        return {
            "images": len(g),
            "no_boxes": int((g.n_boxes == 0).sum()),
            "accuracy": float(g.correct.mean()),
            "pointing": float(scored.hit.astype(float).mean()) if len(scored) else np.nan,
            "energy": float(scored.energy.astype(float).mean()) if len(scored) else np.nan,
            "box_fraction": float(scored.box_fraction.astype(float).mean()) if len(scored) else np.nan,
        }

    rows = [{"class": c, **agg(g)} for c, g in per_image.groupby("class", sort=True)]
    rows.append({"class": "overall", **agg(per_image)})
    return pd.DataFrame(rows)
