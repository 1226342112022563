"""A small head trained from scratch on cached middle-layer feature maps, against the probe.

    GC10_WEIGHTS_DIR=../shared/weights python benchmarks/map_head.py ../shared/data/elpv \\
        --backbone mobilenet --img-size 300 --seeds 42 43

Fine-tuning the pretrained top of a backbone could not beat the frozen-feature probe on ELPV
(README, "Why fine-tuning hurt"; ``benchmarks/finetune_sharpness.py``). This measures the
alternative: keep the whole pretrained backbone frozen up to a middle layer, cache its feature maps
for the four flips of every training image (one backbone pass each, then never again), and train a
new, well-conditioned head on them: 1x1 conv to ``--width`` channels, 3x3 conv, each with
BatchNorm and ReLU, average plus max pooling, dropout, softmax; Adam with warm-up and cosine decay,
class weights as training uses them. Each epoch shows every training image once, in a random one of
its four flips. The epoch with the lowest validation log-loss is reported on test, next to the
probe (logistic regression on the last layer's pooled features, ``C`` chosen on validation).

The cut is the last layer at or below ``1 - --fraction`` of the backbone's depth whose output alone
feeds the rest (MobileNet at 0.3: ``conv_pw_9_bn``, 18x18x512 at 300 px). Maps are cached as
float16 under ``<GC10_CACHE_DIR>/maps/`` (MobileNet at 300 px: about 2 GB for ELPV's 1,469 training
images and four flips). Seeded 70/15/15 split; ``--seeds`` vary only the head's initialisation and
the epochs' order. ``--tta`` adds a row per head with its output averaged over the four flips.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import keras
import numpy as np

from gc10lib import data, probe, training
from gc10lib.backbones import build_classifier
from gc10lib.inputs import ImageCache
from gc10lib.settings import cache_dir


def split_at(base, fraction: float):
    """``(trunk, cut layer name)``: ``base`` up to the last layer at or below ``1 - fraction`` of its depth
    whose output alone feeds the rest."""
    layers = base.layers
    for i in range(int(round(len(layers) * (1.0 - fraction))) - 1, 0, -1):
        try:
            top = keras.Model(layers[i].output, base.output)
        except ValueError:  # that layer's output alone does not feed the rest
            continue
        del top
        return keras.Model(base.input, layers[i].output), layers[i].name
    raise ValueError(f"{base.name}: no single-tensor cut found")


def flip_maps(trunk, pre, cache: ImageCache, paths: list[str], flip: int, batch: int = 32) -> np.ndarray:
    """Trunk maps (float16) of ``paths``; ``flip`` bit 1 mirrors left-right, bit 2 up-down."""
    out = []
    for i in range(0, len(paths), batch):
        x = cache.load(paths[i : i + batch]).astype("float32")
        if flip & 1:
            x = x[:, :, ::-1]
        if flip & 2:
            x = x[:, ::-1]
        out.append(keras.ops.convert_to_numpy(trunk(pre(x), training=False)).astype("float16"))
    return np.concatenate(out)


def map_head(shape, n_classes: int, width: int, seed: int):
    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L2(1e-4)
    inp = keras.Input(shape)
    x = inp
    for k in (1, 3):
        x = keras.layers.Conv2D(width, k, padding="same", use_bias=False, kernel_regularizer=reg)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalMaxPooling2D()(x)])
    x = keras.layers.Dropout(0.3, seed=seed)(x)
    return keras.Model(inp, keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=reg)(x))


def scores(y: np.ndarray, proba: np.ndarray) -> str:
    s = training.val_scores(y, proba)
    return f"{s['val_accuracy']:.3f} / {s['val_macro_f1']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--fraction", type=float, default=0.3, help="share of the backbone's depth above the cut")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--class-weight", default="sqrt", choices=["balanced", "sqrt", "none"])
    ap.add_argument("--split-seed", type=int, default=42)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--tta", action="store_true", help="also average each head's val/test output over the four flips")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ds = data.discover(args.data_dir)
    man = data.split_dataset(ds, (0.7, 0.15, 0.15), args.split_seed)
    tr, va, te = (man[man.subset == s] for s in ("train", "val", "test"))
    y_tr, y_va, y_te = (d.label.to_numpy() for d in (tr, va, te))
    k = len(ds.classes)
    cw = data.class_weights(y_tr, k, args.class_weight)
    model, source = build_classifier(args.backbone, ds.classes, args.img_size, "imagenet", 0.2, None, args.split_seed)
    model.get_layer("backbone").trainable = False

    # the probe: logistic regression on the last layer's pooled features of the plain images
    kw = dict(size=args.img_size, policy="stretch", weights_source=source, backbone=args.backbone, seed=args.split_seed)
    f_tr, f_va, f_te = (training.extract_features(model, list(d.path), **kw)[0] for d in (tr, va, te))
    head = model.get_layer("head")
    training.adapt_feature_norm(head, f_tr)
    z = [probe.standardize(head, f) for f in (f_tr, f_va, f_te)]
    p = probe.fit_probe(z[0], y_tr, z[1], y_va, k, cw)
    print(f"{args.data_dir}: {args.backbone} {args.img_size} px; train {len(tr)}, val {len(va)}, test {len(te)}")
    print("| model | val log-loss | val acc / macro-F1 | test acc / macro-F1 |\n|---|---|---|---|")
    print(
        f"| probe_{args.backbone} (C={p.C}) | {p.val_log_loss:.3f} | {scores(y_va, p.predict_proba(z[1]))} "
        f"| {scores(y_te, p.predict_proba(z[2]))} |"
    )

    trunk, cut = split_at(model.get_layer("backbone"), args.fraction)
    key = json.dumps([args.backbone, source, args.img_size, cut, list(man.path)])
    folder = cache_dir() / "maps" / hashlib.sha1(key.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    cache, pre = ImageCache(args.img_size, "stretch"), model.get_layer("preprocess")

    def cached(name: str, paths: list[str], flip: int = 0) -> np.ndarray:
        path = folder / f"{name}.npy"
        if not path.is_file():
            tmp = folder / f"{name}.tmp.npy"
            np.save(tmp, flip_maps(trunk, pre, cache, paths, flip))
            tmp.replace(path)
        return np.load(path, mmap_mode="r")

    t1 = time.perf_counter()
    train_maps = [cached(f"train{f}", list(tr.path), f) for f in range(4)]
    val_maps, test_maps = (np.asarray(cached(n, list(d.path)), "float32") for n, d in (("val", va), ("test", te)))
    flipped = {  # val and test maps of flips 1..3, for --tta
        n: [np.asarray(cached(f"{n}{f}", list(d.path), f), "float32") for f in range(1, 4)] if args.tta else []
        for n, d in (("val", va), ("test", te))
    }
    t_maps = time.perf_counter() - t1
    steps = int(np.ceil(len(tr) / 32)) * args.epochs
    for seed in args.seeds:
        net = map_head(train_maps[0].shape[1:], k, args.width, seed)
        sched = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=args.lr, warmup_steps=steps // 10)
        net.compile(optimizer=keras.optimizers.Adam(sched), loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(seed)
        best = None
        t1 = time.perf_counter()
        for epoch in range(args.epochs):
            flips = rng.integers(0, 4, len(tr))
            order = rng.permutation(len(tr))
            x = np.stack([train_maps[flips[i]][i] for i in order]).astype("float32")
            net.fit(x, y_tr[order], batch_size=32, epochs=1, class_weight=cw, shuffle=False, verbose=0)
            pv = net.predict(val_maps, batch_size=64, verbose=0)
            ll = probe.log_loss(y_va, pv)
            if best is None or ll < best[0]:
                best = (ll, epoch, net.get_weights())
        ll, epoch, weights = best
        net.set_weights(weights)
        pv, pt = (net.predict(m, batch_size=64, verbose=0) for m in (val_maps, test_maps))
        print(
            f"| map head, seed {seed} (epoch {epoch + 1} of {args.epochs}) | {ll:.3f} | {scores(y_va, pv)} "
            f"| {scores(y_te, pt)} |"
        )
        if args.tta:
            pv = np.mean([pv] + [net.predict(m, batch_size=64, verbose=0) for m in flipped["val"]], axis=0)
            pt = np.mean([pt] + [net.predict(m, batch_size=64, verbose=0) for m in flipped["test"]], axis=0)
            print(
                f"| the same, four flips averaged | {probe.log_loss(y_va, pv):.3f} | {scores(y_va, pv)} "
                f"| {scores(y_te, pt)} |"
            )
        print(f"    head training {time.perf_counter() - t1:.0f} s")
    print(f"\ncut at {cut} {tuple(trunk.output.shape[1:])}; maps {t_maps:.0f} s ({folder})")
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
