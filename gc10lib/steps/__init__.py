"""The steps of a run: thin orchestration and file output over gc10lib's building blocks.

Each module is one step, called by its notebook, its ``gc10`` verb and :mod:`gc10lib.api`:

==========  ==================  =====================================================
module      notebook / verb     builds on
==========  ==================  =====================================================
train       02 / gc10 train     :mod:`gc10lib.phases` (the phase engine), features, probe, maphead
ensemble    03 / gc10 ensemble  :mod:`gc10lib.ensembles`
quantize    04 / gc10 quantize  :mod:`gc10lib.quantization`
explain     05 / gc10 explain   :mod:`gc10lib.explanation`
distill     06 / gc10 distill   :mod:`gc10lib.distillation` (the same phase engine)
deploy      after the others    :mod:`gc10lib.export`, :mod:`gc10lib.records`
==========  ==================  =====================================================

Data flows one way: a step reads the run folder and the blocks, never another step.
"""

import importlib
from types import ModuleType

__all__ = ["deploy", "distill", "ensemble", "explain", "quantize", "train"]


def __getattr__(name: str) -> ModuleType:
    """``steps.ensemble`` and the like, imported on first use (so ``python -m gc10lib.steps.deploy``
    runs a module the package has not imported already)."""
    if name in __all__:
        return importlib.import_module(f"gc10lib.steps.{name}")
    raise AttributeError(f"module 'gc10lib.steps' has no attribute {name!r}")
