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
