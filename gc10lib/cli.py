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
        ds = data.discover(args.path)
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

    ds = data.discover(args.path)
    man = data.split_dataset(ds, args.fractions, args.seed)
    out = data.write_split(
        man, args.out, ds.root, classes=ds.classes, seed=args.seed, fractions=args.fractions, overwrite=args.overwrite
    )
    counts = man.groupby("subset").size().to_dict()
    print(f"wrote {out} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}; seed {args.seed})")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from gc10lib.synth import make_synthetic

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
    if args.dry_run:
        for step in pipeline.dry_run(args.config, args.parameters or [], args.runs_root):
            print(f"{step.id} ({step.notebook}.ipynb)")
            for k, v in step.params.items():
                print(f"    {k} = {v!r}")
        return 0
    return main_run(
        args.config,
        args.parameters or [],
        args.name,
        args.resume,
        args.runs_root,
        echo=lambda line: print(line, flush=True),
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
    from gc10lib.predict import evaluate_model

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
    from gc10lib.predict import predict_files

    if args.out and Path(args.out).exists():  # checked before inference, not after
        raise OutputExistsError(f"{args.out}: already exists; choose another --out.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = predict_files(args.model, args.paths, top_k=args.top_k, policy=args.policy)
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

    model = load_model(args.model)
    info = model_info(model)
    rep = None
    if args.format == "int8":
        if not args.data:
            raise InputError("--format int8 needs --data (and preferably --split-csv) for calibration images")
        rep = representative_images(
            args.data, args.split_csv, info.input_size, n=args.calibration, policy=args.policy or info.policy
        )
    out = export_litert(model, args.out, args.format, representative=rep, float_stem=not args.full_integer)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB, {args.format})")
    return 0


def _run_inputs(args: argparse.Namespace) -> tuple[str, str]:
    """``--data`` and ``--split-csv``, by default those of the run folder (``run.json``, ``split.csv``)."""
    from gc10lib.runfolder import RunFolder

    return RunFolder(args.run).inputs(args.data, args.split_csv)


def _train(args: argparse.Namespace) -> int:
    from gc10lib import synth, training
    from gc10lib.config import TrainConfig, apply_overrides
    from gc10lib.pipeline import load_config

    defaults = TrainConfig.defaults()
    values = {k: v for k, v in (load_config(args.config) if args.config else {}).items() if k in defaults}
    values = apply_overrides(values, args.parameters or [], defaults, "training parameter")
    cfg = TrainConfig(**{**values, "backbone": args.backbone, "verbose": 2})
    m = training.train_backbone(cfg, synth.resolve_data_dir(args.data), args.out, split_csv=args.split_csv)
    sel = m["selected"]
    print(f"wrote {Path(m['model_path']).parent} (saved phase {sel['phase']!r}, {sel['monitor']} {sel['value']:.4f})")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from gc10lib.ensemble import ensemble_run, find_recipe, materialize

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
    from gc10lib.quantize import markdown_table, quantize_run

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
    from gc10lib.distill import DEPLOY_COLUMNS, distill_run
    from gc10lib.pipeline import load_config

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
    from gc10lib.explain import explain_run

    data_dir, split = _run_inputs(args)
    table, _ = explain_run(args.run, data_dir, split, args.out, args.models, per_class=args.per_class, seed=args.seed)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    print(f"wrote {table.attrs['out_dir']}")
    return 0


def _add_parameter_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "-p", "--parameter", dest="parameters", nargs=2, action="append", metavar=("KEY", "VALUE"), help=help_text
    )


def _step_parser(sub, name: str, help_text: str, func, example: str) -> argparse.ArgumentParser:
    s = _command(sub, name, help_text, example)
    s.add_argument("run", help="run folder holding the trained models (searched for metrics.json)")
    s.add_argument("--data", help="dataset folder (default: the run's data_dir from run.json)")
    s.add_argument("--split-csv", help="split manifest (default: <run>/split.csv)")
    s.add_argument("--out", help=f"output folder (default: a fresh runs/{name}-<time>; never overwritten)")
    s.add_argument("--seed", type=int, default=42, help="seed for sampling and fitting (default 42)")
    s.set_defaults(func=func)
    return s


def _command(sub, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    """A sub-command whose help ends with examples."""
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog="examples:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


POLICY_HELP = "override the resize policy the model records (stretch or pad); normally not needed"
FULL_INTEGER_HELP = (
    "int8 without the float stem (MobileNet/MobileNetV2 keep their preprocessing and first block in "
    "float by default, which keeps their accuracy): for accelerators that run integer ops only"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gc10",
        description="GC10-DET defect classification toolkit: data checks, training, ensembles, LiteRT export, "
        "Grad-CAM, and the notebook pipeline.",
        epilog="examples:\n  gc10 run                      # the demo pipeline on synthetic data (what `make run` does)\n"
        "  gc10 run --list-configs       # the configurations and what each is for\n"
        "  gc10 data summary data/gc10   # what a dataset folder holds, and its data-quality table\n"
        "Each command has its own --help with examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    with contextlib.suppress(PackageNotFoundError):  # a source tree that was never installed has no version
        p.add_argument("--version", action="version", version=f"gc10lib {version('gc10lib')}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("data", help="inspect, split, synthesize or download datasets")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    s = _command(
        dsub,
        "summary",
        "layout, class counts, sizes, boxes and data-quality table of a dataset folder",
        "gc10 data summary ../shared/data/gc10-sample\ngc10 data summary data/gc10 --json > summary.json",
    )
    s.add_argument("path", help="dataset folder: a Kaggle GC10 download, the original release, or one folder per class")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    s.set_defaults(func=_data_summary)
    s = _command(
        dsub,
        "split",
        "write a seeded, stratified, grouped split manifest (CSV plus a .json sidecar)",
        "gc10 data split data/gc10 --out split.csv --seed 42 --fractions 0.7 0.15 0.15",
    )
    s.add_argument("path", help="dataset folder")
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
    s.set_defaults(func=_data_split)
    s = _command(
        dsub,
        "synth",
        "write a synthetic GC10-like dataset in the Kaggle layout (for smoke tests and demos)",
        "gc10 data synth /tmp/synth --per-class 30 --seed 0",
    )
    s.add_argument("out", help="empty folder to write into")
    s.add_argument("--per-class", type=int, default=30, help="images per class (default 30)")
    s.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    s.set_defaults(func=_data_synth)
    s = _command(
        dsub,
        "download",
        "download GC10-DET from Kaggle (needs an API token and network)",
        "gc10 data download data/gc10\ngc10 data summary data/gc10",
    )
    s.add_argument("out", help="empty folder to unpack the download into")
    s.set_defaults(func=_data_download)

    t = _command(
        sub,
        "train",
        "train one backbone, as notebook 02 does",
        "gc10 train --backbone mobilenet --data synthetic -p epochs_head 3\n"
        "gc10 train --backbone mobilenet --data ../shared/data/neu-det --config neu --out runs/neu-mobilenet",
    )
    t.add_argument(
        "--backbone",
        required=True,
        help="a registry name: efficientnet_b5, resnet50_v2, inception_v3, mobilenet, mobilenet_v2, vgg19",
    )
    t.add_argument("--data", required=True, help="dataset folder, or 'synthetic'")
    t.add_argument("--split-csv", help="split manifest (default: a seeded 70/15/15 split in memory)")
    t.add_argument("--out", help="output folder (default: a fresh runs/train-<backbone>-<time>)")
    t.add_argument("--config", help="take training values from this YAML config (a path or a name in configs/)")
    _add_parameter_option(t, "a TrainConfig field (YAML-parsed), e.g. -p epochs_head 3 -p augment '[flip]'")
    t.set_defaults(func=_train)
    s = _step_parser(
        sub,
        "ensemble",
        "build, save and compare every ensemble method over a run's backbones",
        _ensemble,
        "gc10 ensemble runs/neu\ngc10 ensemble runs/neu --methods mean stack --probes\n"
        "gc10 ensemble runs/neu --materialize mean    # build a .keras from a method's recipe",
    )
    s.add_argument(
        "--methods",
        nargs="+",
        default=["mean", "weighted", "stack", "select"],
        help="ensemble methods to build (default: all four)",
    )
    s.add_argument("--probes", action="store_true", help="also use each backbone's probe as a member")
    s.add_argument(
        "--materialize",
        metavar="METHOD",
        choices=["mean", "weighted", "stack", "select"],
        help="build the .keras of a method the run kept as a recipe (only the method chosen on validation "
        "is saved as a model); fits and evaluates nothing",
    )
    s = _step_parser(
        sub,
        "quantize",
        "LiteRT variants of a run's models against Keras: size, accuracy, speed",
        _quantize,
        "gc10 quantize runs/neu\ngc10 quantize runs/neu --models mobilenet --variants int8",
    )
    s.add_argument(
        "--models",
        nargs="+",
        default=["best_backbone", "best_ensemble"],
        help="model names, or best_backbone / best_ensemble (chosen on validation)",
    )
    s.add_argument(
        "--variants",
        nargs="+",
        default=["float32", "float16", "dynamic", "int8"],
        help="LiteRT variants to export and score (default: all four)",
    )
    s.add_argument("--max-images", type=int, help="cap on test images (default: all)")
    s.add_argument("--full-integer", action="store_true", help=FULL_INTEGER_HELP)
    s = _step_parser(
        sub,
        "distill",
        "train one small student on a run's chosen ensemble, and its int8 LiteRT file",
        _distill,
        "gc10 distill runs/xsdd\n"
        "gc10 distill runs/xsdd -p student mobilenet -p temperature 4 -p unlabelled_dir data/unlabelled",
    )
    s.add_argument(
        "--teacher", default="best_ensemble", help="model name, or best_ensemble / best_backbone (chosen on validation)"
    )
    s.add_argument("--config", help="take distillation values from this YAML config (a path or a name in configs/)")
    _add_parameter_option(s, "a DistillConfig field (YAML-parsed), e.g. -p epochs_finetune 0 -p alpha 0.9")
    s.add_argument("--no-int8", action="store_true", help="train and evaluate the student only; no LiteRT table")
    s = _step_parser(
        sub,
        "explain",
        "Grad-CAM localization of a run's models against the boxes",
        _explain,
        "gc10 explain runs/neu --per-class 5\ngc10 explain runs/neu --models mobilenet ensemble_mean",
    )
    s.add_argument(
        "--models",
        nargs="+",
        default=["best_backbone", "best_ensemble"],
        help="model names, or best_backbone / best_ensemble (chosen on validation)",
    )
    s.add_argument("--per-class", type=int, default=5, help="test images per class (default 5)")

    e = _command(
        sub,
        "evaluate",
        "metrics of a .keras or .tflite model on a dataset or one split subset",
        "gc10 evaluate --model runs/neu/steps/02_finetune_mobilenet/model.keras --data ../shared/data/neu-det\n"
        "gc10 evaluate --model m.tflite --data data/gc10 --split-csv runs/x/split.csv --subset test --json",
    )
    e.add_argument("--model", required=True, help="a .keras or .tflite file written by gc10lib")
    e.add_argument("--data", required=True, help="dataset folder (any layout gc10 data reads)")
    e.add_argument("--split-csv", help="split manifest; with it only --subset is evaluated")
    e.add_argument("--subset", default="test", choices=["train", "val", "test"], help="subset of --split-csv")
    e.add_argument("--policy", choices=["stretch", "pad"], help=POLICY_HELP)
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    e.set_defaults(func=_evaluate)
    pr = _command(
        sub,
        "predict",
        "top-k classes for image files or folders",
        "gc10 predict --model model.keras images/ more.jpg --top-k 3 --out preds.csv",
    )
    pr.add_argument("--model", required=True, help="a .keras or .tflite file written by gc10lib")
    pr.add_argument("paths", nargs="+", help="image files and folders (searched recursively)")
    pr.add_argument("--out", help="CSV file to write (never overwritten); default: print CSV")
    pr.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    pr.add_argument("--policy", choices=["stretch", "pad"], help=POLICY_HELP)
    pr.set_defaults(func=_predict)
    x = _command(
        sub,
        "export",
        "export a .keras model to LiteRT (.tflite)",
        "gc10 export --model model.keras --format float16 --out model_f16.tflite\n"
        "gc10 export --model model.keras --format int8 --data data/gc10 --split-csv split.csv --out m_int8.tflite",
    )
    x.add_argument("--model", required=True, help="a .keras file written by gc10lib")
    x.add_argument(
        "--format",
        required=True,
        choices=["float32", "float16", "dynamic", "int8"],
        help="float32, float16 (half-size weights), dynamic (int8 weights) or int8 (int8 weights and activations)",
    )
    x.add_argument("--data", help="dataset for int8 calibration images")
    x.add_argument("--split-csv", help="split manifest: calibrate on its train subset")
    x.add_argument("--calibration", type=int, default=200, help="number of calibration images (default 200)")
    x.add_argument("--out", required=True, help="output .tflite file (never overwritten; its sidecar is <out>.json)")
    x.add_argument("--policy", choices=["stretch", "pad"], help=POLICY_HELP)
    x.add_argument("--full-integer", action="store_true", help=FULL_INTEGER_HELP)
    x.set_defaults(func=_export)

    r = _command(
        sub,
        "run",
        "run the notebook pipeline headless with papermill",
        "gc10 run                                        # configs/demo.yaml\n"
        "gc10 run --config neu -p data_dir ../shared/data/neu-det --name neu\n"
        "gc10 run --config demo -p backbones '[mobilenet, vgg19]' --dry-run\n"
        "gc10 run --resume --name neu                     # after a failure or Ctrl-C",
    )
    r.add_argument("--config", default="demo", help="YAML config, or a name in configs/ (default: demo)")
    _add_parameter_option(r, "override a config value (YAML-parsed), e.g. -p data_dir ../data -p epochs_head 3")
    r.add_argument("--name", help="run folder name under --runs-root (default: <config>-<time>)")
    r.add_argument("--resume", action="store_true", help="continue the run --name: skip finished steps")
    r.add_argument("--runs-root", default="runs", help="folder holding the run folders (default: runs)")
    r.add_argument("--dry-run", action="store_true", help="print the steps and their parameters; run nothing")
    r.add_argument("--list-configs", action="store_true", help="list the configurations in configs/ and exit")
    r.set_defaults(func=_run)
    c = _command(
        sub,
        "compare",
        "mean and std per model over finished runs (e.g. one per seed)",
        "for s in 42 43 44; do gc10 run --config xsdd -p seed $s --name xsdd-s$s; done\n"
        "gc10 compare runs/xsdd-s42 runs/xsdd-s43 runs/xsdd-s44 --out seeds.csv",
    )
    c.add_argument("runs", nargs="+", help="run folders holding summary.json")
    c.add_argument("--out", help="also write the table as CSV (never overwritten)")
    c.set_defaults(func=_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # other libraries: warnings only
    logging.getLogger("gc10lib").setLevel(logging.INFO)
    try:
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
