"""One entry point for gc10lib's benchmarks: what the product's speed and cost are.

    python benchmarks/run.py                 # the list, with what each measures
    python benchmarks/run.py NAME [ARGS...]  # one benchmark; NAME --help for its arguments

Each benchmark prints its figures; none is a test. ``benchmarks/README.md`` gives the figures
measured so far and the machine each ran on. One-off investigations live as dated notes in
``docs/notes/``, not here.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (script in this folder, what it measures)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "input-cache": (
        "bench_input_cache.py",
        "epoch time of the input pipeline, decoding every epoch vs the image cache",
    ),
    "feature-head": (
        "bench_feature_head.py",
        "head training: cached-feature fast path vs fit through the frozen backbone",
    ),
    "ensemble-throughput": (
        "bench_ensemble_throughput.py",
        "one ensemble model vs its members one after another, decoding included",
    ),
    "deployment": ("bench_deployment.py", "a run's teacher vs its student in float and int8: accuracy, MiB, latency"),
}


def listing() -> str:
    """The benchmarks, one line each."""
    width = max(map(len, BENCHMARKS))
    return "\n".join(f"{name:<{width}}  {what}" for name, (_, what) in BENCHMARKS.items())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(__doc__.strip().splitlines()[0] + "\n\n" + listing())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; one of: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    script = HERE / BENCHMARKS[name][0]
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
