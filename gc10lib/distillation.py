"""Distillation: one small student network trained on the chosen ensemble's soft targets.

The teacher (the run's validation-chosen ensemble, or any gc10lib ``.keras`` classifier) runs
**once** per training image and augmented view. In one pass over each view the teacher's
probabilities, the student's pooled features and the view itself (uint8) are computed from the
same tensor and cached together under ``<cache>/distill/``, so the teacher never runs while the
student trains, and a rerun with the same teacher, student and data reuses them.

Training runs the phases of :mod:`gc10lib.phases`, as a backbone's does (:mod:`gc10lib.steps.train`):
a head on the cached student features, then (optionally) fine-tuning the top of the student's
backbone on the cached views, then (``map_head``) a map head. The loss is Hinton's: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(label, student)``, each
image weighted by its class weight. Images from an optional unlabelled folder count through the
teacher alone. The best validation state over both phases is saved (:class:`BestState`).

The student is an ordinary gc10lib classifier (``model.keras`` with its class names, size and
resize policy), so ``gc10 evaluate``, ``gc10 predict`` and ``gc10 export`` take it as it is. Its
``metrics.json`` has ``kind: student`` and names its teacher.

:func:`gc10lib.steps.distill.run` is the step that notebook ``06_distill`` and ``gc10 distill`` call. It
also writes the deployment table: teacher, student (float) and student (int8 LiteRT), each with
accuracy, macro-F1, MiB, latency at batch 1 and best throughput.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from gc10lib import data, maphead, progress
from gc10lib.backbones import adapt_feature_norm, build_classifier, get_spec, load_model, save_model, weights_identity
from gc10lib.config import DistillConfig
from gc10lib.ensembles import combine
from gc10lib.errors import InputError
from gc10lib.inference import collect_images, evaluate_parts, readable
from gc10lib.inputs import ImageCache, aug_ops, augmenter, make_dataset
from gc10lib.layers import model_info
from gc10lib.phases import (
    BestState,
    ValidationScores,
    finetune_phase,
    fit_phase,
    phase_callbacks,
    resolve_verbose,
    set_seeds,
    val_scores,
    wants_finetune,
)
from gc10lib.settings import cache_dir, file_size_mb, new_output_dir, save_json, writable_dir

# --------------------------------------------------------------------------- soft targets


def soften(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)``: the probabilities a softmax at temperature ``T`` would give."""
    logp = np.log(np.clip(np.asarray(proba, np.float64), 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(1, keepdims=True)
    e = np.exp(logp)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


class DistillLoss(keras.losses.Loss):
    """Hinton's distillation loss on a packed target ``[one-hot label | teacher_T]``.

    Rows with an all-zero label part (unlabelled images) get the soft term alone.
    """

    def __init__(self, n_classes: int, temperature: float = 2.0, alpha: float = 0.7, **kw):
        super().__init__(**kw)
        self.n, self.t, self.alpha = int(n_classes), float(temperature), float(alpha)

    def call(self, y_true, y_pred):
        hard, soft = y_true[:, : self.n], y_true[:, self.n :]
        logp = keras.ops.log(keras.ops.clip(keras.ops.cast(y_pred, "float32"), 1e-7, 1.0))
        logp_t = keras.ops.log_softmax(logp / self.t, axis=-1)
        kl = keras.ops.sum(soft * (keras.ops.log(keras.ops.clip(soft, 1e-12, 1.0)) - logp_t), axis=-1) * self.t**2
        ce = -keras.ops.sum(hard * logp, axis=-1)
        labelled = keras.ops.sum(hard, axis=-1)
        return labelled * (self.alpha * kl + (1.0 - self.alpha) * ce) + (1.0 - labelled) * kl


def pack_targets(labels: np.ndarray, teacher: np.ndarray, temperature: float) -> np.ndarray:
    """``[one-hot label | softened teacher]`` per row; label ``-1`` (unlabelled) gives a zero one-hot."""
    n = teacher.shape[1]
    onehot = np.zeros((len(labels), n), np.float32)
    known = labels >= 0
    onehot[np.flatnonzero(known), labels[known]] = 1.0
    return np.concatenate([onehot, soften(teacher, temperature)], axis=1)


def sample_weights(labels: np.ndarray, teacher: np.ndarray, cw: dict[int, float]) -> np.ndarray:
    """Each image's class weight: its label's, or for an unlabelled image its teacher's top class."""
    cls = np.where(labels >= 0, labels, teacher.argmax(1))
    return np.array([cw.get(int(c), 1.0) for c in cls], np.float32)


def _file_identity(path: str | Path) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def teacher_views(
    teacher,
    student,
    paths: list[str],
    *,
    size: int,
    policy: str,
    view: int,
    seed: int,
    ops: tuple[str, ...],
    key: str,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """``teacher`` probabilities, ``student`` pooled features and the ``images`` (uint8) of one view.

    View 0 is the plain images, view k > 0 an augmented copy (seeded by ``seed`` and ``k``). All
    three come from the same rounded uint8 tensor, so teacher and student see identical pixels.
    Cached on disk under ``key`` (teacher file, student weights, size, policy, files, augmentation);
    images are memory-mapped when read back.
    """
    cache = ImageCache(size, policy)
    files = cache.ensure(paths)
    parts = [key, size, policy, [Path(f).name for f in files], view, seed if view else 0, list(ops) if view else []]
    digest = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:24]
    folder = cache_dir() / "distill" / f"{size}_{policy}_v{view}_{digest}"
    names = ("teacher", "features", "images")
    if all((folder / f"{n}.npy").is_file() for n in names):
        try:
            out = {n: np.load(folder / f"{n}.npy", mmap_mode="r" if n == "images" else None) for n in names}
            if all(len(v) == len(paths) for v in out.values()):
                return out
        except (OSError, ValueError, EOFError):
            pass  # a cut-off entry is rebuilt, never trusted
    ds = make_dataset(paths, None, size, policy=policy, batch_size=batch_size, cache=cache)
    if view:
        aug = augmenter(seed + 1000 * view, ops)
        ds = ds.map(lambda x: aug(x, training=True))
    extractor = keras.Model(student.inputs, student.get_layer("pool").output)
    t_out, f_out, i_out = [], [], []
    n_batches = int(np.ceil(len(paths) / batch_size))
    for x in progress.bar(ds, total=n_batches, desc=f"teacher + student features, view {view}", unit="batch"):
        x8 = np.clip(np.round(np.asarray(x)), 0, 255).astype(np.uint8)
        xf = x8.astype(np.float32)
        t_out.append(np.asarray(teacher.predict_on_batch(xf), np.float32))
        f_out.append(np.asarray(extractor.predict_on_batch(xf), np.float32))
        i_out.append(x8)
    out = {"teacher": np.concatenate(t_out), "features": np.concatenate(f_out), "images": np.concatenate(i_out)}
    writable_dir(folder, "the distillation cache (set GC10_CACHE_DIR to a writable folder)")
    for n, arr in out.items():
        tmp = folder / f"{n}.{os.getpid()}.tmp.npy"
        np.save(tmp, arr)
        tmp.replace(folder / f"{n}.npy")
    return out


def flip_plan(cfg: DistillConfig, n: int) -> list[np.ndarray] | None:
    """With flips only (``augment: [flip]``), each view's flip code per image (:func:`gc10lib.maphead.flip`):
    view 0 plain, view ``k`` a seeded random flip per image, uniform over the four (as a random
    horizontal-and-vertical flip draws them); ``None`` for any other augmentation."""
    if aug_ops(cfg.augment) != ("flip",):
        return None
    return maphead.flip_codes(cfg.seed, cfg.aug_views, n)


class TeacherFromMaps:
    """A teacher's probabilities computed from its members' cached maps, without running a backbone.

    Each member is a map-head classifier: its head reads the maps that its training cached (found
    by its trunk's weights, :func:`gc10lib.maphead.classifier_source`), and the members' outputs are
    combined as the ensemble's recipe says (:func:`gc10lib.ensembles.combine`). Members with weight 0
    are not run.
    """

    def __init__(self, members: list, method: str, recipe: dict, batch_size: int = 32):
        self.members, self.method, self.recipe, self.batch_size = members, method, recipe, batch_size
        self.sources = [maphead.classifier_source(m, batch_size) if m is not None else None for m in members]

    @classmethod
    def of(cls, teacher_path: str | Path, batch_size: int = 32) -> TeacherFromMaps | None:
        """For a run's ensemble (``recipe.json`` beside it) or single classifier; ``None`` unless every
        member that counts is a map-head classifier."""
        teacher_path = Path(teacher_path)
        recipe_path = teacher_path.parent / "recipe.json"
        if recipe_path.is_file():
            recipe = json.loads(recipe_path.read_text())
            paths = [Path(m["path"]) for m in recipe["members"]]
            weights = recipe.get("weights") or [1.0] * len(paths)
            if recipe["method"] == "stack":
                weights = [1.0] * len(paths)
        else:
            recipe, paths, weights = {"method": "mean"}, [teacher_path], [1.0]
        if not all(p.is_file() for p, w in zip(paths, weights, strict=True) if w > 0):
            return None
        members = [load_model(p) if w > 0 else None for p, w in zip(paths, weights, strict=True)]
        if not all(maphead.is_map_head(m) for m in members if m is not None):
            return None
        return cls(members, recipe["method"], recipe, batch_size)

    def __call__(self, paths: list[str], code: int = 0) -> np.ndarray:
        """Probabilities of ``paths`` under flip ``code``."""
        probas = [
            maphead.head_proba(m.get_layer("head"), src.maps(paths, code), self.batch_size) if m is not None else None
            for m, src in zip(self.members, self.sources, strict=True)
        ]
        n_classes = next(p.shape[1] for p in probas if p is not None)
        probas = [p if p is not None else np.zeros((len(paths), n_classes)) for p in probas]
        info = {k: np.asarray(v, np.float64) for k, v in self.recipe.get("stacker", {}).items()}
        return combine(self.method, probas, {"weights": self.recipe.get("weights"), "stacker": info})


class _FlipView:
    """Cached images, each under its own flip code, read rows at a time (nothing held in memory)."""

    def __init__(self, cache: ImageCache, files: list[str], codes: np.ndarray):
        self.cache, self.files, self.codes = cache, np.asarray(files), np.asarray(codes)
        self.shape = (len(self.files), cache.size, cache.size, 3)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx):
        one = np.ndim(idx) == 0
        rows = np.atleast_1d(np.arange(len(self.files))[idx])
        x = self.cache.load(list(self.files[rows]))
        x = np.stack([maphead.flip(im[None], int(c))[0] for im, c in zip(x, self.codes[rows], strict=True)])
        return x[0] if one else x


def _run_on_flip(model, cache: ImageCache, files: list[str], code: int, batch_size: int, desc: str) -> np.ndarray:
    """``model`` on the cached images under flip ``code``, a batch at a time."""
    out = []
    steps = range(0, len(files), batch_size)
    for i in progress.bar(steps, total=len(steps), desc=desc, unit="batch"):
        x = maphead.flip(cache.load(files[i : i + batch_size]), code).astype(np.float32)
        out.append(np.asarray(model.predict_on_batch(x), np.float32))
    return np.concatenate(out)


def flip_views(
    teacher,
    teacher_path: str | Path,
    student,
    student_name: str,
    paths: list[str],
    val_paths: list[str],
    plan: list[np.ndarray],
    *,
    size: int,
    policy: str,
    cfg: DistillConfig,
) -> tuple[list[dict], dict, dict]:
    """The views of flips-only distillation (``plan``: :func:`flip_plan`): for each view, the
    teacher's probabilities, the student's pooled features, its maps (with ``map_head``) and the
    images (read lazily), each image under its view's flip.

    Everything is computed once per flip and gathered per view. The teacher is computed from its
    members' cached maps (:class:`TeacherFromMaps`) when every member is a map-head classifier and
    the result agrees with the teacher itself on validation images (within 0.02); otherwise it runs
    on the flipped images. The student's maps come from the map cache too (a student of the same
    backbone as a member finds them there), and its pooled features from the backbone above its
    cut, so its trunk does not run again either. Returns ``(one dict per view, the same for the
    plain val images, a record of where they came from)``.
    """
    bs = cfg.batch_size
    cache = ImageCache(size, policy)
    files, val_files = cache.ensure(paths), cache.ensure(val_paths)
    used = sorted({int(c) for codes in plan for c in np.unique(codes)})
    record: dict = {"views": "random flips", "flips_used": used, "teacher_from": "model"}
    from_maps = TeacherFromMaps.of(teacher_path, bs)
    val_teacher = None
    if from_maps is not None:
        val_teacher = from_maps(val_paths, 0)
        n = min(len(val_files), bs)
        gap = float(np.abs(val_teacher[:n] - _run_on_flip(teacher, cache, val_files[:n], 0, bs, "teacher check")).max())
        record["teacher_check_max_abs"] = round(gap, 5)
        if gap <= 0.02:
            record["teacher_from"] = "members' cached maps"
        else:
            warnings.warn(
                f"{teacher_path}: its members' cached maps disagree with the teacher (max {gap:.3f}); running the teacher",
                stacklevel=2,
            )
            from_maps, val_teacher = None, None

    def teach(p, f, code, desc):
        return from_maps(p, code) if from_maps is not None else _run_on_flip(teacher, cache, f, code, bs, desc)

    src = cut = None
    if cfg.map_head:
        src, _, cut = maphead.map_source(student, cfg.map_fraction, student_name, size, policy, bs)
    extractor = keras.Model(student.inputs, student.get_layer("pool").output)

    def student_part(p, f, code, desc):
        if src is None:
            return {"features": _run_on_flip(extractor, cache, f, code, bs, desc), "maps": None}
        maps = src.maps(p, code)
        return {"features": maphead.pooled_from_maps(student, cut, maps, bs), "maps": maps}

    per_flip = {}
    for code in used:
        part = student_part(paths, files, code, f"student features, flip {code}")
        per_flip[code] = {"teacher": teach(paths, files, code, f"teacher, flip {code}"), **part}
    rows = np.arange(len(files))
    stack = {k: np.stack([per_flip[c][k] for c in used]) for k in ("teacher", "features")}
    maps = [per_flip[c]["maps"] for c in used]
    views = []
    for codes in plan:
        where = np.searchsorted(used, codes)
        view = {k: v[where, rows] for k, v in stack.items()}
        view["maps"] = None if maps[0] is None else maphead.MixedRows(maps, where)
        view["images"] = _FlipView(cache, files, codes)
        views.append(view)
    val = {"teacher": val_teacher if val_teacher is not None else teach(val_paths, val_files, 0, "teacher, val")}
    val.update(student_part(val_paths, val_files, 0, "student features, val"), images=cache.load(val_files))
    return views, val, record


# --------------------------------------------------------------------------- training


def _view_dataset(images: np.ndarray, targets: np.ndarray, weights: np.ndarray, batch_size: int, seed: int):
    """Shuffled batches of cached view images (memory-mapped uint8) with their packed targets."""
    n, shape = len(images), images.shape[1:]

    def take(idx):
        idx = np.sort(idx)
        return images[idx].astype(np.float32), targets[idx], weights[idx]

    def load(idx):
        x, t, w = tf.numpy_function(take, [idx], [tf.float32, tf.float32, tf.float32])
        x.set_shape((None, *shape))
        t.set_shape((None, targets.shape[1]))
        w.set_shape((None,))
        return x, t, w

    ds = tf.data.Dataset.from_tensor_slices(np.arange(n)).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(load).prefetch(2)


class _ConcatImages:
    """Row access to several memory-mapped view arrays as if they were one (no copy)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.offsets = np.cumsum([0] + [len(a) for a in arrays])
        self.shape = (int(self.offsets[-1]), *arrays[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        return np.stack([self.arrays[w][i - self.offsets[w]] for w, i in zip(which, idx, strict=True)])


@dataclass
class _Lesson:
    """One student's training in progress: its teacher, split, output folder and model."""

    cfg: DistillConfig
    backbone: str
    classes: list[str]
    size: int
    policy: str
    tr: pd.DataFrame
    va: pd.DataFrame
    te: pd.DataFrame
    extra: list[str]
    out: Path
    cw: dict[int, float]
    student: keras.Model
    source: str
    timings: dict = field(default_factory=dict)
    histories: list = field(default_factory=list)

    @property
    def y_val(self) -> np.ndarray:
        return self.va.label.to_numpy()

    def callbacks(self, best: BestState, phase: str, predict) -> list:
        """Each epoch scored by ``predict()`` on the hard val labels and offered to ``best``; early
        stopping and the CSV history."""
        scorer = ValidationScores(predict, self.y_val, best, phase)
        return phase_callbacks(self.cfg, scorer, self.out / f"history_{phase}.csv")


def train_student(
    cfg: DistillConfig,
    teacher_path: str | Path,
    data_dir: str | Path,
    split_csv: str | Path,
    out_dir: str | Path | None,
    teacher_name: str | None = None,
    start_from: str | Path | None = None,
) -> dict:
    """Train one student on ``teacher_path``'s soft targets and write it like any trained model.

    The phases are a backbone's (:mod:`gc10lib.phases`): a head on cached student features,
    fine-tuning on the cached views, and (``map_head``) a map head, all on the teacher's soft
    targets. ``start_from``: a map-head classifier of the student's backbone trained on the labels
    (the run's own, from step 02). With ``map_head`` and ``warm_start``, the student's map head
    starts from its head when that reads the same maps (:func:`gc10lib.maphead.start_head`), and
    its state before distillation competes on validation too. Writes ``model.keras``,
    ``metrics.json`` (``kind: student``), ``history.csv`` and the probabilities of the val and
    test splits into ``out_dir``; returns the metrics.

    >>> m = train_student(DistillConfig(student="mobilenet_v2"), "runs/x/steps/03_ensemble/mean/model.keras",
    ...                   "data/xsdd", "runs/x/split.csv", "runs/x/student")
    """
    t_all = time.perf_counter()
    teacher = load_model(teacher_path)
    lesson = _prepare_lesson(cfg, teacher, teacher_path, data_dir, split_csv, out_dir)
    t0 = time.perf_counter()
    got, val, view_record = _teach(lesson, teacher, teacher_path)
    del teacher  # not needed again: everything it says is cached
    lesson.timings["teacher_s"] = round(time.perf_counter() - t0, 2)
    views = len(got)
    labels = np.concatenate([lesson.tr.label.to_numpy(), -np.ones(len(lesson.extra), int)])
    t_prob = np.concatenate([g["teacher"] for g in got])
    y_all = np.tile(labels, views)
    targets = pack_targets(y_all, t_prob, cfg.temperature)
    weights = sample_weights(y_all, t_prob, lesson.cw)
    loss = DistillLoss(len(lesson.classes), cfg.temperature, cfg.alpha)
    best = BestState(lesson.student, cfg.monitor)
    _student_head(lesson, best, np.concatenate([g["features"] for g in got]), targets, weights, val, loss)
    if wants_finetune(cfg):
        _student_finetune(lesson, best, got, targets, weights, val, loss)
    map_record = None
    if cfg.map_head:
        t0 = time.perf_counter()
        start = start_from if cfg.warm_start else None
        lesson.student, map_record, hist = _student_map_phase(
            lesson.student, cfg, got, targets, weights, val, lesson.y_val, loss, best, lesson.backbone, start
        )
        lesson.histories.append(hist.assign(phase="maps", epoch=lambda d: np.arange(len(d))))
        lesson.timings["maps_s"] = round(time.perf_counter() - t0, 2)
    teacher_info = {
        "name": teacher_name or Path(teacher_path).parent.name,
        "path": str(teacher_path),
        "val": val_scores(lesson.y_val, val["teacher"].astype(np.float64)),
    }
    record = {"views": views, "view_source": view_record, "selected": best.record(), "map_head": map_record}
    metrics = _write_student(lesson, split_csv, teacher_info, record)
    lesson.timings["total_s"] = round(time.perf_counter() - t_all, 2)
    metrics["timings"] = lesson.timings
    save_json(metrics, lesson.out / "metrics.json")
    return metrics


def _prepare_lesson(cfg: DistillConfig, teacher, teacher_path, data_dir, split_csv, out_dir) -> _Lesson:
    """The split (refused when its classes are not the teacher's), the unlabelled images, a new
    output folder and the student with its backbone frozen."""
    spec = get_spec(cfg.student)
    tinfo = model_info(teacher)
    classes = tinfo.classes
    split_classes = data.split_classes(split_csv)
    if list(split_classes) != list(classes):
        raise InputError(
            f"{teacher_path}: the teacher's classes {classes} differ from those of {split_csv} {split_classes}"
        )
    size = int(cfg.img_size or tinfo.input_size)
    man = data.read_split(split_csv, data_root=data_dir)
    tr, va, te = (man[man.subset == s] for s in ("train", "val", "test"))
    if len(tr) == 0 or len(va) == 0:
        raise InputError(f"{split_csv}: the split has no train or no val images")
    extra: list[str] = []
    if cfg.unlabelled_dir:
        found = collect_images([cfg.unlabelled_dir])
        if not found:
            raise InputError(f"{cfg.unlabelled_dir}: no images found for unlabelled_dir")
        extra = [str(p) for p in readable(found, size, tinfo.policy)]
    out = new_output_dir(out_dir, prefix=f"distill-{spec.name}")
    set_seeds(cfg.seed)
    cw = data.class_weights(tr.label, len(classes), cfg.class_weight)
    student, source = build_classifier(
        spec.name, classes, size, cfg.weights, cfg.dropout, cfg.weights_dir, cfg.seed, policy=tinfo.policy
    )
    student.get_layer("backbone").trainable = False
    return _Lesson(cfg, spec.name, list(classes), size, tinfo.policy, tr, va, te, extra, out, cw, student, source)


def _teach(lesson: _Lesson, teacher, teacher_path) -> tuple[list[dict], dict, dict]:
    """The teacher, once per image and view, with the student's features of the same pixels:
    flips from the map caches (:func:`flip_views`) or augmented copies (:func:`teacher_views`)."""
    cfg, s = lesson.cfg, lesson
    ops = aug_ops(cfg.augment)
    views = max(1, int(cfg.aug_views)) if ops else 1
    train_paths = list(s.tr.path) + s.extra
    plan = flip_plan(cfg, len(train_paths))
    if plan is None:
        key = f"{_file_identity(teacher_path)}|{s.backbone}|{weights_identity(s.source, cfg.seed)}|{keras.__version__}"
        kw = dict(size=s.size, policy=s.policy, seed=cfg.seed, key=key, batch_size=cfg.batch_size)
        got = [teacher_views(teacher, s.student, train_paths, view=v, ops=ops, **kw) for v in range(views)]
        val = teacher_views(teacher, s.student, list(s.va.path), view=0, ops=(), **kw)
        return got, val, {"views": "augmented copies", "n": views}
    got, val, record = flip_views(
        teacher,
        teacher_path,
        s.student,
        s.backbone,
        train_paths,
        list(s.va.path),
        plan,
        size=s.size,
        policy=s.policy,
        cfg=cfg,
    )
    return got, val, {**record, "n": views}


def _student_head(lesson: _Lesson, best: BestState, x_feat, targets, weights, val, loss) -> None:
    """Phase ``head``: the student's head on its cached pooled features, against the soft targets."""
    cfg = lesson.cfg
    t0 = time.perf_counter()
    head = lesson.student.get_layer("head")
    adapt_feature_norm(head, x_feat)
    history = fit_phase(
        head,
        x_feat,
        targets,
        phase="head",
        best=best,
        optimizer=keras.optimizers.Adam(cfg.lr_head),
        loss=loss,
        epochs=cfg.epochs_head,
        callbacks=lesson.callbacks(best, "head", lambda: head(val["features"], training=False)),
        verbose=resolve_verbose(cfg.verbose),
        sample_weight=weights,
        batch_size=cfg.batch_size,
        shuffle=True,
    )
    lesson.histories.append(history)
    lesson.timings["head_s"] = round(time.perf_counter() - t0, 2)


def _student_finetune(lesson: _Lesson, best: BestState, got, targets, weights, val, loss) -> None:
    """Phase ``finetune``: the top of the student's backbone on the cached views (the same engine as
    a backbone's, :func:`gc10lib.phases.finetune_phase`)."""
    cfg, student = lesson.cfg, lesson.student
    t0 = time.perf_counter()
    images = _ConcatImages([g["images"] for g in got])
    ds = _view_dataset(images, targets, weights, cfg.batch_size, cfg.seed)
    val_x = np.asarray(val["images"], np.float32)  # read and converted once, not every epoch
    history, _ = finetune_phase(
        student,
        ds,  # shuffled by the dataset itself
        cfg=cfg,
        n_train=len(images),
        best=best,
        loss=loss,
        callbacks=lesson.callbacks(
            best, "finetune", lambda: student.predict(val_x, batch_size=cfg.batch_size, verbose=0)
        ),
        shuffle=False,
    )
    lesson.histories.append(history)
    lesson.timings["finetune_s"] = round(time.perf_counter() - t0, 2)


def _write_student(lesson: _Lesson, split_csv, teacher: dict, record: dict) -> dict:
    """Save the student (an ordinary classifier), its history and its val/test metrics."""
    cfg, student, out = lesson.cfg, lesson.student, lesson.out
    model_path = out / "model.keras"
    save_model(student, model_path)
    pd.concat(lesson.histories, ignore_index=True).to_csv(out / "history.csv", index=False)
    metrics: dict = {
        "name": f"student_{lesson.backbone}",
        "kind": "student",
        "backbone": lesson.backbone,
        "img_size": lesson.size,
        "policy": lesson.policy,
        "weights": cfg.weights,
        "weights_source": lesson.source,
        "seed": cfg.seed,
        "classes": lesson.classes,
        "class_weight_mode": cfg.class_weight,
        "split_csv": str(split_csv),
        "teacher": teacher,
        "n_train_labelled": len(lesson.tr),
        "n_train_unlabelled": len(lesson.extra),
        "views": record["views"],
        "view_source": record["view_source"],
        "config": asdict(cfg),
        "n_params": int(student.count_params()),
        "selected": record["selected"],
        "map_head": record["map_head"],
        "model_path": str(model_path),
        "model_size_mb": file_size_mb(model_path),
    }
    t0 = time.perf_counter()
    kw = dict(policy=lesson.policy, batch_size=cfg.batch_size, seed=cfg.seed)
    evaluate_parts(student, out, lesson.va, lesson.te, lesson.classes, metrics, **kw)
    lesson.timings["eval_s"] = round(time.perf_counter() - t0, 2)
    return metrics


def _student_map_phase(student, cfg: DistillConfig, views, targets, weights, val, y_val, loss, best, name, start):
    """Phase ``maps`` for the student: maps of its cut backbone for every view (the teacher's pixels;
    taken from the view when it already holds them), a map head trained on the views' soft targets,
    offered to ``best``. ``start``: the path of a map-head classifier whose head it starts from,
    when that fits (else it starts fresh, and the record says why).

    Returns ``(the student to save, the phase's record, its history)``.
    """
    t0 = time.perf_counter()
    extractor, trunk, cut = maphead.cut_extractor(student, cfg.map_fraction)
    maps = [
        v["maps"]
        if v.get("maps") is not None
        else maphead.maps_of(extractor, v["images"], cfg.batch_size, desc=f"{name} maps, view {i}")
        for i, v in enumerate(views)
    ]
    val_maps = (
        val["maps"]
        if val.get("maps") is not None
        else maphead.maps_of(extractor, val["images"], cfg.batch_size, desc=f"{name} maps, val")
    )
    val_maps = np.asarray(val_maps, np.float32)
    start_head, warm = None, None
    if start is not None:
        classes = model_info(student).classes
        start_head, why = maphead.start_head(load_model(start), trunk, val_maps.shape[1:], classes, cfg.map_width)
        warm = {"from": str(start), "used": start_head is not None, **({"why_not": why} if why else {})}
    n = len(maps[0])  # targets and weights are stacked view after view
    per_view = [slice(i * n, (i + 1) * n) for i in range(len(maps))]
    t_maps = time.perf_counter() - t0
    data_ = maphead.MapData(maps, [targets[s] for s in per_view], [weights[s] for s in per_view], val_maps, y_val)
    lr = cfg.warm_lr if start_head is not None else None
    saved, record, history = maphead.train_map_head(
        student, trunk, cut, data_, best, cfg, loss=loss, start=start_head, lr=lr
    )
    record["maps_s"] = round(t_maps, 2)
    if warm is not None:
        record["warm_start"] = warm
    return saved, record, history


# --------------------------------------------------------------------------- the step
