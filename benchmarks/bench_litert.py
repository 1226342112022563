"""LiteRT size / accuracy / speed trade-off for the models of a finished run.

    python benchmarks/bench_litert.py RUN_DIR DATA_DIR [--models mobilenet best_ensemble]
        [--variants float32 float16 dynamic int8] [--out OUT_DIR]

For each model: the Keras original and every exported variant, on the run's test split —
size, accuracy, macro-F1, top-1 agreement with Keras, ms per image at batch 1 and the best
throughput over batch sizes 1, 8 and 32, printed model by model with its time. Writes what the
quantize step writes (``gc10lib.quantize.quantize_run``: ``quantization.csv``/``.md``,
``size_vs_accuracy.png``) into a fresh OUT_DIR (default ``RUN_DIR/quantization-<time>``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gc10lib import quantize
from gc10lib.export import VARIANTS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("data_dir")
    ap.add_argument("--models", nargs="+", default=["mobilenet", "best_ensemble"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out")
    a = ap.parse_args()
    run = Path(a.run_dir)
    t0 = time.perf_counter()
    table = quantize.quantize_run(
        run,
        a.data_dir,
        run / "split.csv",
        a.out or run / f"quantization-{time.strftime('%Y%m%d-%H%M%S')}",
        a.models,
        a.variants,
    )
    print(f"{time.perf_counter() - t0:.0f} s, LiteRT threads {table.attrs['threads']}", flush=True)
    print(quantize.markdown_table(table), flush=True)
    print(f"wrote {table.attrs['out_dir']}")


if __name__ == "__main__":
    main()
