"""The explain step (notebook ``05_explain``, ``gc10 explain``): Grad-CAM of each picked model on
the test split, scored against the boxes by :mod:`gc10lib.explanation`, with its grids and table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gc10lib import plots
from gc10lib.explanation import explain_split, localization_summary
from gc10lib.records import pick_models, write_step_summary
from gc10lib.settings import new_output_dir

__all__ = ["run"]


def run(
    run_dir: str | Path,
    data_dir: str | Path,
    split_csv: str | Path,
    out_dir: str | Path | None,
    models: Sequence[str] = ("best_backbone", "best_ensemble"),
    *,
    per_class: int | None = 5,
    tolerance: float = 15.0,
    seed: int = 42,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The explain step: localization scores of each picked model (names, or ``best_backbone`` /
    ``best_ensemble`` chosen on validation) on the test split.

    Writes ``localization.csv`` (per class and model), ``localization_<model>.csv`` (per image),
    ``cam_grid_<model>.png`` and the step's summary section; returns the table and the per-image
    rows by model.
    """
    picked = pick_models(run_dir, models)
    out = new_output_dir(out_dir, prefix="explain")
    tables, per_images = [], {}
    for r in picked:
        per, cams = explain_split(
            r.path, data_dir, split_csv, per_class=per_class, tolerance=tolerance, seed=seed, keep_cams=1
        )
        per.drop(columns="boxes").to_csv(out / f"localization_{r.name}.csv", index=False)
        per_images[r.name] = per
        tables.append(localization_summary(per).assign(model=r.name))
        fig = plots.cam_grid(per, cams)
        fig.suptitle(r.name, y=1.0)
        fig.savefig(out / f"cam_grid_{r.name}.png", dpi=90, bbox_inches="tight")
        plots.close_all()
    table = pd.concat(tables, ignore_index=True)[
        ["model", "class", "images", "no_boxes", "accuracy", "pointing", "energy", "box_fraction"]
    ]
    table.to_csv(out / "localization.csv", index=False)
    plots.localization_bars(table[table["class"] != "overall"]).savefig(out / "localization.png", dpi=100)
    plots.close_all()
    write_step_summary(
        out, "Localization against the boxes (Grad-CAM, test split)", table.to_markdown(index=False, floatfmt=".3f")
    )
    table.attrs["out_dir"] = str(out)
    return table, per_images
