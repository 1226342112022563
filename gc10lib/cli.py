"""The ``gc10`` command line. Each sub-command is a thin wrapper over a gc10lib function.

gc10lib modules are imported inside the commands, so that ``gc10 --help`` answers at once
(TensorFlow takes seconds to import). A :class:`~gc10lib.errors.Gc10Error` (bad input) prints one
line and exits with 2; any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from gc10lib.errors import Gc10Error, OutputExistsError, SkippedImageWarning


def _relative(path: str, root) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _data_summary(args: argparse.Namespace) -> int:
    from gc10lib import data

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.discover(args.data)
    _echo_skipped(caught)
    s = data.summarize(ds)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    print(
        f"{s['root']}\n  layout: {s['layout']}\n  images: {s['n_images']} in {s['n_classes']} classes"
        f" (imbalance {s['imbalance_ratio']:.1f}:1)"
    )
    for cls, n in s["images_per_class"].items():
        print(f"    {cls:<20} {n:>6}")
    print("  image sizes: " + ", ".join(f"{d['width']}x{d['height']} ({d['count']})" for d in s["image_sizes"]))
    b = s["boxes"]
    print(
        f"  boxes: {b['n_boxes']} in {b['images_with_xml']} annotated images, "
        f"{b['boxes_per_image_mean']:.2f} per image, median relative area {b['relative_area_median']}"
    )
    if len(ds.quality):
        print(f"  data-quality findings ({len(ds.quality)}):")
        q = ds.quality.copy()
        q["file"] = [_relative(f, ds.root) for f in q["file"]]
        print(q.to_string(index=False))
    else:
        print("  data quality: no findings")
    return 0


def _data_split(args: argparse.Namespace) -> int:
    from gc10lib import data
    from gc10lib.config import check_value

    check_value("--seed", args.seed, {"ge": 0, "le": 2**32 - 1})
    ds = data.discover(args.data)
    man = data.split_dataset(ds, args.fractions, args.seed)
    out = data.write_split(
        man, args.out, ds.root, classes=ds.classes, seed=args.seed, fractions=args.fractions, overwrite=args.overwrite
    )
    counts = man.groupby("subset").size().to_dict()
    print(f"wrote {out} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}; seed {args.seed})")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from gc10lib.config import check_value
    from gc10lib.synth import make_synthetic

    check_value("--per-class", args.per_class, {"ge": 3})  # a split needs 3 images of a class
    check_value("--seed", args.seed, {"ge": 0, "le": 2**32 - 1})
    out = make_synthetic(args.out, per_class=args.per_class, seed=args.seed)
    print(f"wrote synthetic GC10-like dataset to {out} ({10 * args.per_class} images)")
    return 0


def _data_download(args: argparse.Namespace) -> int:
    from gc10lib.download import download_gc10

    out = download_gc10(args.out)
    print(f"downloaded GC10-DET to {out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from gc10lib import pipeline
    from gc10lib.pipeline import main_run

    # papermill/nbclient and asyncio report a dying kernel (e.g. on Ctrl-C) as log records and as
    # "Task exception was never retrieved"; the run's own message says what happened and what to do.
    for name in ("papermill", "nbclient", "asyncio", "traitlets"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.list_configs:
        for name, text in pipeline.list_configs().items():
            print(f"{name:<10} {text}")
        return 0
    overrides = [*(args.parameters or []), *([("data_dir", args.data)] if args.data else [])]
    if args.dry_run:
        for step in pipeline.dry_run(args.config, overrides, args.runs_root):
            print(f"{step.id} ({step.notebook}.ipynb)")
            for k, v in step.params.items():
                print(f"    {k} = {v!r}")
        return 0
    return main_run(
        args.config, overrides, args.name, args.resume, args.runs_root, echo=lambda line: print(line, flush=True)
    )


def _write_new_csv(df, path: str) -> Path:
    """Write ``df`` to a CSV file that must not exist yet (results are never overwritten)."""
    out = Path(path)
    if out.exists():
        raise OutputExistsError(f"{out}: already exists; choose another --out.")
    df.to_csv(out, index=False)
    return out


def _compare(args: argparse.Namespace) -> int:
    from gc10lib.pipeline import aggregate_runs

    table = aggregate_runs(args.runs)
    if args.out:
        print(f"wrote {_write_new_csv(table, args.out)}")
    print(table.to_markdown(index=False, floatfmt=".4f"))
    return 0


def _echo_skipped(caught) -> None:
    for w in caught:
        if issubclass(w.category, SkippedImageWarning):
            print(f"warning: {w.message}", file=sys.stderr)


def _evaluate(args: argparse.Namespace) -> int:
    from gc10lib.evaluation import headline
    from gc10lib.inference import evaluate_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = evaluate_model(args.model, args.data, args.split_csv, args.subset, policy=args.policy)
    _echo_skipped(caught)
    if args.json:
        print(json.dumps(m, default=str))
    else:
        print(f"{args.model} on {args.data} ({m['subset']}): {headline(m)}")
        for cls, v in m["per_class"].items():
            if v["support"]:
                print(f"  {cls:<24} P {v['precision']:.3f}  R {v['recall']:.3f}  F1 {v['f1']:.3f}  n {v['support']}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from gc10lib.errors import InputError
    from gc10lib.inference import predict_files

    if args.out and Path(args.out).exists():  # checked before inference, not after
        raise OutputExistsError(f"{args.out}: already exists; choose another --out.")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise InputError(f"{args.out}: its folder {Path(args.out).resolve().parent} does not exist; create it first")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = predict_files(args.model, args.paths, top_k=args.top_k, policy=args.policy, batch_size=args.batch_size)
    _echo_skipped(caught)
    if args.out:
        print(f"wrote {len(df)} predictions to {_write_new_csv(df, args.out)}")
    else:
        print(df.to_csv(index=False), end="")
    return 0


def _export(args: argparse.Namespace) -> int:
    from gc10lib.backbones import load_model
    from gc10lib.errors import InputError
    from gc10lib.export import export_litert, representative_images
    from gc10lib.layers import model_info

    if args.calibration < 1:
        raise InputError(f"--calibration {args.calibration}: the number of calibration images must be at least 1")
    model = load_model(args.model)
    info = model_info(model)
    rep = None
    if args.variant == "int8":
        if not args.data:
            raise InputError("--variant int8 needs --data (and preferably --split-csv) for calibration images")
        rep = representative_images(
            args.data, args.split_csv, info.input_size, n=args.calibration, policy=args.policy or info.policy
        )
    out = export_litert(model, args.out, args.variant, representative=rep, float_stem=not args.full_integer)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB, {args.variant})")
    return 0


def _run_inputs(args: argparse.Namespace) -> tuple[str, str]:
    """``--data`` and ``--split-csv``, by default those of the run folder (``run.json``, ``split.csv``)."""
    from gc10lib.runfolder import RunFolder

    return RunFolder(args.run).inputs(args.data, args.split_csv)


def _train(args: argparse.Namespace) -> int:
    from gc10lib import synth
    from gc10lib.config import TrainConfig, apply_overrides
    from gc10lib.pipeline import load_config
    from gc10lib.steps import train

    defaults = TrainConfig.defaults()
    values = {k: v for k, v in (load_config(args.config) if args.config else {}).items() if k in defaults}
    values = apply_overrides(values, args.parameters or [], defaults, "training parameter")
    cfg = TrainConfig(**{**values, "backbone": args.backbone, "verbose": 2})
    m = train.run(cfg, synth.resolve_data_dir(args.data), args.out, split_csv=args.split_csv)
    sel = m["selected"]
    print(f"wrote {Path(m['model_path']).parent} (saved phase {sel['phase']!r}, {sel['monitor']} {sel['value']:.4f})")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from gc10lib.steps.ensemble import find_recipe, materialize
    from gc10lib.steps.ensemble import run as ensemble_run

    if args.materialize:
        path = materialize(find_recipe(args.run, args.materialize))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    data_dir, split = _run_inputs(args)
    table, _ = ensemble_run(args.run, args.methods, args.out, data_dir, split, seed=args.seed, probes=args.probes)
    print(table.to_markdown(index=False, floatfmt=".4f"))
    print(f"chosen on validation: {table.attrs['best_ensemble']}; wrote {table.attrs['out_dir']}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from gc10lib.steps.quantize import markdown_table
    from gc10lib.steps.quantize import run as quantize_run

    data_dir, split = _run_inputs(args)
    table = quantize_run(
        args.run,
        data_dir,
        split,
        args.out,
        args.models,
        args.variants,
        max_images=args.max_images,
        seed=args.seed,
        full_integer=args.full_integer,
    )
    print(markdown_table(table))
    print(f"wrote {table.attrs['out_dir']}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from gc10lib.config import DistillConfig, apply_overrides
    from gc10lib.pipeline import load_config
    from gc10lib.steps.distill import DEPLOY_COLUMNS
    from gc10lib.steps.distill import run as distill_run

    params = load_config(args.config) if args.config else {}
    names = DistillConfig.parameter_names()  # flat name (student_epochs_finetune ...) -> field
    defaults = DistillConfig.defaults()
    # on this command a bare name is the student's own: -p epochs_finetune 0 means the student's
    allowed = {n: defaults[f] for n, f in names.items()}
    overrides = [(DistillConfig.ALIASES.get(k, k), v) for k, v in args.parameters or []]
    params = apply_overrides(params, overrides, allowed, "distillation parameter")
    params.update(seed=args.seed, verbose=2)
    cfg = DistillConfig.from_params(params)
    data_dir, split = _run_inputs(args)
    m, table = distill_run(args.run, data_dir, split, args.out, cfg, args.teacher, quantize=not args.no_int8)
    if table is not None:
        print(table[DEPLOY_COLUMNS].to_markdown(index=False, floatfmt=".4g"))
    print(f"wrote {m['out_dir']} (student test accuracy {m['test']['accuracy']:.4f})")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from gc10lib.steps.explain import run as explain_run

    data_dir, split = _run_inputs(args)
    table, _ = explain_run(args.run, data_dir, split, args.out, args.models, per_class=args.per_class, seed=args.seed)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    print(f"wrote {table.attrs['out_dir']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from gc10lib.report import copy_notebooks, table_rows, write_page

    if args.table:  # the arguments are results pages: print the README's results table
        print("\n".join(table_rows(args.runs)))
        return 0
    if args.notebooks:
        files = copy_notebooks(args.runs[0], args.notebooks, about=args.about or "")
        print(f"wrote {len(files)} executed notebooks to {args.notebooks}")
    if args.out:
        print(f"wrote {write_page(args.runs, args.out, title=args.title, about=args.about or '')}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from gc10lib import cache

    if args.action == "info":
        info = cache.info()
        print(f"{info['root']}: {cache.human(info['bytes'])} in {info['files']} files")
        for part, v in info["parts"].items():
            print(f"  {part:<10} {cache.human(v['bytes']):>10}  {v['files']:>7} files  {cache.PARTS.get(part, '')}")
        return 0
    freed = cache.clear(args.part)
    print(f"removed {cache.human(freed)} from {cache.info()['root']}")
    return 0


# --------------------------------------------------------------------------- the parser

POLICY_HELP = "override the resize policy the model records (stretch or pad); normally not needed"
FULL_INTEGER_HELP = (
    "int8 without the float stem (MobileNet/MobileNetV2 keep their preprocessing and first block in "
    "float by default, which keeps their accuracy): for accelerators that run integer ops only"
)
OUT_HELP = "a new path for the results, never overwritten"
MODELS_HELP = "model names in the run, or best_backbone / best_ensemble (chosen on validation)"
DEPRECATED = "deprecated spelling, kept for one release"


def _add_parameter_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "-p", "--parameter", dest="parameters", nargs=2, action="append", metavar=("KEY", "VALUE"), help=help_text
    )


def _command(sub, name: str, help_text: str, example: str, func=None) -> argparse.ArgumentParser:
    """A sub-command whose help ends with examples."""
    s = sub.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog="examples:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if func is not None:
        s.set_defaults(func=func)
    return s


def _step_parser(sub, name: str, help_text: str, func, example: str) -> argparse.ArgumentParser:
    """A step on a run folder: ``--model RUN`` (the run whose models it reads), ``--data``, ``--split-csv``."""
    s = _command(sub, name, help_text, example, func)
    s.add_argument("--model", dest="run", metavar="RUN", help="run folder holding the trained models")
    s.add_argument("run_positional", nargs="?", metavar="RUN", help=f"{DEPRECATED}: use --model RUN")
    s.add_argument("--data", help="dataset folder (default: the run's data_dir from run.json)")
    s.add_argument("--split-csv", help="split manifest (default: <run>/split.csv)")
    s.add_argument("--out", help=f"output folder, {OUT_HELP} (default: a fresh runs/{name}-<time>)")
    s.add_argument("--seed", type=int, default=42, help="seed for sampling and fitting (default 42)")
    return s


def _data_argument(s: argparse.ArgumentParser, help_text: str) -> None:
    """``--data PATH``, with the old positional spelling still accepted."""
    s.add_argument("--data", help=help_text)
    s.add_argument("path", nargs="?", metavar="PATH", help=f"{DEPRECATED}: use --data PATH")


#: ``gc10 data ACTION``: (help, examples)
DATA_COMMANDS = {
    "summary": (
        "layout, class counts, sizes, boxes and data-quality table of a dataset folder",
        "gc10 data summary --data ../shared/data/gc10-sample\ngc10 data summary --data data/gc10 --json > summary.json",
    ),
    "split": (
        "write a seeded, stratified, grouped split manifest (CSV plus a .json sidecar)",
        "gc10 data split --data data/gc10 --out split.csv --seed 42 --fractions 0.7 0.15 0.15",
    ),
    "synth": (
        "write a synthetic GC10-like dataset in the Kaggle layout (for smoke tests and demos)",
        "gc10 data synth /tmp/synth --per-class 30 --seed 0",
    ),
    "download": (
        "download GC10-DET from Kaggle: public, kagglehub needs no login (the kaggle package, the fallback, "
        "needs an API token)",
        "gc10 data download data/gc10\ngc10 data summary --data data/gc10",
    ),
}


def _add_data_commands(sub) -> None:
    d = sub.add_parser("data", help="inspect, split, synthesize or download datasets")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    s = _command(dsub, "summary", *DATA_COMMANDS["summary"], _data_summary)
    _data_argument(s, "dataset folder: a Kaggle GC10 download, the original release, or one folder per class")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    s = _command(dsub, "split", *DATA_COMMANDS["split"], _data_split)
    _data_argument(s, "dataset folder")
    s.add_argument("--out", required=True, help="manifest file to write, ending in .csv (its sidecar is <name>.json)")
    s.add_argument("--seed", type=int, default=42, help="seed of the split (default 42)")
    s.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
        help="shares of train, val and test (default 0.7 0.15 0.15)",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing manifest and sidecar")
    s = _command(dsub, "synth", *DATA_COMMANDS["synth"], _data_synth)
    s.add_argument("out", help="empty folder to write into")
    s.add_argument("--per-class", type=int, default=30, help="images per class (default 30)")
    s.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    s = _command(dsub, "download", *DATA_COMMANDS["download"], _data_download)
    s.add_argument("out", help="empty folder to unpack the download into")


def _add_training_commands(sub) -> None:
    from gc10lib.config import BACKBONES

    t = _command(
        sub,
        "train",
        "train one backbone, as notebook 02 does",
        "gc10 train --backbone mobilenet --data synthetic -p epochs_head 3\n"
        "gc10 train --backbone mobilenet --data ../shared/data/neu-det --config neu --out runs/neu-mobilenet",
        _train,
    )
    t.add_argument("--backbone", required=True, choices=BACKBONES, metavar="BACKBONE", help=", ".join(BACKBONES))
    t.add_argument("--data", required=True, help="dataset folder, or 'synthetic'")
    t.add_argument("--split-csv", help="split manifest (default: a seeded 70/15/15 split in memory)")
    t.add_argument("--out", help=f"output folder, {OUT_HELP} (default: a fresh runs/train-<backbone>-<time>)")
    t.add_argument("--config", help="take training values from this YAML config (a path or a name in configs/)")
    _add_parameter_option(t, "a TrainConfig field (YAML-parsed), e.g. -p epochs_head 3 -p augment '[flip]'")
    s = _step_parser(
        sub,
        "ensemble",
        "build, save and compare every ensemble method over a run's backbones",
        _ensemble,
        "gc10 ensemble --model runs/neu\ngc10 ensemble --model runs/neu --methods mean stack --probes\n"
        "gc10 ensemble --model runs/neu --materialize mean    # build a .keras from a method's recipe",
    )
    methods = ["mean", "weighted", "stack", "select"]
    s.add_argument("--methods", nargs="+", default=methods, choices=methods, help="methods to build (default: all)")
    s.add_argument("--probes", action="store_true", help="also use each backbone's probe as a member")
    s.add_argument(
        "--materialize",
        metavar="METHOD",
        choices=methods,
        help="build the .keras of a method the run kept as a recipe (only the method chosen on validation "
        "is saved as a model); fits and evaluates nothing",
    )
    s = _step_parser(
        sub,
        "distill",
        "train one small student on a run's chosen ensemble, and its int8 LiteRT file",
        _distill,
        "gc10 distill --model runs/xsdd\n"
        "gc10 distill --model runs/xsdd -p student mobilenet -p temperature 4 -p unlabelled_dir data/unlabelled",
    )
    s.add_argument("--teacher", default="best_ensemble", help="model name, or best_ensemble / best_backbone")
    s.add_argument("--config", help="take distillation values from this YAML config (a path or a name in configs/)")
    _add_parameter_option(s, "a DistillConfig field (YAML-parsed), e.g. -p epochs_finetune 0 -p alpha 0.9")
    s.add_argument("--no-int8", action="store_true", help="train and evaluate the student only; no LiteRT table")


def _add_model_commands(sub) -> None:
    from gc10lib.config import VARIANTS

    s = _step_parser(
        sub,
        "quantize",
        "LiteRT variants of a run's models against Keras: size, accuracy, speed",
        _quantize,
        "gc10 quantize --model runs/neu\ngc10 quantize --model runs/neu --models mobilenet --variants int8",
    )
    s.add_argument("--models", nargs="+", default=["best_backbone", "best_ensemble"], help=MODELS_HELP)
    s.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="LiteRT variants (all)")
    s.add_argument("--max-images", type=int, help="cap on test images (default: all)")
    s.add_argument("--full-integer", action="store_true", help=FULL_INTEGER_HELP)
    s = _step_parser(
        sub,
        "explain",
        "Grad-CAM localization of a run's models against the boxes",
        _explain,
        "gc10 explain --model runs/neu --per-class 5\ngc10 explain --model runs/neu --models mobilenet ensemble_mean",
    )
    s.add_argument("--models", nargs="+", default=["best_backbone", "best_ensemble"], help=MODELS_HELP)
    s.add_argument("--per-class", type=int, default=5, help="test images per class (default 5)")
    e = _command(
        sub,
        "evaluate",
        "metrics of a .keras or .tflite model on a dataset or one split subset",
        "gc10 evaluate --model runs/neu/steps/02_finetune_mobilenet/model.keras --data ../shared/data/neu-det\n"
        "gc10 evaluate --model m.tflite --data data/gc10 --split-csv runs/x/split.csv --subset test --json",
        _evaluate,
    )
    e.add_argument("--model", required=True, help="a .keras or .tflite file written by gc10lib")
    e.add_argument("--data", required=True, help="dataset folder (any layout gc10 data reads)")
    e.add_argument("--split-csv", help="split manifest; with it only --subset is evaluated")
    e.add_argument("--subset", default="test", choices=["train", "val", "test"], help="subset of --split-csv")
    e.add_argument("--policy", choices=["stretch", "pad"], help=POLICY_HELP)
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    pr = _command(
        sub,
        "predict",
        "top-k classes for image files or folders (decoded in memory: nothing is cached)",
        "gc10 predict --model model.keras images/ more.jpg --top-k 3 --out preds.csv",
        _predict,
    )
    pr.add_argument("--model", required=True, help="a .keras or .tflite file written by gc10lib")
    pr.add_argument("paths", nargs="+", help="image files and folders (searched recursively)")
    pr.add_argument("--out", help=f"CSV file, {OUT_HELP} (default: print CSV)")
    pr.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    pr.add_argument("--batch-size", type=int, default=32, help="images decoded and predicted at a time (default 32)")
    pr.add_argument("--policy", choices=["stretch", "pad"], help=POLICY_HELP)
    x = _command(
        sub,
        "export",
        "export a .keras model to LiteRT (.tflite)",
        "gc10 export --model model.keras --variant float16 --out model_f16.tflite\n"
        "gc10 export --model model.keras --variant int8 --data data/gc10 --split-csv split.csv --out m_int8.tflite",
        _export,
    )
    x.add_argument("--model", required=True, help="a .keras file written by gc10lib")
    x.add_argument(
        "--variant",
        choices=VARIANTS,
        help="float32, float16 (half-size weights), dynamic (int8 weights) or int8 (int8 weights and activations)",
    )
    x.add_argument("--format", choices=VARIANTS, help=f"{DEPRECATED}: use --variant")
    x.add_argument("--data", help="dataset for int8 calibration images")
    x.add_argument("--split-csv", help="split manifest: calibrate on its train subset")
    x.add_argument("--calibration", type=int, default=200, help="number of calibration images (default 200)")
    x.add_argument("--out", required=True, help=f"output .tflite file, {OUT_HELP} (its sidecar is <out>.json)")
    x.add_argument("--policy", choices=["stretch", "pad"], help=POLICY_HELP)
    x.add_argument("--full-integer", action="store_true", help=FULL_INTEGER_HELP)


#: commands over finished runs: (help, examples)
RUNS_COMMANDS = {
    "compare": (
        "mean and std per model over finished runs (e.g. one per seed)",
        "for s in 42 43 44; do gc10 run --config xsdd -p seed $s --name xsdd-s$s; done\n"
        "gc10 compare runs/xsdd-s42 runs/xsdd-s43 runs/xsdd-s44 --out seeds.csv",
    ),
    "report": (
        "a dataset's results page from finished runs (mean ± std over them, chosen models, figures)",
        "gc10 report runs/xsdd-s42 runs/xsdd-s43 --out docs/results/xsdd.md --title X-SDD\n"
        "gc10 report runs/xsdd-s42 --notebooks docs/notebooks/xsdd --about 'X-SDD (Apache-2.0), cite ...'\n"
        "gc10 report --table docs/results/*.md          # the README's results table, one row per page",
    ),
}


def _add_pipeline_commands(sub) -> None:
    r = _command(
        sub,
        "run",
        "run the notebook pipeline headless with papermill",
        "gc10 run                                        # the demo config on synthetic data\n"
        "gc10 run --config neu --data ../shared/data/neu-det --name neu\n"
        "gc10 run --config demo -p backbones '[mobilenet, vgg19]' --dry-run\n"
        "gc10 run --config my.yaml --data data/mine      # a config file of your own\n"
        "gc10 run --resume --name neu                     # after a failure or Ctrl-C",
        _run,
    )
    r.add_argument("--config", default="demo", help="a YAML config file, or the name of a bundled one (default: demo)")
    r.add_argument("--data", help="dataset folder (the same as -p data_dir PATH)")
    _add_parameter_option(r, "override a config value (YAML-parsed), e.g. -p data_dir ../data -p epochs_head 3")
    r.add_argument("--name", help="run folder name under --runs-root (default: <config>-<time>)")
    r.add_argument("--resume", action="store_true", help="continue the run --name: skip finished steps")
    r.add_argument("--runs-root", default="runs", help="folder holding the run folders (default: runs)")
    r.add_argument("--dry-run", action="store_true", help="print the steps and their parameters; run nothing")
    r.add_argument("--list-configs", action="store_true", help="list the bundled configurations and exit")
    c = _command(sub, "compare", *RUNS_COMMANDS["compare"], _compare)
    c.add_argument("runs", nargs="+", help="run folders holding summary.json")
    c.add_argument("--out", help=f"also write the table as CSV, {OUT_HELP}")
    g = _command(sub, "report", *RUNS_COMMANDS["report"], _report)
    g.add_argument("runs", nargs="+", help="finished run folders of one config (one per seed, say)")
    g.add_argument("--out", help=f"the page, a .md file, {OUT_HELP}; figures go to <name>_files/")
    g.add_argument("--notebooks", help="also copy the first run's executed notebooks into this new folder")
    g.add_argument("--title", help="the dataset's name on the page (default: the config's name)")
    g.add_argument("--about", help="a paragraph under the title: the dataset, its licence and citation")
    g.add_argument("--table", action="store_true", help="the arguments are results pages: print the README's table")
    k = _command(
        sub,
        "cache",
        "the size of gc10lib's cache ($GC10_CACHE_DIR, default ~/.cache/gc10lib), or clear it",
        "gc10 cache info\ngc10 cache clear --part images",
        _cache,
    )
    k.add_argument("action", choices=["info", "clear"], help="info: sizes per part; clear: delete cached files")
    k.add_argument("--part", help="with clear: only this part (images, features, maps, distill); default: all")


def build_parser() -> argparse.ArgumentParser:
    """The ``gc10`` argument parser; backbone names and LiteRT variants come from their registries."""
    p = argparse.ArgumentParser(
        prog="gc10",
        description="GC10-DET defect classification toolkit: data checks, training, ensembles, LiteRT export, "
        "Grad-CAM, and the notebook pipeline.",
        epilog="examples:\n  gc10 run                      # the demo pipeline on synthetic data (what `make run` does)\n"
        "  gc10 run --list-configs       # the configurations and what each is for\n"
        "  gc10 data summary --data data/gc10   # what a dataset folder holds, and its data-quality table\n"
        "A model is always --model (a file, or for ensemble/quantize/distill/explain a run folder), data "
        "always --data, and --out a new path that is never overwritten. Each command has its own --help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    with contextlib.suppress(PackageNotFoundError):  # a source tree that was never installed has no version
        p.add_argument("--version", action="version", version=f"gc10lib {version('gc10lib')}")
    p.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="also print gc10lib's debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(sub)
    _add_training_commands(sub)
    _add_model_commands(sub)
    _add_pipeline_commands(sub)
    return p


def _normalize(args: argparse.Namespace) -> None:
    """Old spellings (a positional run folder or dataset, ``export --format``) still work for one
    release, with a note saying the new one; a missing run folder is the usual usage error."""
    old = [
        ("run_positional", "run", "--model RUN"),
        ("path", "data", "--data PATH"),
        ("format", "variant", "--variant"),
    ]
    for attr, new, spelling in old:
        value = getattr(args, attr, None)
        if value is None:
            continue
        if getattr(args, new, None) is None:
            setattr(args, new, value)
        print(f"gc10: note: that spelling is deprecated; use {spelling}", file=sys.stderr)
    for attr, flag in (("run", "--model RUN"), ("data", "--data PATH"), ("variant", "--variant")):
        if hasattr(args, attr) and getattr(args, attr) is None and _required(args, attr):
            raise Gc10Error(f"{args.command}: {flag} is required")


def _required(args: argparse.Namespace, attr: str) -> bool:
    """Whether ``attr`` must be given: a step's run folder, a data command's dataset, export's variant."""
    if attr == "run":
        return hasattr(args, "run_positional")
    if attr == "data":
        return hasattr(args, "path") and args.command == "data"
    return attr == "variant" and args.command == "export"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # other libraries: warnings only
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.getLogger("gc10lib").setLevel(level)
    try:
        _normalize(args)
        return int(args.func(args) or 0)
    except Gc10Error as exc:
        print(f"gc10: error: {exc}", file=sys.stderr)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError) as exc:  # the environment, not a bug
        print(f"gc10: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"gc10: {exc}" if str(exc) else "gc10: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
