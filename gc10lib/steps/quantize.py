"""The quantize step (notebook ``04_quantize``, ``gc10 quantize``): each picked model of a run
converted to LiteRT variants by :func:`gc10lib.quantization.quantize_table`, and the table written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gc10lib import plots
from gc10lib.errors import OutputExistsError
from gc10lib.quantization import COLUMNS, VARIANTS, quantize_table
from gc10lib.records import pick_models, write_step_summary
from gc10lib.settings import new_output_dir

__all__ = ["markdown_table", "run", "write_table"]


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str = "quantization") -> tuple[Path, Path]:
    """``<stem>.csv`` and ``<stem>.md`` in ``out_dir`` (refusing to overwrite either)."""
    out_dir = Path(out_dir)
    csv, md = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    for f in (csv, md):
        if f.exists():
            raise OutputExistsError(f"{f}: already exists; choose another output folder.")
    df.to_csv(csv, index=False)
    md.write_text(markdown_table(df) + "\n")
    return csv, md


def markdown_table(df: pd.DataFrame) -> str:
    """The table's readable columns, as markdown."""
    return df[COLUMNS].to_markdown(index=False, floatfmt=".4g")


def run(
    run_dir: str | Path,
    data_dir: str | Path,
    split_csv: str | Path,
    out_dir: str | Path | None,
    models: Sequence[str] = ("best_backbone", "best_ensemble"),
    variants: Sequence[str] = VARIANTS,
    *,
    n_representative: int = 200,
    max_images: int | None = None,
    seed: int = 42,
    **table_kwargs,
) -> pd.DataFrame:
    """The quantize step: :func:`quantize_table` for each picked model of a run (names, or
    ``best_backbone``/``best_ensemble`` chosen on validation), written to ``out_dir`` as
    ``quantization.{csv,md}``, ``size_vs_accuracy.png`` and the step's summary section."""
    picked = pick_models(run_dir, models)
    out = new_output_dir(out_dir, prefix="quantize")
    tables = [
        quantize_table(
            r.path,
            data_dir,
            split_csv,
            out,
            variants,
            name=r.name,
            n_representative=n_representative,
            max_images=max_images,
            seed=seed,
            **table_kwargs,
        )
        for r in picked
    ]
    table = pd.concat(tables, ignore_index=True)
    write_table(table, out)
    fig = plots.size_vs_accuracy(table)
    fig.savefig(out / "size_vs_accuracy.png", dpi=100)
    plots.close_all()
    write_step_summary(out, "Quantization (LiteRT, test split)", markdown_table(table))
    table.attrs.update(out_dir=str(out), threads=tables[0].attrs.get("threads"))
    return table
