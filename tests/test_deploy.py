"""The deployable model: the smallest file within the margin of the chosen float ensemble on
validation, or, where none is, the most accurate one, saying so."""

from __future__ import annotations

from pathlib import Path

from gc10lib.records import ModelRecord
from gc10lib.steps import deploy
from gc10lib.steps.deploy import MARGIN, Candidate, choose


def _c(name, size, acc):
    return Candidate(name, f"{name}.tflite", "src", "int8", size, val_accuracy=acc, test_accuracy=1.0 - acc)


def test_the_smallest_file_within_the_margin_is_chosen_and_test_is_never_read():
    cands = [_c("ensemble int8", 9.0, 0.99), _c("student int8", 0.8, 0.985), _c("mobilenet int8", 3.4, 0.995)]
    best, why = choose(cands, ref_accuracy=0.99)
    assert best.name == "student int8" and "smallest" in why and MARGIN == 0.01
    cands[1].test_accuracy = 0.0  # a test score changes nothing
    assert choose(cands, 0.99)[0].name == "student int8"


def test_a_file_just_outside_the_margin_does_not_qualify_and_the_fallback_says_so():
    cands = [_c("student int8", 0.8, 0.97), _c("mobilenet int8", 3.4, 0.975)]
    best, why = choose(cands, ref_accuracy=0.99)
    assert best.name == "mobilenet int8" and why.startswith("fallback:")
    assert choose(cands, ref_accuracy=0.98)[0].name == "student int8"  # 0.97 is within 1 point of 0.98


def _record(name, kind, backbone, val_acc, path="model.keras"):
    return ModelRecord(name, kind, Path(name) / path, Path(name), {"backbone": backbone, "val": {"accuracy": val_acc}})


class _Run:
    """Just what the checks read of a run folder: its models, new objects on every call, as
    :meth:`RunFolder.models` reads them anew (the checks must match records by name)."""

    def __init__(self, records):
        self.records = records

    def models(self):
        return [ModelRecord(r.name, r.kind, r.path, r.dir, r.metrics) for r in self.records]


def test_int8_loss_is_the_larger_of_the_accuracy_drop_and_the_changed_answers():
    src = _record("mobilenet", "backbone", "mobilenet", 0.95)
    c = _c("mobilenet int8", 3.4, 0.94)
    c.val_agreement = 0.97
    assert abs(deploy.int8_loss(c, src) - 0.03) < 1e-12
    c.val_agreement = 1.0
    assert abs(deploy.int8_loss(c, src) - 0.01) < 1e-12


def test_a_student_below_the_backbone_of_its_size_is_left_out_and_that_backbones_int8_stands_in(tmp_path):
    student = _record("student_mobilenet", "student", "mobilenet", 0.93)
    peer = _record("mobilenet", "backbone", "mobilenet", 0.95)
    found = [
        (_c("student_mobilenet", 1.8, 0.99), student),
        (_c("student_mobilenet int8", 0.8, 0.99), student),
        (_c("mobilenet int8", 3.4, 0.985), peer),
    ]
    scored = [c for c, _ in found]
    notes = deploy.student_check(_Run([student, peer]), found, scored, tmp_path)
    assert "below mobilenet" in notes[0] and "int8 stands in" in notes[0]
    assert [c.left_out is not None for c in scored] == [True, True, False]
    assert choose(scored, ref_accuracy=0.99)[0].name == "mobilenet int8"  # though the student files are smaller
    student.metrics["val"]["accuracy"] = 0.95  # at the backbone's level: the student stays in
    for c in scored:
        c.left_out = None
    assert "at or above" in deploy.student_check(_Run([student, peer]), found, scored, tmp_path)[0]
    assert choose(scored, ref_accuracy=0.99)[0].name == "student_mobilenet int8"


def test_an_int8_file_that_loses_on_validation_is_named_and_a_recipe_gets_no_float16(tmp_path):
    recipe = _record("ensemble_mean", "ensemble", None, 0.99, path="recipe.json")
    held = _c("ensemble_mean int8", 9.0, 0.96)
    held.val_agreement = 0.97
    found = [(held, recipe)]
    scored = [held]
    notes = deploy.offer_float16(_Run([recipe]), found, scored, tmp_path, MARGIN)
    assert "loses 3.0%" in notes[0] and "no float16" in notes[0] and len(scored) == 1
    held.val_accuracy, held.val_agreement = 0.985, 0.995  # within the margin: nothing to say
    assert deploy.offer_float16(_Run([recipe]), found, scored, tmp_path, MARGIN) == []


def test_float16_is_offered_only_where_the_rule_could_choose_it(tmp_path, monkeypatch):
    """A losing int8 gets a float16 file unless a qualifying file is already smaller than that float16
    would be (1.5x the int8 at least), or its model is left out; the conversions skipped are named."""
    made = []

    def fake_export(src, out, variant, **kw):
        made.append(Path(out).name)
        Path(out).write_bytes(b"x")
        return Path(out)

    monkeypatch.setattr(deploy, "export_litert", fake_export)
    monkeypatch.setattr(deploy, "score", lambda run, offers: [c for c, _ in offers])
    mobilenet = _record("mobilenet", "backbone", "mobilenet", 0.99)
    student = _record("student_mobilenet", "student", "mobilenet", 0.975)
    losing = _c("mobilenet int8", 3.4, 0.95)
    small = _c("student_mobilenet int8", 2.6, 0.985)  # qualifies, and 2.6 < 1.5 * 3.4
    found = [(losing, mobilenet), (small, student)]
    notes = deploy.offer_float16(_Run([mobilenet, student]), list(found), [losing, small], tmp_path, MARGIN, 0.99)
    assert made == [] and "no float16 file is offered: student_mobilenet int8 (2.60 MiB) qualifies" in notes[0]
    small.val_accuracy = 0.97  # no longer qualifies: the float16 of mobilenet could win
    notes = deploy.offer_float16(_Run([mobilenet, student]), list(found), [losing, small], tmp_path, MARGIN, 0.99)
    assert made == ["mobilenet_float16.tflite"] and "is offered beside it" in notes[0]
    small.val_accuracy, small.val_agreement, small.left_out = 0.90, 0.90, "the float student is below mobilenet"
    notes = deploy.offer_float16(_Run([student]), [(small, student)], [small], tmp_path, MARGIN, 0.99)
    assert made == ["mobilenet_float16.tflite"] and "its model is left out" in notes[0]


def test_no_float16_for_a_model_clearly_below_what_would_win(tmp_path, monkeypatch):
    def fake_export(src, out, variant, **kw):
        Path(out).write_bytes(b"x")
        return Path(out)

    monkeypatch.setattr(deploy, "export_litert", fake_export)
    monkeypatch.setattr(deploy, "score", lambda run, offers: [])
    weak = _record("vgg19", "backbone", "vgg19", 0.30)
    strong = _record("student_mobilenet", "student", "mobilenet", 0.50)
    w8, s8 = _c("vgg19 int8", 19.0, 0.10), _c("student_mobilenet int8", 2.6, 0.50)
    s8.val_agreement = 0.9
    # nothing within the margin of the reference (1.0): the most accurate file (0.50) wins the fallback
    notes = deploy.offer_float16(_Run([weak, strong]), [(w8, weak), (s8, strong)], [w8, s8], tmp_path, MARGIN, 1.0)
    assert "below the most accurate file (0.5000)" in notes[0] and "offered beside it" in notes[1]
    # a file qualifies (reference 0.51): vgg19's float model cannot come within reach of it
    notes = deploy.offer_float16(_Run([weak, strong]), [(w8, weak), (s8, strong)], [w8, s8], tmp_path, MARGIN, 0.51)
    assert "not within reach of the reference (0.5100)" in notes[0]


def test_the_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert deploy.main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
