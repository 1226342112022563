"""The deployable model: the smallest file within the margin of the chosen float ensemble on
validation, or, where none is, the most accurate one, saying so."""

from __future__ import annotations

from gc10lib.deploy import MARGIN, Candidate, choose


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
