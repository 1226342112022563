"""The tf.data pipeline: shapes, dtype, range, cache reuse, resize policies, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gc10lib import data
from gc10lib.inputs import ImageCache, ImageReadError, make_dataset, resize_array, resize_geometry


def test_dataset_shapes_dtype_range(synth_root, tmp_path):
    ds = data.discover(synth_root)
    t = ds.table.iloc[:20]
    tfds = make_dataset(t.path, t.label, 64, batch_size=8, cache_dir=tmp_path)
    batches = list(tfds)
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    x, y = batches[0]
    assert tuple(x.shape[1:]) == (64, 64, 3)
    assert x.dtype.name == "float32" and y.dtype.name == "int32"
    assert float(np.min(x)) >= 0 and float(np.max(x)) <= 255 and float(np.max(x)) > 100
    # grayscale repeated to three equal channels
    assert np.allclose(x[..., 0], x[..., 1]) and np.allclose(x[..., 1], x[..., 2])
    assert list(np.concatenate([b[1] for b in batches])) == list(t.label)


def test_cache_decodes_once_per_size(synth_root, tmp_path):
    t = data.discover(synth_root).table.iloc[:10]
    c1 = ImageCache(48, cache_dir=tmp_path)
    c1.ensure(t.path)
    assert (c1.hits, c1.misses) == (0, 10)
    c2 = ImageCache(48, cache_dir=tmp_path)  # a new process would see the same files
    c2.ensure(t.path)
    assert (c2.hits, c2.misses) == (10, 0)
    c3 = ImageCache(32, cache_dir=tmp_path)  # another size is another cache entry
    c3.ensure(t.path)
    assert c3.misses == 10
    c4 = ImageCache(48, "pad", cache_dir=tmp_path)  # and so is another policy
    c4.ensure(t.path[:2])
    assert c4.misses == 2
    assert len(list((tmp_path / "images").glob("*/*.png"))) == 22  # 10 + 10 + 2 distinct (image, size, policy) entries


def test_training_dataset_is_seeded_and_augments(synth_root, tmp_path):
    t = data.discover(synth_root).table.iloc[:16]
    kw = dict(batch_size=16, cache_dir=tmp_path, training=True, augment=True, seed=5)
    a = next(iter(make_dataset(t.path, t.label, 32, **kw)))
    b = next(iter(make_dataset(t.path, t.label, 32, **kw)))
    plain = next(iter(make_dataset(t.path, t.label, 32, batch_size=16, cache_dir=tmp_path)))
    assert np.array_equal(a[1], b[1])  # same seed, same shuffle
    assert sorted(a[1].numpy().tolist()) == sorted(plain[1].numpy().tolist())
    assert not np.array_equal(a[1], plain[1]) or not np.allclose(a[0], plain[0])


def test_pad_policy_keeps_aspect(tmp_path):
    img = np.full((100, 200, 3), 200, np.uint8)
    out = resize_array(img, 64, "pad")
    g = resize_geometry(200, 100, 64, "pad")
    assert out.shape == (64, 64, 3)
    assert (g.sx, g.sy) == (0.32, 0.32) and (g.ox, g.oy) == (0, 16)
    assert out[:16].max() == 0 and out[48:].max() == 0 and out[16:48].min() == 200
    box = (50, 25, 150, 75)
    assert g.to_original(g.to_input(box)) == pytest.approx(box)
    s = resize_geometry(200, 100, 64, "stretch")
    assert s.to_input((200, 100, 200, 100))[:2] == (64, 64)
    with pytest.raises(ValueError, match="policy"):
        resize_geometry(1, 1, 8, "crop")


def test_corrupt_image_error_names_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    with pytest.raises(ImageReadError, match="broken.jpg"):
        make_dataset([good, bad], [0, 1], 16, cache_dir=tmp_path / "c")


def test_augmentation_ops_are_chosen_and_validated():
    from gc10lib.inputs import AUG_OPS, aug_ops, augmenter

    assert aug_ops(True) == AUG_OPS and aug_ops(False) == () and aug_ops(None) == ()
    assert aug_ops(["contrast", "flip"]) == ("flip", "contrast")  # canonical order
    with pytest.raises(ValueError, match="unknown augmentation \\['blur'\\]"):
        aug_ops(["flip", "blur"])
    flips = augmenter(0, ("flip",))
    assert [type(la).__name__ for la in flips.layers] == ["RandomFlip"]
    # flips only: the pixel values are a permutation of the input's, never rescaled
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    y = np.asarray(flips(x, training=True))
    np.testing.assert_allclose(np.sort(y.ravel()), np.sort(x.ravel()))


def test_feature_cache_key_depends_on_augmentation_ops():
    from gc10lib.features import feature_cache_path

    args = ("mobilenet", "w", 224, "stretch", ["a.png"])
    default = feature_cache_path(*args, 1, 42)
    assert feature_cache_path(*args, 1, 42, ("flip",)) != default
    assert feature_cache_path(*args, 0, 42, ("flip",)) == feature_cache_path(*args, 0, 42)  # plain view: no ops
