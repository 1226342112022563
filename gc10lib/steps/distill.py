"""The distill step (notebook ``06_distill``, ``gc10 distill``): a student trained on the run's
teacher by :func:`gc10lib.distillation.train_student`, then the deployment table: teacher, student
(float and int8) and the run's best single backbone, each with accuracy, MiB and speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gc10lib import plots
from gc10lib.backbones import get_spec
from gc10lib.config import DistillConfig
from gc10lib.distillation import train_student
from gc10lib.errors import InputError
from gc10lib.quantization import quantize_table
from gc10lib.records import ModelRecord, find_models, pick_models, write_step_summary
from gc10lib.settings import new_output_dir

__all__ = ["DEPLOY_COLUMNS", "deployment_table", "run"]


DEPLOY_COLUMNS = ["model", "role", "variant", "accuracy", "macro_f1", "size_mib", "latency_ms_b1", "throughput_img_s"]


def deployment_table(
    teacher: ModelRecord,
    student_path: str | Path,
    data_dir: str | Path,
    split_csv: str | Path,
    out_dir: str | Path,
    *,
    n_representative: int = 200,
    seed: int = 42,
    baseline: ModelRecord | None = None,
    **table_kwargs,
) -> pd.DataFrame:
    """Teacher (Keras), student (Keras) and student (int8 LiteRT) on the test split, one row each;
    with ``baseline`` (the run's best single backbone), that model in Keras and int8 too, so the
    table says whether the student is worth more than the best model the run already had."""
    out_dir = Path(out_dir)
    t = quantize_table(teacher.path, data_dir, split_csv, out_dir, (), name=teacher.name, seed=seed, **table_kwargs)
    small = [("student", student_path, "student")]
    if baseline is not None:
        small.append((baseline.name, baseline.path, "best backbone"))
    parts, roles = [t], ["teacher"]
    for name, path, role in small:
        parts.append(
            quantize_table(
                path,
                data_dir,
                split_csv,
                out_dir,
                ("int8",),
                name=name,
                n_representative=n_representative,
                seed=seed,
                **table_kwargs,
            )
        )
        roles += [role] * len(parts[-1])
    df = pd.concat(parts, ignore_index=True)
    df["role"] = roles
    df["speedup_vs_teacher_b1"] = df.latency_ms_b1.iloc[0] / df.latency_ms_b1
    return df


def run(
    run_dir: str | Path,
    data_dir: str | Path,
    split_csv: str | Path,
    out_dir: str | Path | None,
    cfg: DistillConfig,
    teacher: str = "best_ensemble",
    *,
    quantize: bool = True,
    n_representative: int = 200,
    **table_kwargs,
) -> tuple[dict, pd.DataFrame | None]:
    """The distill step: train a student on ``teacher`` (a model name, or ``best_ensemble`` /
    ``best_backbone`` chosen on validation) and, with ``quantize``, write the deployment table
    (``deployment.{csv,md}``, ``deployment.png``) and the step's summary section."""
    picked = pick_models(run_dir, [teacher])
    if not picked:
        raise InputError(
            f"{run_dir}: no {teacher.removeprefix('best_')} to teach the student; run the ensemble step, "
            "or pass --teacher best_backbone or a model name"
        )
    rec = picked[0]
    best_single = [r for r in pick_models(run_dir, ["best_backbone"]) if r.name != rec.name]
    out = new_output_dir(out_dir, prefix="distill")
    own = [r for r in find_models(run_dir, ("backbone",)) if r.backbone == get_spec(cfg.student).name]
    own.sort(key=lambda r: r.val.get("log_loss", np.inf))  # several (other sizes, tiles): validation's pick
    start = own[0].path if own else None  # train_student uses it only with map_head and warm_start
    metrics = train_student(cfg, rec.path, data_dir, split_csv, out, teacher_name=rec.name, start_from=start)
    table = None
    lines = [
        f"Student `{metrics['name']}` taught by `{rec.name}` (T={cfg.temperature}, alpha={cfg.alpha}), "
        f"saved phase {metrics['selected']['phase']!r}."
    ]
    if quantize:
        table = deployment_table(
            rec,
            metrics["model_path"],
            data_dir,
            split_csv,
            out,
            n_representative=n_representative,
            seed=cfg.seed,
            baseline=best_single[0] if best_single else None,
            **table_kwargs,
        )
        table.to_csv(out / "deployment.csv", index=False)
        md = table[DEPLOY_COLUMNS].to_markdown(index=False, floatfmt=".4g")
        (out / "deployment.md").write_text(md + "\n")
        fig = plots.size_vs_accuracy(table.assign(model=table.model + " " + table.variant))
        fig.savefig(out / "deployment.png", dpi=100)
        plots.close_all()
        lines += ["", md]
    else:
        m = metrics.get("test") or {}
        lines.append(f"Test accuracy {m.get('accuracy')}, macro-F1 {m.get('macro_f1')}.")
    write_step_summary(out, "Distillation: one small model (test split)", "\n".join(lines))
    metrics["out_dir"] = str(out)
    return metrics, table
