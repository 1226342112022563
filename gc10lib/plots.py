"""Plot helpers for the notebooks (matplotlib/seaborn). Each returns its ``Figure``."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Rectangle
from PIL import Image

from gc10lib.data import Dataset, box_table


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


def box_statistics(ds: Dataset):
    """Boxes per image and relative box area per class (log scale)."""
    bt = box_table(ds)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    nbox = ds.table[ds.table["xml"].notna()].assign(n=lambda t: t["boxes"].map(len))
    if len(nbox):
        sns.countplot(x=nbox["n"], ax=axes[0], color="steelblue")
    axes[0].set(xlabel="boxes per image", ylabel="images", title="Boxes per image")
    if len(bt):
        sns.boxplot(data=bt, y="class", x="rel_area", ax=axes[1], order=[c for c in ds.classes if c in set(bt["class"])],
                    color="lightsteelblue", log_scale=True)
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
