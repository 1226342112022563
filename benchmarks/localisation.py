"""Grad-CAM localisation scores of a finished run's models against the dataset's own boxes.

    python benchmarks/localisation.py RUN_DIR DATA_DIR [--models mobilenet ensemble_mean]
        [--per-class N] [--tolerance 15]

Prints, per model, the pointing game and energy-in-box per class and overall on the test split
(all test images unless --per-class), with the time each model took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gc10lib import explain, export


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("data_dir")
    ap.add_argument("--models", nargs="+", default=["best_backbone", "best_ensemble"])
    ap.add_argument("--per-class", type=int)
    ap.add_argument("--tolerance", type=float, default=15.0)
    ap.add_argument("--policy", default="stretch")
    a = ap.parse_args()
    run = Path(a.run_dir)
    for _, m in export.pick_models(run, a.models, a.policy).iterrows():
        t0 = time.perf_counter()
        per, _ = explain.explain_split(m.path, a.data_dir, run / "split.csv", per_class=a.per_class,
                                       policy=m.policy, tolerance=a.tolerance)
        print(f"{m['name']}: {time.perf_counter() - t0:.0f} s")
        print(explain.localisation_summary(per).to_markdown(index=False, floatfmt=".3f"), flush=True)


if __name__ == "__main__":
    main()
