"""LiteRT (``.tflite``) export in four variants.

Post-training quantization is the path: ``tensorflow-model-optimization`` (quantization-aware
training) does not support Keras 3. The converter path is Keras 3 ``model.export`` to a SavedModel,
then ``tf.lite.TFLiteConverter.from_saved_model``; inference uses the ``ai-edge-litert``
interpreter (:class:`gc10lib.inference.LiteRTPredictor`), not the deprecated ``tf.lite.Interpreter``.

Variants: ``float32``; ``float16`` (weights stored as float16); ``dynamic`` (int8 weights, float
activations); ``int8`` (full-integer, calibrated on ~200 train and val views made with the model's own
resize policy). Preprocessing stays inside every exported model. The ``int8`` model takes **uint8
RGB pixels 0..255** (its input scale is 1 and zero point 0, so raw pixels go in unchanged — the
LiteRT predictor quantizes with the file's own scale and zero point either way).

Outputs: float32 probabilities, except that an ``int8`` single classifier returns its float32
**logits** (the softmax is left out of the file). An int8 softmax emits multiples of 1/256, so
every probability under about 0.4% reads as 0 and log-loss and fine alarm thresholds lose their
meaning; the int8 logits are the very values that softmax would have read, so nothing is lost by
stopping before it (:func:`logits_classifier`). An ensemble averages probabilities, so its int8
file keeps its softmax.

**The int8 stem stays float.** MobileNet lost 23 points of X-SDD test accuracy as a full-integer
file (0.758 against 0.988). The LiteRT quantization debugger put the error in its first
depthwise-separable block: 2.7 and 2.8 quantization steps RMS at the outputs of ``conv_dw_1`` and
``conv_pw_1`` (on an ELPV student 2.7 and 2.7, against 0.3 at the first convolution). Their BatchNorm-folded weights
amplify the rounding of their int8 inputs, and every later layer inherits the error. Keeping the
in-model preprocessing, the first convolution and the first depthwise-separable block in float
(each backbone's :attr:`~gc10lib.backbones.BackboneSpec.int8_float`; MobileNet and MobileNetV2)
restored 0.988 at the same size (those layers hold under 0.1% of the weights) and latency; the
rest of the network stays int8 (:func:`int8_blob`). Such a file takes float32 pixels 0..255.
``float_stem=False`` (``gc10 export --full-integer``) writes the full-integer file, uint8 in, that
integer-only accelerators need.

Each ``.tflite`` gets a sidecar ``<name>.tflite.json`` with the class names, input size, resize
policy, variant and ``output`` (``probabilities`` or ``logits``);
:class:`gc10lib.inference.LiteRTPredictor` applies the softmax to a ``logits`` file itself.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python.schema_py_generated import TensorType
from tensorflow.lite.tools import flatbuffer_utils

from gc10lib import data
from gc10lib.backbones import REGISTRY, load_model
from gc10lib.config import VARIANTS
from gc10lib.errors import InputError, OutputExistsError
from gc10lib.inference import sidecar
from gc10lib.inputs import ImageCache
from gc10lib.layers import ClassNames, ModelInfo, model_info
from gc10lib.maphead import is_map_head


def fold_head_normalization(model, activation: str | None = "softmax"):
    """The classifier with its head's feature standardization folded into the final Dense layer.

    ``Dense(W, b)((x - mean) / std)`` equals ``Dense(W / std, b - (mean / std) @ W)(x)``, so the
    folded model gives the same probabilities (to float rounding). For int8 it matters: the
    standardized features span a wide range (a few low-variance features reach 25-30 standard
    deviations), and one per-tensor int8 scale over that range rounds away most of the signal;
    folded, the Dense reads the pooled features themselves, 0..6 after ReLU6. Measured on X-SDD
    (161 test images): int8 MobileNetV2 0.926 -> 0.932; int8 distilled students +0.6 to +1.2 points.
    A model without a ``head`` sub-model with ``feature_norm`` (an ensemble) is returned unchanged.
    ``activation=None`` leaves the softmax out: the folded model returns logits.
    """
    names = model.layers[-1] if model.layers else None
    try:
        head = model.get_layer("head")
        norm, dense = head.get_layer("feature_norm"), head.get_layer("logits")
        pooled = model.get_layer("pool").output
    except ValueError:
        return model
    if not isinstance(names, ClassNames):
        return model
    mean = np.asarray(norm.mean, np.float64).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(norm.variance, np.float64).reshape(-1)), keras.config.epsilon())
    kernel, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
    folded = keras.layers.Dense(kernel.shape[1], activation=activation, dtype="float32", name="logits_folded")
    probs = folded(pooled)
    folded.set_weights([(kernel / std[:, None]).astype(np.float32), (bias - (mean / std) @ kernel).astype(np.float32)])
    out = ClassNames(names.class_names, names.info, name="class_names", dtype="float32")(probs)
    return keras.Model(model.inputs, out, name=model.name)


def logits_classifier(model):
    """``model`` without its final softmax: the same inputs, the head's logits out (class names kept).

    A feature head is folded (:func:`fold_head_normalization`); a map head's ``logits`` Dense is
    rebuilt without its activation. Returns ``None`` for anything else (an ensemble, whose output
    is an average of probabilities).
    """
    folded = fold_head_normalization(model, activation=None)
    if folded is not model:
        return folded
    if not is_map_head(model) or not isinstance(model.layers[-1], ClassNames):
        return None
    names = model.layers[-1]
    head = model.get_layer("head")
    dense = head.get_layer("logits")
    body = keras.Model(head.inputs, dense.input)
    inp = keras.Input(model.inputs[0].shape[1:], name="image")
    x = model.get_layer("backbone")(model.get_layer("preprocess")(inp), training=False)
    linear = keras.layers.Dense(len(names.class_names), dtype="float32", name="logits_linear")
    z = linear(body(x, training=False))
    linear.set_weights(dense.get_weights())
    out = ClassNames(names.class_names, names.info, name="class_names", dtype="float32")(z)
    return keras.Model(inp, out, name=model.name)


def _stems(info: ModelInfo) -> dict[str, tuple[str, ...]]:
    """Each of the model's backbones that has an int8 float stem (registry ``int8_float``), with it."""
    return {b: REGISTRY[b].int8_float for b in info.backbones if b in REGISTRY and REGISTRY[b].int8_float}


def float_stem_layers(info: ModelInfo) -> list[str]:
    """The Keras layers an int8 export keeps in float: the stems of the model's backbones, and with
    them the in-model preprocessing (``preprocess``), whose int8 output would round the scaled
    pixels to fewer levels than the 256 they have."""
    out = list(dict.fromkeys(name for stem in _stems(info).values() for name in stem))
    return ["preprocess", *out] if out else []


def write_sidecar(out: Path, info: ModelInfo, variant: str, output: str, float_layers: Sequence[str] = ()) -> Path:
    """``<out>.json`` beside a ``.tflite``: what :class:`gc10lib.inference.LiteRTPredictor` needs to read it."""
    full_integer = variant == "int8" and not float_layers
    meta = {
        "classes": info.classes,
        "img_size": info.input_size,
        "policy": info.policy,
        "variant": variant,
        "backbones": info.backbones,
        "input": "uint8 RGB 0..255" if full_integer else "float32 RGB 0..255",
        "output": output,
        "float_layers": list(float_layers),
    }
    sidecar(out).write_text(json.dumps(meta))
    return sidecar(out)


def _tensor_types(blob: bytes) -> dict[str, int]:
    """Every tensor's name and type (``schema_py_generated.TensorType``) in a ``.tflite`` model."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
    return {t.name.decode(): t.type for g in model.subgraphs for t in g.tensors}


def _made_by(tensor: str, layer: str) -> bool:
    """Whether a converted tensor's name (fused ops: ``;``-joined paths) names the Keras ``layer``
    (a path component ``layer`` or ``layer_<n>``: ``conv_dw_1_1`` is ``conv_dw_1``, ``conv_dw_10_1`` is not)."""
    pattern = re.compile(rf"{re.escape(layer)}(_\d+)?")
    return any(pattern.fullmatch(part) for loc in tensor.split(";") for part in loc.split("/"))


def int8_blob(
    saved_model: str | Path, images: list[np.ndarray], float_layers: Sequence[str] = ()
) -> tuple[bytes, list[str]]:
    """An int8 ``.tflite`` calibrated on ``images`` (each ``(1, H, W, 3)`` float32), with the ops of
    ``float_layers`` kept in float; without any, full integer with uint8 input. Returns the file
    and the layers of ``float_layers`` found in it.

    The float ops are chosen with the LiteRT quantization debugger's ``denylisted_nodes`` on the
    calibrated model. Layers that are named but not found are left out of the list: the converter
    merges identical ops of two branches (same weights on the same input) into one, named after one
    of them. If none is found, or a chosen op comes out other than float32, this raises, so a
    converter that names its tensors otherwise can never silently write a full-integer file.
    """
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([im] for im in images)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_layers:
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.float32
        return conv.convert(), []
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=lambda: ([im] for im in images[:1])
    )
    calibrated = _tensor_types(debugger.calibrated_model)
    nodes = {layer: [t for t in calibrated if _made_by(t, layer)] for layer in float_layers}
    found = [layer for layer, names in nodes.items() if names]
    if not found:
        raise RuntimeError(f"int8 export: no converted tensor comes from layers {list(float_layers)}; use full integer")
    denied = sorted({t for names in nodes.values() for t in names})
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denied)
    blob = debugger.get_nondebug_quantized_model()
    types = _tensor_types(blob)
    # integer tensors of those layers (a ReverseV2's axis in VGG19's caffe preprocessing) never were float
    was_float = [t for t in denied if calibrated.get(t) == TensorType.FLOAT32]
    if still := [t for t in was_float if types.get(t) != TensorType.FLOAT32]:
        raise RuntimeError(f"int8 export: {len(still)} op(s) meant to stay float were quantized: {still[:3]}")
    return blob, found


def export_litert(
    model,
    out: str | Path,
    variant: str = "float32",
    representative: Iterable[np.ndarray] | None = None,
    overwrite: bool = False,
    float_stem: bool = True,
) -> Path:
    """Convert a Keras classifier/ensemble (or a ``.keras`` path) to ``out`` (``.tflite``).

    ``representative`` (for ``int8``): an iterable of single images (H, W, 3), 0..255, made with
    the model's resize policy (:func:`representative_images`). ``float_stem`` (``int8``): keep
    the backbones' stems in float (:func:`float_stem_layers`; the module's notes say why);
    ``False`` writes a full-integer file.
    """
    if variant not in VARIANTS:
        raise InputError(f"unknown export format {variant!r}; expected one of {VARIANTS}")
    out = Path(out)
    if out.suffix != ".tflite":
        raise InputError(f"{out}: the output file must end in .tflite")
    for f in (out, sidecar(out)):
        if f.exists() and not overwrite:
            raise OutputExistsError(f"{f}: already exists; choose another --out.")
    if isinstance(model, (str, Path)):
        model = load_model(model)
    info = model_info(model)
    output = "probabilities"
    float_layers = float_stem_layers(info) if variant == "int8" and float_stem else []
    if variant == "int8" and (logits := logits_classifier(model)) is not None:
        model, output = logits, "logits"  # an int8 softmax would round every probability to 1/256
    else:
        model = fold_head_normalization(model)  # exact in float; keeps int8 from rounding the head's input away
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        if variant == "int8":
            if representative is None:
                raise InputError("int8 export needs representative images (about 200 from the train split)")
            images = [np.asarray(im, np.float32)[None] for im in representative]
            if not images:
                raise InputError("int8 export: the representative set is empty")
            blob, kept = int8_blob(tmp, images, float_layers)
            for b, stem in _stems(info).items() if float_layers else ():  # each stem keeps some of itself float
                if not set(stem) & set(kept):
                    raise RuntimeError(
                        f"int8 export: none of {b}'s stem layers {list(stem)} was found; use full integer"
                    )
            float_layers = kept
        else:
            conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if variant in ("float16", "dynamic"):
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            if variant == "float16":
                conv.target_spec.supported_types = [tf.float16]
            blob = conv.convert()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    write_sidecar(out, info, variant, output, float_layers)
    return out


def representative_images(
    data_dir: str | Path, split_csv: str | Path | None, size: int, n: int = 200, seed: int = 0, policy: str = "stretch"
) -> np.ndarray:
    """Up to ``n`` int8 calibration images, resized, uint8: drawn from the train *and* validation
    subsets (the whole dataset without a split), spread over the classes as evenly as they allow
    (round robin, so a rare class is not left to chance), and two in three flipped horizontally or
    vertically: views, not copies. The test subset is never read. Labels are not used."""
    if split_csv:
        man = data.read_split(split_csv, data_root=data_dir)
        table = man[man.subset.isin(["train", "val"])]
    else:
        table = data.discover(data_dir).table
    shuffled = table.sample(frac=1.0, random_state=seed)
    turn = shuffled.groupby("class", sort=False).cumcount()  # 0 for each class's first image, 1 ...
    pick = shuffled.assign(_turn=turn.to_numpy()).sort_values("_turn", kind="stable").head(n)
    images = ImageCache(size, policy).load(list(pick.path))
    flips = np.random.default_rng(seed).integers(0, 3, len(images))  # 0 as is, 1 left-right, 2 up-down
    images[flips == 1] = images[flips == 1][:, :, ::-1]
    images[flips == 2] = images[flips == 2][:, ::-1]
    return images


def calibration_images(
    model, data_dir: str | Path, split_csv: str | Path | None, n: int = 200, seed: int = 0
) -> np.ndarray:
    """:func:`representative_images` at the model's own input size and resize policy."""
    info = model_info(model)
    return representative_images(data_dir, split_csv, info.input_size, n=n, seed=seed, policy=info.policy)
