"""Teacher ensemble against its distilled student, in float and int8: accuracy, size and speed.

    python benchmarks/bench_deployment.py RUN_DIR [--data DATA_DIR] [--out OUT_DIR]

RUN_DIR is a finished run with a distill step (``06_distill``, or ``gc10 distill RUN``). Its student
(``kind: student`` in ``metrics.json``) and the teacher it names are scored on the run's test split:
accuracy, macro-F1, MiB, ms per image at batch 1 and best throughput over batch sizes 1, 8 and 32
(Keras ``predict_on_batch`` for ``.keras``; the LiteRT interpreter on all cores for int8). The
student is exported to int8 again into a fresh OUT_DIR (default ``RUN_DIR/deployment-<time>``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gc10lib import steps
from gc10lib.records import find_models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--data", help="dataset folder (default: the run's data_dir from run.json)")
    ap.add_argument("--out")
    a = ap.parse_args()
    run = Path(a.run_dir)
    data_dir = a.data or json.loads((run / "run.json").read_text())["config"]["data_dir"]
    students = find_models(run, ("student",))
    if not students:
        raise SystemExit(f"{run}: no distilled student (run 06_distill or `gc10 distill {run}` first)")
    student = students[-1]
    by_name = {r.name: r for r in find_models(run)}
    teacher = by_name[student.metrics["teacher"]["name"]]
    out = Path(a.out or run / f"deployment-{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.perf_counter()
    table = steps.distill.deployment_table(teacher, student.path, data_dir, run / "split.csv", out)
    print(f"{time.perf_counter() - t0:.0f} s; teacher {teacher.name}, student {student.name}", flush=True)
    print(
        table[[*steps.distill.DEPLOY_COLUMNS, "agreement", "speedup_vs_teacher_b1"]].to_markdown(
            index=False, floatfmt=".4g"
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
