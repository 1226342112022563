"""Plot helpers for the notebooks (matplotlib/seaborn). Each returns its ``Figure``."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Rectangle
from PIL import Image

from gc10lib.data import Dataset, box_table, split_counts
from gc10lib.inputs import load_rgb


def class_counts(ds: Dataset, ax=None):
    """Bar chart of images per class, annotated with the imbalance ratio."""
    counts = ds.table["class"].value_counts().reindex(ds.classes, fill_value=0)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8, 3.5))
    sns.barplot(x=counts.values, y=counts.index, ax=ax, color="steelblue", orient="h")
    for i, v in enumerate(counts.values):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    present = counts[counts > 0]
    ratio = present.max() / present.min() if len(present) else float("nan")
    ax.set(xlabel="images", ylabel="", title=f"Images per class (imbalance {ratio:.1f}:1)")
    fig.tight_layout()
    return fig


def split_composition(manifest: pd.DataFrame, classes: Sequence[str] | None = None):
    """Stacked bars of each class's images in train / val / test, annotated with the val and test
    counts (the images every reported score rests on)."""
    counts = split_counts(manifest, classes).drop(index="total", columns="total")
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(counts) + 1.2))
    left = np.zeros(len(counts))
    for subset, color in zip(counts.columns, ("steelblue", "darkorange", "seagreen"), strict=True):
        ax.barh(counts.index, counts[subset], left=left, color=color, label=subset)
        left += counts[subset].to_numpy()
    for i, (_, row) in enumerate(counts.iterrows()):
        ax.text(left[i], i, f" val {row['val']} · test {row['test']}", va="center", fontsize=7)
    ax.invert_yaxis()
    totals = counts.sum()
    ax.set(xlabel="images", title=" · ".join(f"{s} {totals[s]}" for s in counts.columns))
    ax.set_xlim(0, left.max() * 1.35 if len(left) else 1)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def box_statistics(ds: Dataset):
    """Boxes per image and relative box area per class (log scale)."""
    bt = box_table(ds)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    nbox = ds.table[ds.table["xml"].notna()].assign(n=lambda t: t["boxes"].map(len))
    if len(nbox):
        sns.countplot(x=nbox["n"], ax=axes[0], color="steelblue")
    axes[0].set(xlabel="boxes per image", ylabel="images", title="Boxes per image")
    if len(bt):
        sns.boxplot(
            data=bt,
            y="class",
            x="rel_area",
            ax=axes[1],
            order=[c for c in ds.classes if c in set(bt["class"])],
            color="lightsteelblue",
            log_scale=True,
        )
    axes[1].set(xlabel="box area / image area", ylabel="", title="Relative box area per class")
    fig.tight_layout()
    return fig


def draw_boxes(ax, boxes: Sequence[Sequence[float]], labels: Sequence[str] | None = None, color: str = "lime") -> None:
    """Draw ``[xmin, ymin, xmax, ymax]`` boxes on an axes."""
    for i, b in enumerate(boxes):
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color=color, lw=1.5))
        if labels is not None and i < len(labels):
            ax.text(b[0], b[1], str(labels[i]), color=color, fontsize=6, va="bottom")


def sample_grid(ds: Dataset, per_class: int = 3, seed: int = 0, max_side: int = 512):
    """A grid with ``per_class`` random images of each present class, boxes drawn."""
    classes = ds.present_classes
    fig, axes = plt.subplots(len(classes), per_class, figsize=(3.2 * per_class, 1.9 * len(classes)), squeeze=False)
    rng = np.random.default_rng(seed)
    for i, cls in enumerate(classes):
        rows = ds.table[ds.table["class"] == cls]
        pick = rows.iloc[rng.permutation(len(rows))[:per_class]]
        for j in range(per_class):
            ax = axes[i, j]
            ax.axis("off")
            if j >= len(pick):
                continue
            r = pick.iloc[j]
            with Image.open(r.path) as im:
                scale = min(1.0, max_side / max(im.size))
                img = im.convert("L").resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))))
            ax.imshow(np.asarray(img), cmap="gray", vmin=0, vmax=255)
            draw_boxes(ax, [[v * scale for v in b] for b in r.boxes], r.box_classes)
            ax.set_title(f"{cls}\n{r.image_id}" if j == 0 else r.image_id, fontsize=7)
    fig.tight_layout()
    return fig


def size_table(ds: Dataset) -> pd.DataFrame:
    """Image sizes and how many images have each."""
    return ds.table.groupby(["width", "height"]).size().rename("images").reset_index()


# --------------------------------------------------------------------------- training and evaluation


def training_curves(history: str | pd.DataFrame):
    """Loss and accuracy per epoch for every phase (``history.csv`` from training), a line where each starts."""
    h = pd.read_csv(history) if not isinstance(history, pd.DataFrame) else history
    h = h.reset_index(drop=True).assign(step=lambda d: np.arange(len(d)) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for col, style in ((metric, "-"), (f"val_{metric}", "--")):
            if col in h:
                ax.plot(h["step"], h[col], style, label=col)
        phases = list(dict.fromkeys(h["phase"])) if "phase" in h else []
        for phase in phases[1:]:  # a line where each later phase starts
            ax.axvline(h.index[h["phase"] == phase][0] + 0.5, color="grey", lw=0.8)
        ax.set(xlabel=f"epoch ({', then '.join(phases) or 'one phase'})", title=metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion(metrics: dict, normalize: bool = True):
    """Confusion matrix (counts and, side by side, row-normalized) from a metrics dict."""
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    classes = metrics["classes"]
    keep = [i for i in range(len(classes)) if cm[i].sum() > 0 or cm[:, i].sum() > 0]
    cm = cm[np.ix_(keep, keep)]
    names = [classes[i] for i in keep]
    fig, axes = plt.subplots(1, 2 if normalize else 1, figsize=(13 if normalize else 6.5, 5.5), squeeze=False)
    sns.heatmap(
        cm, annot=True, fmt=".0f", cmap="Blues", xticklabels=names, yticklabels=names, ax=axes[0, 0], cbar=False
    )
    axes[0, 0].set(xlabel="predicted", ylabel="true", title="counts")
    if normalize:
        rows = cm.sum(1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        sns.heatmap(
            norm,
            annot=True,
            fmt=".2f",
            cmap="Blues",
            vmin=0,
            vmax=1,
            xticklabels=names,
            yticklabels=names,
            ax=axes[0, 1],
            cbar=False,
        )
        axes[0, 1].set(xlabel="predicted", ylabel="true", title="row-normalized (recall)")
    fig.tight_layout()
    return fig


def per_class_f1(models: dict[str, dict]):
    """Grouped bars of per-class F1 for several models' metrics dicts."""
    rows = [
        {"model": name, "class": c, "f1": v["f1"]}
        for name, m in models.items()
        for c, v in m["per_class"].items()
        if v["support"] > 0
    ]
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * df["class"].nunique() + 2), 3.8))
    sns.barplot(data=df, x="class", y="f1", hue="model", ax=ax)
    ax.set(ylim=(0, 1.05), xlabel="", ylabel="F1", title="Per-class F1 (test)")
    ax.tick_params(axis="x", rotation=40)
    fig.tight_layout()
    return fig


def reliability(metrics: dict, ax=None):
    """Reliability diagram from a metrics dict's ``reliability`` bins, with its ECE."""
    b = metrics["reliability"]
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4, 4))
    conf = [c for c in b["confidence"] if c is not None]
    acc = [a for a, c in zip(b["accuracy"], b["confidence"], strict=True) if c is not None]
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.plot(conf, acc, "o-")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"ECE {metrics['ece']:.3f}")
    fig.tight_layout()
    return fig


def comparison_bars(table: pd.DataFrame, metrics: Sequence[str] = ("test_accuracy", "test_macro_f1")):
    """Bar plot of a comparison table (one row per model or ensemble), with the bootstrap 95%
    intervals as error bars where the table has them (``<metric>_ci_lo`` / ``<metric>_ci_hi``)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * table.shape[0] + 2), 3.8))
    x = np.arange(len(table))
    width = 0.8 / len(metrics)
    lows = []
    for i, metric in enumerate(metrics):
        values = table[metric].to_numpy(float)
        yerr = None
        if f"{metric}_ci_lo" in table and table[f"{metric}_ci_lo"].notna().all():
            lo, hi = table[f"{metric}_ci_lo"].to_numpy(float), table[f"{metric}_ci_hi"].to_numpy(float)
            yerr = np.vstack([np.clip(values - lo, 0, None), np.clip(hi - values, 0, None)])
            lows.append(lo.min())
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, values, width, yerr=yerr, capsize=2, label=metric)
        lows.append(values.min())
    ax.set_xticks(x, table["model"], rotation=40, ha="right")
    ax.set(ylim=(max(0.0, float(min(lows)) - 0.1), 1.0), ylabel="", title="Test split (bars: bootstrap 95% intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def localization_bars(table: pd.DataFrame):
    """Pointing game and energy in the boxes per class and model, against the box share (what a
    uniform map would score), from :func:`gc10lib.explanation.localization_summary` rows with ``model``."""
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], models, strict=True):
        t = table[(table.model == name) & table.pointing.notna()]
        x = np.arange(len(t))
        ax.bar(x - 0.2, t.pointing, 0.4, label="pointing game")
        ax.bar(x + 0.2, t.energy, 0.4, label="energy in boxes")
        ax.scatter(x + 0.2, t.box_fraction, marker="_", s=200, color="black", label="box share (uniform map)", zorder=3)
        ax.set_xticks(x, t["class"], rotation=40, ha="right")
        ax.set(ylim=(0, 1.05), title=name)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def size_vs_accuracy(table: pd.DataFrame, ax=None):
    """Test accuracy against file size (log scale), one marker per exported variant and model."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    sns.scatterplot(data=table, x="size_mib", y="accuracy", hue="variant", style="model", s=80, ax=ax)
    for _, r in table.iterrows():
        ax.annotate(
            f"{r['latency_ms_b1']:.0f} ms",
            (r["size_mib"], r["accuracy"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="file size (MiB, log scale)", ylabel="test accuracy", title="Size vs accuracy (labels: ms/img, batch 1)"
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def cam_overlay(
    ax, image: np.ndarray, cam: np.ndarray, boxes: Sequence[Sequence[float]] = (), title: str = "", max_side: int = 512
) -> None:
    """The image, its CAM (jet, half transparent) and the true-class boxes, in original coordinates."""
    h, w = cam.shape
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    ax.imshow(image[::step, ::step], cmap="gray", extent=(0, w, h, 0))
    ax.imshow(cam[::step, ::step], cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=(0, w, h, 0))
    draw_boxes(ax, boxes, color="white")
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    ax.plot([x], [y], marker="+", color="white", markersize=10, mew=2)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def cam_grid(per_image: pd.DataFrame, cams: dict, per_side: int = 1):
    """One row per class: correct predictions on the left, incorrect on the right (CAM overlays)."""
    classes = sorted(per_image["class"].unique())
    cols = 2 * per_side
    fig, axes = plt.subplots(len(classes), cols, figsize=(3.2 * cols, 1.9 * len(classes)), squeeze=False)
    for i, cls in enumerate(classes):
        for side, correct in enumerate((True, False)):
            rows = per_image[(per_image["class"] == cls) & (per_image.correct == correct) & per_image.path.isin(cams)]
            for k in range(per_side):
                ax = axes[i, side * per_side + k]
                if k >= len(rows):
                    ax.axis("off")
                    ax.set_title(f"{cls}: no {'correct' if correct else 'incorrect'} example", fontsize=7)
                    continue
                r = rows.iloc[k]
                hit = "no box" if r.n_boxes == 0 else ("hit" if r.hit else "miss")
                cam_overlay(ax, load_rgb(r.path), cams[r.path], r.boxes, f"{cls} -> {r.predicted} ({hit})")
    fig.tight_layout()
    return fig


def close_all() -> None:
    """Close every open figure (after saving them from library code, so notebooks show each once)."""
    plt.close("all")
