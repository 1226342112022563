"""The README's figures, from finished run folders (nothing is trained or predicted again).

    python docs/make_figures.py RUN_DIR --prefix NAME [--out docs] [--figures comparison confusion split]

Writes ``<out>/<NAME>_comparison.png`` (test accuracy and macro-F1 with their bootstrap 95%
intervals, for every backbone, probe and ensemble of the run), ``<NAME>_confusion.png`` (the
ensemble chosen on validation) and ``<NAME>_split.png`` (the split's composition). Existing files
are refused, so a figure in the README is always the one its command made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gc10lib import data, plots, records

FIGURES = ("comparison", "confusion", "split")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a finished `gc10 run` folder")
    ap.add_argument("--prefix", required=True, help="file name prefix, e.g. neu or xsdd")
    ap.add_argument("--out", default="docs", help="output folder (default docs/)")
    ap.add_argument("--dpi", type=int, default=60)
    ap.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES), help="which to draw (default all)")
    a = ap.parse_args()
    run, out = Path(a.run_dir), Path(a.out)
    targets = {k: out / f"{a.prefix}_{k}.png" for k in a.figures}
    taken = [str(p) for p in targets.values() if p.exists()]
    if taken:
        raise SystemExit(f"refusing to overwrite {', '.join(taken)}")
    found = records.find_models(run / "steps")
    table = records.records_table(found)
    if "comparison" in targets:
        order = {"backbone": 0, "probe": 1, "ensemble": 2}
        rows = table.sort_values(["kind", "model"], key=lambda c: c.map(order) if c.name == "kind" else c)
        fig = plots.comparison_bars(rows.reset_index(drop=True))
        fig.axes[0].set_title(f"{run.name}: test split, 95% bootstrap intervals")
        fig.savefig(targets["comparison"], dpi=a.dpi)
    if "confusion" in targets:
        chosen = records.choose_by_validation(table, "ensemble")
        fig = plots.confusion(next(r for r in found if r.name == chosen).metrics["test"], normalize=False)
        fig.axes[0].set_title(f"{chosen} (chosen on val), test")
        fig.tight_layout()
        fig.savefig(targets["confusion"], dpi=a.dpi)
    if "split" in targets:
        classes = json.loads((run / "split.json").read_text())["classes"]
        plots.split_composition(data.read_split(run / "split.csv"), classes).savefig(targets["split"], dpi=a.dpi)
    plots.close_all()
    for p in targets.values():
        print(f"{p}  {p.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
