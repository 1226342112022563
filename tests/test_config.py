"""The settings schema: every range is checked when a config is made, one line names the key, and a
bad run config is refused before any run folder exists."""

from __future__ import annotations

import pytest

from gc10lib import cli, config
from gc10lib.backbones import REGISTRY
from gc10lib.config import DistillConfig, TrainConfig
from gc10lib.errors import InputError


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs_head": -3}, "epochs_head: must be >= 0, got -3"),
        ({"img_size": 0}, "img_size: must be >= 32, got 0"),
        ({"lr_head": -1}, "lr_head: must be > 0, got -1"),
        ({"batch_size": 0}, "batch_size: must be >= 1, got 0"),
        ({"finetune_fraction": 1.5}, "finetune_fraction: must be <= 1, got 1.5"),
        ({"seed": -1}, "seed: must be >= 0, got -1"),
        ({"backbone": "mobilenet_v4"}, "backbone: expected one of"),
        ({"monitor": "val_acc"}, "monitor: expected one of val_loss, val_macro_f1; got 'val_acc'"),
        ({"epochs_head": "three"}, "epochs_head: expected a number; got 'three'"),
        ({"epochs_head": True}, "epochs_head: expected a number; got True"),
        ({"lr_head": float("nan")}, "lr_head: expected a number"),
        ({"augment": ["flop"]}, "augment: unknown op(s) ['flop']"),
        ({"map_head": True, "tiles": 2}, "map_head: cuts a whole-image backbone"),
        ({"batch_size": None}, "batch_size: a value is required"),
    ],
)
def test_a_bad_training_value_is_one_line_naming_the_key(values, message):
    with pytest.raises(InputError) as err:
        TrainConfig(**values)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_good_values_pass_and_optional_ones_take_null():
    cfg = TrainConfig(img_size=None, clipnorm=None, weights=None, strategy=None, augment=["flip"], seed=0)
    assert cfg.clipnorm is None and cfg.augment == ["flip"]
    assert DistillConfig(alpha=1.0, temperature=0.5).alpha == 1.0


def test_the_schema_knows_every_registered_backbone():
    assert set(config.BACKBONES) == set(REGISTRY)


def test_the_student_shares_the_phase_settings_with_its_own_defaults():
    """One schema: the student's config is a PhaseConfig like a backbone's, with its own defaults and
    its ``student_`` names in flat pipeline configs; an error names the key as the config spells it."""
    assert issubclass(DistillConfig, config.PhaseConfig) and issubclass(TrainConfig, config.PhaseConfig)
    assert (DistillConfig().epochs_head, TrainConfig().epochs_head) == (30, 10)
    cfg = DistillConfig.from_params({"epochs_finetune": 3, "student_epochs_finetune": 0, "temperature": 4.0})
    assert (cfg.epochs_finetune, cfg.temperature) == (0, 4.0)
    with pytest.raises(InputError, match=r"^student_map_epochs: must be >= 1, got 0$"):
        DistillConfig.from_params({"student_map_epochs": 0})
    assert DistillConfig.parameter_names()["student_map_width"] == "map_width"
    assert "map_width" not in DistillConfig.parameter_names()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["-p", "epochs_head", "-3"], "epochs_head: must be >= 0, got -3"),
        (["-p", "img_size", "0"], "img_size: must be >= 32, got 0"),
        (["-p", "lr_head", "-1"], "lr_head: must be > 0, got -1"),
        (["-p", "backbones", "[mobilenet_v4]"], "backbones: unknown ['mobilenet_v4']"),
        (["-p", "seed", "-1"], "seed: must be >= 0, got -1"),
        (["-p", "fractions", "[a, b, c]"], "fractions: expected three numbers"),
        (["-p", "fractions", "[0.5, 0.5, 0.5]"], "fractions: train and val must be > 0"),
        (["-p", "student_epochs_finetune", "-2"], "student_epochs_finetune: must be >= 0, got -2"),
        (["-p", "img_sizes", "{mobilenet: 8}"], "img_size: must be >= 32, got 8"),
        (["-p", "distill.epochs_finetune", "-1"], "distill.epochs_finetune: must be >= 0, got -1"),
        (["-p", "train.lr_head", "0"], "train.lr_head: must be > 0, got 0"),
        (["-p", "distill.bogus", "1"], "unknown parameter 'distill.bogus'"),
    ],
)
@pytest.mark.parametrize("dry", [True, False])
def test_a_bad_run_config_is_refused_before_any_folder_exists(override, message, dry, tmp_path, capsys):
    root = tmp_path / "runs"
    args = ["run", "--config", "demo", "--runs-root", str(root), *override] + (["--dry-run"] if dry else [])
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not root.exists()


def test_train_and_distill_verbs_refuse_bad_values_before_any_folder(smoke_data, tmp_path, capsys):
    """``gc10 train`` and ``gc10 distill`` read ``-p`` with the same parser and the same schema."""
    root, split = smoke_data
    out = tmp_path / "out"
    base = ["train", "--data", str(root), "--split-csv", str(split), "--out", str(out), "--backbone", "mobilenet"]
    assert cli.main([*base, "-p", "epochs_head", "-3", "-p", "epochs_finetune", "-1"]) == 2
    assert "epochs_head: must be >= 0, got -3" in capsys.readouterr().err
    assert cli.main([*base, "-p", "epochs_head", "three"]) == 2
    assert "-p epochs_head 'three': expected a number" in capsys.readouterr().err
    assert cli.main([*base, "-p", "epocs_head", "1"]) == 2
    assert "unknown training parameter 'epocs_head'" in capsys.readouterr().err
    assert not out.exists()
    run = tmp_path / "run"
    run.mkdir()
    distill = ["distill", "--model", str(run), "--data", str(root), "--split-csv", str(split), "--out", str(out)]
    assert cli.main([*distill, "-p", "epochs_finetune", "-1"]) == 2  # a bare name is the student's own
    assert "student_epochs_finetune: must be >= 0, got -1" in capsys.readouterr().err
    assert cli.main([*distill, "-p", "temperature", "0"]) == 2
    assert "temperature: must be > 0, got 0" in capsys.readouterr().err
    assert not out.exists()


def _steps(config_file, *overrides):
    from gc10lib import pipeline

    return {s.id: s.params for s in pipeline.dry_run(str(config_file), list(overrides), "runs")}


def test_a_steps_section_gives_the_same_parameters_as_the_flat_student_keys(tmp_path):
    """``configs/elpv.yaml`` sets the student in ``distill:``; written flat, it plans the same steps."""
    import yaml

    from gc10lib import resources

    nested = yaml.safe_load((resources.configs_dir() / "elpv.yaml").read_text())
    flat = {k: v for k, v in nested.items() if k != "distill"}
    flat.update({(k if k == "student" else f"student_{k}"): v for k, v in nested["distill"].items()})
    (tmp_path / "nested.yaml").write_text(yaml.safe_dump({**nested, "data_dir": "d"}))
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump({**flat, "data_dir": "d"}))
    planned = _steps(tmp_path / "nested.yaml")
    assert planned == _steps(tmp_path / "flat.yaml")
    assert planned["06_distill"]["student_map_epochs"] == 100 and planned["06_distill"]["student"] == "mobilenet"


def test_a_section_applies_to_its_step_only_and_a_flat_override_is_not_outvoted(tmp_path):
    import yaml

    cfg = {"data_dir": "d", "backbones": ["mobilenet"], "epochs_head": 7, "train": {"epochs_head": 3}}
    cfg["distill"] = {"epochs_finetune": 0, "map_epochs": 40}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    planned = _steps(tmp_path / "c.yaml")
    assert planned["02_finetune_mobilenet"]["epochs_head"] == 3 and planned["06_distill"]["epochs_head"] == 7
    assert planned["06_distill"]["student_epochs_finetune"] == 0
    again = _steps(tmp_path / "c.yaml", ("student_epochs_finetune", "2"), ("distill.map_epochs", "50"))
    assert again["06_distill"]["student_epochs_finetune"] == 2  # the old spelling still reaches the student
    assert again["06_distill"]["student_map_epochs"] == 50


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"distill": {"epocs_head": 1}}, "distill.epocs_head: not a setting of that step"),
        ({"distill": [1, 2]}, "distill: expected a mapping"),
        ({"train": {"map_width": 0}}, "train.map_width: must be >= 1, got 0"),
        (
            {"quantize": {"variants": ["int8"]}, "notebooks": ["01_eda", "02_finetune"]},
            "quantize: this config runs no 04_",
        ),
    ],
)
def test_a_bad_section_is_one_line_naming_it(section, message, tmp_path, capsys):
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data_dir": "d", "backbones": ["mobilenet"], **section}))
    root = tmp_path / "runs"
    assert cli.main(["run", "--config", str(tmp_path / "c.yaml"), "--runs-root", str(root), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not root.exists()
