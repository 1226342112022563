"""Grad-CAM localization scores of a finished run's models against the dataset's own boxes.

    python benchmarks/localization.py RUN_DIR DATA_DIR [--models mobilenet ensemble_mean]
        [--per-class N] [--tolerance 15]

Prints, per model, the pointing game and energy-in-box per class and overall on the test split
(all test images unless --per-class), with the time each model took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gc10lib import explain, records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("data_dir")
    ap.add_argument("--models", nargs="+", default=["best_backbone", "best_ensemble"])
    ap.add_argument("--per-class", type=int)
    ap.add_argument("--tolerance", type=float, default=15.0)
    a = ap.parse_args()
    run = Path(a.run_dir)
    for m in records.pick_models(run, a.models):
        t0 = time.perf_counter()
        per, _ = explain.explain_split(
            m.path, a.data_dir, run / "split.csv", per_class=a.per_class, tolerance=a.tolerance
        )
        print(f"{m.name}: {time.perf_counter() - t0:.0f} s")
        print(explain.localization_summary(per).to_markdown(index=False, floatfmt=".3f"), flush=True)


if __name__ == "__main__":
    main()
