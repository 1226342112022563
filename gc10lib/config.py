"""The settings schema: typed dataclasses whose fields carry their own ranges, and one parser for
``-p KEY VALUE`` overrides.

:class:`PhaseConfig` holds what every trainer shares (the phases of :mod:`gc10lib.phases`: head,
fine-tune and map head, with their epochs, learning rates, patience and monitor).
:class:`TrainConfig` (one backbone, notebook ``02_finetune``) and :class:`DistillConfig` (the
student, notebook ``06_distill``) add their own fields and defaults. Each field's range or choices
are stated once, where the field is (:func:`setting`), and checked whenever a config is made, so
a bad value is one line naming the key::

    >>> TrainConfig(epochs_head=-3)
    Traceback (most recent call last):
    gc10lib.errors.InputError: epochs_head: must be >= 0, got -3

:func:`parse_override` is the one reader of ``-p`` values, used by ``gc10 run``, ``gc10 train``
and ``gc10 distill``. This module imports no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import yaml

from gc10lib.errors import InputError
from gc10lib.registry import REGISTRY

T = TypeVar("T", bound="Settings")

#: Backbone names a config may use: the registry's (gc10lib.registry, no TensorFlow)
BACKBONES = tuple(REGISTRY)
#: augmentation ops (gc10lib.inputs.augmenter) and resize policies (gc10lib.inputs.resize)
AUG_OPS = ("flip", "shift", "brightness", "contrast")
FINETUNE_OPTIMIZERS = ("sgd", "adam", "lamb")
MONITORS = ("val_loss", "val_macro_f1")
CLASS_WEIGHTS = ("balanced", "sqrt", "none")
POLICIES = ("stretch", "pad")
#: LiteRT variants of an export (gc10lib.export), smallest change first
VARIANTS = ("float32", "float16", "dynamic", "int8")


def setting(
    default: Any = MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: Sequence[Any] | None = None,
    nullable: bool = False,
    factory: Any = MISSING,
) -> Any:
    """A dataclass field whose value must lie in a range (``ge``/``gt``/``le``) or among ``choices``.

    ``None`` is always accepted where the default is ``None``; ``bool`` is never a number.
    """
    meta = {
        "ge": ge,
        "gt": gt,
        "le": le,
        "choices": tuple(choices) if choices is not None else None,
        "nullable": nullable,
    }
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_value(key: str, value: Any, meta: Mapping[str, Any], default: Any = None) -> None:
    """Raise :class:`InputError` naming ``key`` when ``value`` breaks its field's range or choices."""
    constrained = any(meta.get(k) is not None for k in ("ge", "gt", "le", "choices"))
    if value is None:
        if default is None or meta.get("nullable") or not constrained:
            return
        raise InputError(f"{key}: a value is required (got null)")
    choices = meta.get("choices")
    if choices is not None and not isinstance(value, (list, tuple)):
        if value not in choices:
            raise InputError(f"{key}: expected one of {', '.join(map(str, choices))}; got {value!r}")
        return
    bounds = {k: meta.get(k) for k in ("ge", "gt", "le")}
    if all(b is None for b in bounds.values()):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{key}: expected a number; got {value!r}")
    if bounds["ge"] is not None and value < bounds["ge"]:
        raise InputError(f"{key}: must be >= {bounds['ge']}, got {value}")
    if bounds["gt"] is not None and value <= bounds["gt"]:
        raise InputError(f"{key}: must be > {bounds['gt']}, got {value}")
    if bounds["le"] is not None and value > bounds["le"]:
        raise InputError(f"{key}: must be <= {bounds['le']}, got {value}")


class Settings:
    """Mixin for the config dataclasses: checked on creation, built from a flat parameter mapping."""

    #: names this config is given under another name in flat pipeline configs (``student_*``)
    ALIASES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            default = f.default if f.default is not MISSING else None
            check_value(f.name, getattr(self, f.name), f.metadata, default)
        self.check()

    def check(self) -> None:
        """Checks that involve more than one field (subclasses add theirs)."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field with its default value."""
        return {f.name: (f.default_factory() if f.default is MISSING else f.default) for f in fields(cls)}  # type: ignore[arg-type, misc]

    @classmethod
    def from_params(cls: type[T], params: Mapping[str, Any]) -> T:
        """The config from a flat mapping (a pipeline config, a notebook's parameters): the names it
        knows, under :attr:`ALIASES` where it has them; other names are ignored."""
        names = {f.name for f in fields(cls)} - set(cls.ALIASES)  # type: ignore[arg-type]
        values = {k: v for k, v in params.items() if k in names}
        values.update({k: params[a] for k, a in cls.ALIASES.items() if a in params})
        try:
            return cls(**values)
        except InputError as exc:  # name the key as the caller spelled it
            key = str(exc).split(":", 1)[0]
            if key in cls.ALIASES and cls.ALIASES[key] in params:
                raise InputError(f"{cls.ALIASES[key]}:{str(exc).split(':', 1)[1]}") from None
            raise

    @classmethod
    def parameter_names(cls) -> dict[str, str]:
        """Flat parameter name -> field name (the aliases in place of their fields)."""
        names = {f.name: f.name for f in fields(cls)}  # type: ignore[arg-type]
        for k, a in cls.ALIASES.items():
            names.pop(k, None)
            names[a] = k
        return names


@dataclass
class PhaseConfig(Settings):
    """The phases every trainer runs (:mod:`gc10lib.phases`): a head, fine-tuning, a map head."""

    img_size: int | None = setting(None, ge=32)  # None: the native (or the teacher's) size
    weights: str | None = "imagenet"  # "imagenet", "auto", None (random init) or a weights file
    weights_dir: str | None = None  # offline ImageNet weights (default $GC10_WEIGHTS_DIR)
    epochs_head: int = setting(10, ge=0)
    epochs_finetune: int = setting(5, ge=0)
    finetune_fraction: float = setting(0.3, ge=0, le=1)  # top share of backbone layers unfrozen
    finetune_optimizer: str = setting("adam", choices=FINETUNE_OPTIMIZERS)
    batch_size: int = setting(32, ge=1)
    lr_head: float = setting(1e-3, gt=0)
    lr_finetune: float = setting(3e-5, gt=0)  # peak of the warm-up + cosine schedule
    warmup_fraction: float = setting(0.1, ge=0, le=1)  # share of fine-tune steps warming up from 0
    clipnorm: float | None = setting(1.0, gt=0, nullable=True)  # global gradient-norm clip in fine-tuning (None: off)
    class_weight: str = setting("sqrt", choices=CLASS_WEIGHTS)
    dropout: float = setting(0.2, ge=0, le=0.95)
    augment: bool | list[str] = True  # or a list of ops from gc10lib.inputs.AUG_OPS, e.g. ["flip"]
    aug_views: int = setting(2, ge=1)  # 1 plain + (aug_views - 1) augmented views per training image
    patience: int = setting(4, ge=1)
    monitor: str = setting("val_loss", choices=MONITORS)
    map_head: bool = False  # phase "maps": a new head on cached middle-layer maps (gc10lib.maphead)
    map_fraction: float = setting(0.3, gt=0, le=0.95)  # share of the backbone's depth above the cut
    map_width: int = setting(128, ge=1)  # channels of the map head's two convolutions
    map_epochs: int = setting(25, ge=1)
    map_lr: float = setting(1e-3, gt=0)  # peak of the map head's warm-up + cosine schedule (Adam)
    seed: int = setting(42, ge=0, le=2**32 - 1)
    verbose: int | str = "auto"

    def check(self) -> None:
        if isinstance(self.augment, (list, tuple, str)):
            ops = [self.augment] if isinstance(self.augment, str) else list(self.augment)
            bad = [op for op in ops if op not in AUG_OPS]
            if bad:
                raise InputError(f"augment: unknown op(s) {bad}; expected true, false or a list of {list(AUG_OPS)}")
        elif not isinstance(self.augment, bool):
            raise InputError(f"augment: expected true, false or a list of ops; got {self.augment!r}")


@dataclass
class TrainConfig(PhaseConfig):
    """Everything that shapes one backbone's training run (notebook ``02_finetune``, ``gc10 train``).

    >>> cfg = TrainConfig(backbone="mobilenet", img_size=224, map_head=True, epochs_finetune=0)
    >>> TrainConfig.from_params(yaml.safe_load(open("my.yaml")))   # the names it knows; ranges checked
    """

    backbone: str = setting("mobilenet", choices=BACKBONES)
    policy: str = setting("stretch", choices=POLICIES)  # resize policy, see gc10lib.inputs
    tiles: int = setting(1, ge=1)  # > 1: a tiles x tiles grid, the backbone at img_size/tiles
    tile_pool: str = setting("max", choices=("max", "mean", "meanmax"))
    probe: bool = True  # a logistic-regression probe on the cached features (a floor, and a candidate)
    head_mode: str = setting("features", choices=("features", "fit"))  # cached features, or frozen backbone
    map_flips: int = setting(4, ge=1, le=4)  # flips cached per image: 1 plain, 2 + left-right, 4 + up-down
    tensorboard: bool = False  # TensorBoard logs in <out_dir>/tensorboard/<phase>
    mixed_precision: bool | str = False  # True -> "mixed_float16"; or a policy name
    strategy: str | None = setting(None, choices=(None, "mirrored", "multiworker"))
    extra: dict = setting(factory=dict)

    def check(self) -> None:
        super().check()
        if self.map_head and int(self.tiles) > 1:
            raise InputError("map_head: cuts a whole-image backbone; it does not combine with tiles > 1")
        if self.strategy == "multiworker" and (self.head_mode != "features" or self.map_head):
            raise InputError(
                "strategy: 'multiworker' trains the head on cached features in one process: "
                "use head_mode 'features' and map_head false"
            )


@dataclass
class DistillConfig(PhaseConfig):
    """Everything that shapes one student's training (notebook ``06_distill``, ``gc10 distill``).

    >>> DistillConfig(student="mobilenet_v2", temperature=4.0, epochs_finetune=0)
    >>> DistillConfig.from_params({"student_epochs_finetune": 2})   # a flat pipeline config's spelling
    """

    ALIASES: ClassVar[dict[str, str]] = {
        "epochs_finetune": "student_epochs_finetune",
        "finetune_fraction": "student_finetune_fraction",
        "lr_finetune": "student_lr_finetune",
        "map_width": "student_map_width",
        "map_epochs": "student_map_epochs",
    }

    student: str = setting("mobilenet_v2", choices=BACKBONES)  # MobileNetV2's weights quantize well
    temperature: float = setting(2.0, gt=0)
    alpha: float = setting(0.7, ge=0, le=1)  # share of the soft-target term for labelled images
    epochs_head: int = setting(30, ge=0)
    epochs_finetune: int = setting(8, ge=0)
    finetune_fraction: float = setting(0.5, ge=0, le=1)
    lr_finetune: float = setting(1e-4, gt=0)
    patience: int = setting(5, ge=1)
    unlabelled_dir: str | None = None  # a folder of extra images without labels, taught by the teacher
    warm_start: bool = True  # the student's map head starts from the run's own one of its backbone (02)
    warm_lr: float = setting(3e-4, gt=0)  # the map head's peak learning rate when it starts trained


#: DistillConfig fields that pipeline configs and notebook 06 spell with a ``student_`` prefix.
STUDENT_OWN = tuple(DistillConfig.ALIASES)

#: A run config's per-step sections: the notebook each one feeds (by number), and the prefix its
#: parameters carry in a flat config. A key in a section applies to that step only, over the
#: top-level value: ``distill: {epochs_finetune: 0}`` is the flat ``student_epochs_finetune: 0``,
#: ``train: {epochs_finetune: 3}`` gives the backbones 3 and leaves the student its own.
SECTIONS: dict[str, tuple[str, str]] = {
    "train": ("02", ""),
    "ensemble": ("03", ""),
    "quantize": ("04", "quantize_"),
    "explain": ("05", "explain_"),
    "distill": ("06", "student_"),
}


def section_of(notebook: str) -> str | None:
    """The section that feeds ``notebook`` (``06_distill`` -> ``distill``), if any."""
    return next((name for name, (number, _) in SECTIONS.items() if notebook.startswith(f"{number}_")), None)


def section_mapping(cfg: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    """The ``section:`` mapping of a run config (empty when it has none)."""
    values = cfg.get(section) or {}
    if not isinstance(values, Mapping):
        raise InputError(f"{section}: expected a mapping of settings for that step; got {values!r}")
    return values


def section_values(cfg: Mapping[str, Any], section: str, declared: Collection[str]) -> dict[str, Any]:
    """A section's values under the names its notebook declares (``prefix + key``, else ``key``);
    a key the notebook does not declare is refused, naming it as ``section.key``."""
    prefix = SECTIONS[section][1]
    out = {}
    for key, value in section_mapping(cfg, section).items():
        name = next((n for n in (f"{prefix}{key}", str(key)) if n in declared), None)
        if name is None:
            known = sorted({d.removeprefix(prefix) for d in declared})
            raise InputError(f"{section}.{key}: not a setting of that step; known: {', '.join(known)}")
        out[name] = value
    return out


def fold_sections(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with dotted keys (``-p distill.epochs_finetune 0``) moved into their sections."""
    out = {k: v for k, v in cfg.items() if not _dotted(k)}
    for key, value in cfg.items():
        if _dotted(key):
            section, name = key.split(".", 1)
            out[section] = {**(out.get(section) or {}), name: value}
    return out


def _dotted(key: Any) -> bool:
    return isinstance(key, str) and "." in key and key.split(".", 1)[0] in SECTIONS


# --------------------------------------------------------------------------- -p overrides


def parse_value(text: str, key: str = "value") -> Any:
    """Parse a ``-p`` value as YAML (numbers, bools, lists, ``null``/``None``); unparsable text is an error."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise InputError(f"-p {key} {text!r}: not a valid value ({problem}); lists look like '[a, b]'") from None
    return None if value in ("None", "none") else value


def typed_value(key: str, raw: str, default: Any) -> Any:
    """``raw`` parsed and checked against the type of ``default``, so that ``-p backbones mobilenet``
    (a string where a list is expected) fails at once instead of planning one step per letter."""
    value = parse_value(raw, key)
    if value is None or default is None:
        return value
    if isinstance(default, str):
        return value if isinstance(value, str) else raw  # -p data_dir 2024 is a folder name, not a number
    if isinstance(default, bool):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise InputError(f"-p {key} {raw!r}: expected true or false")
        return value  # some switches also take a list or a name (augment: [flip]; mixed_precision: a policy)
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"-p {key} {raw!r}: expected a number")
        return value
    if isinstance(default, list) and not isinstance(value, list):
        raise InputError(f"-p {key} {raw!r}: expected a list, e.g. -p {key} '[{raw}]'")
    if isinstance(default, dict) and not isinstance(value, dict):
        raise InputError(f"-p {key} {raw!r}: expected a mapping, e.g. -p {key} '{{a: 1}}'")
    return value


def apply_overrides(
    params: Mapping[str, Any],
    overrides: Sequence[tuple[str, Any]],
    defaults: Mapping[str, Any],
    what: str = "parameter",
) -> dict[str, Any]:
    """``params`` with each ``-p KEY VALUE`` applied; ``defaults`` names every key allowed (with the
    value that gives a raw string its type). An unknown key is refused, listing the valid ones."""
    out = dict(params)
    for key, raw in overrides:
        if key not in defaults:
            raise InputError(f"unknown {what} {key!r}; valid names: {', '.join(sorted(defaults))}")
        out[key] = typed_value(key, raw, defaults[key]) if isinstance(raw, str) else raw
    return out


# --------------------------------------------------------------------------- a whole run's config


def check_run_config(cfg: Mapping[str, Any], steps: Sequence[str] = ()) -> None:
    """Check a resolved pipeline config before any folder exists: the runner's keys, every
    backbone's training config and (when ``06_distill`` is among ``steps``) the student's."""
    backbones = cfg.get("backbones") or []
    if not isinstance(backbones, list):
        raise InputError(f"backbones: expected a list of names, e.g. [mobilenet]; got {backbones!r}")
    unknown = [b for b in backbones if _backbone_key(b) not in BACKBONES]
    if unknown:
        raise InputError(f"backbones: unknown {unknown}; known: {', '.join(BACKBONES)}")
    fractions = cfg.get("fractions", [0.7, 0.15, 0.15])
    if (
        not isinstance(fractions, list)
        or len(fractions) != 3
        or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions)
    ):
        raise InputError(f"fractions: expected three numbers [train, val, test]; got {fractions!r}")
    if min(fractions) < 0 or fractions[0] <= 0 or fractions[1] <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(f"fractions: train and val must be > 0, none < 0, and they must sum to 1; got {fractions}")
    check_value("synthetic_per_class", cfg.get("synthetic_per_class", 30), {"ge": 3})
    sizes = cfg.get("img_sizes") or {}
    if not isinstance(sizes, dict):
        raise InputError(f"img_sizes: expected a mapping of backbone to size; got {sizes!r}")
    train = _section_fields(cfg, "train", TrainConfig)
    for bb in backbones or [TrainConfig.backbone]:
        size = sizes.get(bb, train.get("img_size", cfg.get("img_size")))
        _build(TrainConfig, {**cfg, **train, "backbone": _backbone_key(bb), "img_size": size}, "train", train)
    if any(str(s).startswith("06_") for s in steps):
        student = _section_fields(cfg, "distill", DistillConfig)
        flat = {**cfg, **{DistillConfig.ALIASES.get(k, k): v for k, v in student.items()}}
        _build(DistillConfig, flat, "distill", student)


def _section_fields(cfg: Mapping[str, Any], section: str, kind: type[Settings]) -> dict[str, Any]:
    """A section's values under the config class's field names (``student_map_epochs`` or
    ``map_epochs`` in ``distill:`` are both the field ``map_epochs``)."""
    prefix = SECTIONS[section][1]
    names = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    values = section_mapping(cfg, section)
    return {(k.removeprefix(prefix) if k.removeprefix(prefix) in names else k): v for k, v in values.items()}


def _build(kind: type[Settings], params: Mapping[str, Any], section: str, given: Mapping[str, Any]) -> None:
    """``kind.from_params(params)``; an error about a key the section set names it ``section.key``."""
    try:
        kind.from_params(params)
    except InputError as exc:
        key, _, rest = str(exc).partition(":")
        field = next((f for f in given if key in (f, kind.ALIASES.get(f))), None)
        if field is None:
            raise
        raise InputError(f"{section}.{field}:{rest}") from None


def _backbone_key(name: Any) -> str:
    """A backbone name as the registry spells it (aliases such as ``MobileNetV2`` accepted)."""
    key = str(name).strip().lower().replace("-", "_")
    squashed = key.replace("_", "")
    return next((b for b in BACKBONES if b.replace("_", "") == squashed), key)
