"""LiteRT size / accuracy / speed trade-off for the models of a finished run.

    python benchmarks/bench_litert.py RUN_DIR DATA_DIR [--models mobilenet best_ensemble]
        [--variants float32 float16 dynamic int8] [--out OUT_DIR]

For each model: the Keras original and every exported variant, on the run's test split —
size, accuracy, macro-F1, top-1 agreement with Keras, ms per image at batch 1 and the best
throughput over batch sizes 1, 8 and 32. Writes ``quantization.csv``/``.md`` and
``size_vs_accuracy.png`` into a fresh OUT_DIR (default ``RUN_DIR/quantization-<time>``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from gc10lib import export, plots
from gc10lib.settings import new_output_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("data_dir")
    ap.add_argument("--models", nargs="+", default=["mobilenet", "best_ensemble"])
    ap.add_argument("--variants", nargs="+", default=list(export.VARIANTS))
    ap.add_argument("--out")
    a = ap.parse_args()
    run = Path(a.run_dir)
    out = new_output_dir(a.out or run / f"quantization-{time.strftime('%Y%m%d-%H%M%S')}")
    tables = []
    for _, m in export.pick_models(run, a.models).iterrows():
        t0 = time.perf_counter()
        df = export.quantization_table(m.path, a.data_dir, run / "split.csv", out, a.variants, name=m["name"],
                                       policy=m.policy)
        print(f"{m['name']}: {time.perf_counter() - t0:.0f} s, LiteRT threads {df.attrs['threads']}", flush=True)
        print(export.markdown_table(df), flush=True)
        tables.append(df)
    table = pd.concat(tables, ignore_index=True)
    export.write_table(table, out)
    plots.size_vs_accuracy(table).savefig(out / "size_vs_accuracy.png", dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
