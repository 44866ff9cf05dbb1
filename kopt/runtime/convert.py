"""Export to TFLite (float32, float16, full-int8 for XNNPACK) and ONNX; a LiteRT runner.

Every export reads back the file it wrote and compares it with the Keras model, because a
converter that silently drops a layer or mis-quantises one is the common failure here.

Conversion route: Keras 3 -> SavedModel with a fixed batch-1 signature (ExportArchive) ->
TFLiteConverter.from_saved_model. A fixed batch lets the converter plan static shapes, which
XNNPACK needs; from_concrete_functions would leave variables unfrozen.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from kopt.errors import DataError, ExportError, KoptError, VerificationError
from kopt.keras_io import from_keras, to_keras
from kopt.keras_io.probes import predict_outputs
from kopt.rewriting.verify import max_relative_error
from kopt.runtime import recurrent
from kopt.runtime.int8_error import Int8ErrorReport, tflite_layer_errors
from kopt.runtime.litert import LiteRTRunner, op_table

log = logging.getLogger(__name__)

CALIBRATION_SAMPLES = 200
VERIFY_SAMPLES = 200
QUANTIZE_MODES = ("int8", "float16", None)
SOFTMAX_MODES = ("keep", "drop", "float")

@dataclass
class ExportResult:
    """What an export wrote and how well the file agrees with the Keras model."""

    path: str
    bytes: int
    format: str
    quantize: str | None = None
    ops: dict[str, int] = field(default_factory=dict)
    xnnpack_ops: int = 0
    fallback_ops: dict[str, int] = field(default_factory=dict)
    verification: dict[str, float] = field(default_factory=dict)
    softmax: str = "keep"
    layer_errors: Int8ErrorReport | None = None  # export_tflite(..., layer_errors=True)
    int8_rewrites: dict = field(default_factory=dict)  # kopt.runtime.int8_prep's choice

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    def summary(self) -> str:
        lines = [f"{self.path}: {self.format} ({self.quantize or 'float32'}), "
                 f"{self.bytes:,} bytes"]
        if self.ops and self.format == "tflite":
            width = max(len(k) for k in self.ops)
            lines += [f"  {op:<{width}}  {n:>4}" for op, n in sorted(self.ops.items())]
            lines.append(f"  XNNPACK takes {self.xnnpack_ops}/{self.total_ops} ops"
                         + (f"; falls back: {self.fallback_ops}" if self.fallback_ops else ""))
        lines += [f"  {k}: {v:.6g}" for k, v in self.verification.items()]
        if self.softmax != "keep":
            lines.append(f"  softmax: {self.softmax}")
        if self.int8_rewrites.get("chosen"):
            lines.append(f"  int8 rewrites chosen by measurement: "
                         f"{', '.join(self.int8_rewrites['chosen'])}")
        if self.layer_errors is not None and self.layer_errors.rows:
            w = self.layer_errors.worst()
            lines.append(f"  int8 error: '{w['layer']}' ({w['op']}) adds the most, "
                         f"{w['added']:.3g} noise/signal per channel (tensor SQNR "
                         f"{w['sqnr_db']:.1f} dB)")
        return "\n".join(lines)


# ---- data ------------------------------------------------------------------------------
def _input_shapes(model: Any) -> list[tuple]:
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    return [tuple(s) for s in shapes]


def _require_fixed_shapes(model: Any) -> None:
    """kopt's .tflite files have a fixed batch of 1 and fixed sizes elsewhere (XNNPACK plans
    static shapes, and the file is checked against Keras on samples of those shapes)."""
    for i, shape in enumerate(_input_shapes(model)):
        if None in shape[1:]:
            raise ExportError(f"input {i} of '{model.name}' has shape {shape}: a .tflite file "
                              "needs every size but the batch fixed. Build the model with a "
                              "fixed Input shape (its weights do not depend on it) and export "
                              "that")


def _input_dtypes(model: Any) -> list[str]:
    return [str(getattr(t.dtype, "name", t.dtype)) for t in model.inputs]


def representative_samples(model: Any, data: Any, limit: int = CALIBRATION_SAMPLES
                           ) -> list[list[np.ndarray]]:
    """Batch-1 samples (one array per model input) from a numpy array, a tf.data.Dataset, a
    generator or a callable returning one; (x, y) pairs are accepted and y is ignored."""
    shapes = _input_shapes(model)
    expected = " and ".join(str((None,) + s[1:]) for s in shapes)
    if data is None:
        raise DataError(f"representative data is needed to calibrate int8 activations: pass "
                        f"representative_data with shape {expected} (a few hundred samples)")
    if callable(data) and not hasattr(data, "element_spec"):
        data = data()
    samples: list[list[np.ndarray]] = []
    for batch in _batches(data, len(shapes)):
        arrays = [np.asarray(a) for a in batch]
        for i, (a, s) in enumerate(zip(arrays, shapes)):
            if a.ndim == len(s) - 1:  # an unbatched sample
                arrays[i] = a = a[None]
            wrong = any(d is not None and d != e for d, e in zip(s[1:], a.shape[1:]))
            if a.ndim != len(s) or wrong:
                raise DataError(f"representative data has shape {a.shape}; the model's input "
                                f"{i} needs {(None,) + s[1:]}")
        step = shapes[0][0] or 1  # a model with a fixed batch calibrates at that batch
        for j in range(0, len(arrays[0]) - step + 1, step):
            samples.append([a[j:j + step].astype(np.float32) for a in arrays])
            if len(samples) >= limit:
                return samples
    if not samples:
        raise DataError(f"representative data is empty: pass samples with shape {expected}")
    return samples


def _batches(data: Any, n_inputs: int) -> Iterable[list]:
    if isinstance(data, np.ndarray) or (n_inputs > 1 and isinstance(data, list)
                                        and all(isinstance(a, np.ndarray) for a in data)):
        yield [data] if n_inputs == 1 else list(data)
        return
    for item in data:
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, (tuple, list)) and n_inputs == 1:
            item = item[0]  # (x, y) or (x,)
        elif isinstance(item, tuple) and n_inputs > 1 and len(item) == 2 \
                and isinstance(item[0], (tuple, list)):
            item = item[0]
        yield [np.asarray(a) for a in (item if n_inputs > 1 else [item])]


# ---- conversion --------------------------------------------------------------------------
def _is_tf_keras(model: Any) -> bool:
    return type(model).__module__.startswith("tf_keras")


def _saved_model(model: Any, directory: str) -> None:
    """A SavedModel whose one signature has a fixed batch (the model's, else 1)."""
    import tensorflow as tf

    specs = [tf.TensorSpec((s[0] or 1,) + s[1:], dt, name=f"input_{i}")
             for i, (s, dt) in enumerate(zip(_input_shapes(model), _input_dtypes(model)))]

    def serve(*xs: Any) -> Any:
        return model(xs[0] if len(xs) == 1 else list(xs), training=False)

    if _is_tf_keras(model):
        fn = tf.function(serve, input_signature=specs)
        tf.saved_model.save(model, directory, signatures=fn.get_concrete_function())
        return
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=specs)
    archive.write_out(directory, verbose=False)


@contextlib.contextmanager
def _collect_only_new_objects() -> Iterator[None]:
    """The SavedModel converter runs a full gc.collect() per conversion (tensorflow/lite/python
    /lite.py), which walks every object of the process: 0.22 s of a 0.46 s single-layer
    conversion in a search with TensorFlow and a few models loaded, so half the time of
    building a latency table. gc.freeze() parks the objects alive now where collections do not
    look; unfreeze puts them back, so nothing that dies later is kept alive. Where the caller
    has frozen objects itself (a pre-fork server), its freeze is left as it is."""
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    try:
        yield
    finally:
        if ours:
            gc.unfreeze()


def _converter(model: Any, quantize: str | None, samples: list | None, int8_io: bool) -> Any:
    """Keras 3 and tf_keras alike. Not keras' model.export(format="litert"): it runs this same
    ExportArchive -> from_saved_model route (identical ops, sizes and outputs, measured), but
    defaults to Flex ops and a dynamic batch, rejects tf_keras models, and names the inputs
    args_0, args_0_1, ... where _in_model_order needs the input_i / output_i names set here.
    In full int8, recurrent layers are unrolled first (kopt.runtime.recurrent: the calibrator
    crashes the process on their loops)."""
    import tensorflow as tf

    if quantize not in QUANTIZE_MODES:
        raise KoptError(f"quantize={quantize!r}: use one of {QUANTIZE_MODES}")
    if quantize == "int8":
        model = recurrent.for_int8(model)
    with tempfile.TemporaryDirectory() as tmp, _collect_only_new_objects():
        _saved_model(model, tmp)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        names = [f"input_{i}" for i in range(len(_input_shapes(model)))]
        _configure(conv, quantize, samples, int8_io, names)
        flat = conv.convert()
    if len(names) > 1 or len(getattr(model, "outputs", None) or []) > 1:
        flat = _in_model_order(flat)
    return flat


def _in_model_order(flat: bytes) -> bytes:
    """The converter lists a file's inputs and outputs in hash-map order, not the model's
    (tensorflow#56985, #57693: a 2-input model comes out [input_1, input_0]), and positional
    callers (LiteRTRunner, verify_tflite, anyone's interpreter) then feed each input the
    other's data. Reorder them by the input_i / output_i names of the signature written by
    _saved_model; names of another form are left as they are."""
    import re

    from tensorflow.lite.tools import flatbuffer_utils

    fb = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    sig = fb.signatureDefs[0]
    sub = fb.subgraphs[sig.subgraphIndex]
    changed = False
    for attr, maps, prefix in (("inputs", sig.inputs, "input_"),
                               ("outputs", sig.outputs, "output_")):
        names = [m.name.decode() if isinstance(m.name, bytes) else m.name for m in maps]
        if not all(re.fullmatch(prefix + r"\d+", n) for n in names):
            continue
        order = [m.tensorIndex for _, m in sorted(zip(names, maps),
                                                  key=lambda p: int(p[0][len(prefix):]))]
        if order != list(getattr(sub, attr)):
            setattr(sub, attr, np.array(order, np.int32))
            changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fb)) if changed else flat


def _configure(conv: Any, quantize: str | None, samples: list | None, int8_io: bool,
               names: list[str] | None = None) -> None:
    """Converter options per mode. With the signature's input names, calibration samples go in
    as {name: array}: a list is fed in the converter's (hash-map) input order, which hands a
    multi-input model the wrong arrays."""
    import tensorflow as tf

    if quantize == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = (lambda: iter(samples)) if names is None else \
            (lambda: (dict(zip(names, s)) for s in samples))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8


def convert_tflite(model: Any, quantize: str | None = "int8", representative_data: Any = None,
                   int8_io: bool = True) -> bytes:
    """The .tflite flatbuffer of a Keras 3 or tf_keras model, without writing or checking it."""
    samples = representative_samples(model, representative_data) if quantize == "int8" else None
    return _converter(model, quantize, samples, int8_io)


def int8_layer_errors(model: Any, representative_data: Any, int8_io: bool = True
                      ) -> Int8ErrorReport:
    """How much error each layer of the model's full-int8 file adds: the float32 and plain PTQ
    int8 files (convert_tflite's, without export_tflite's int8_rewrites) are converted here and
    compared tensor by tensor on the representative data (the same samples calibrate the int8
    file). See kopt.runtime.int8_error for the figures. Defined here, not there, because the
    exporter fills ExportResult.layer_errors with it and a module that converts cannot be
    imported by the converter."""
    samples = representative_samples(model, representative_data)
    return tflite_layer_errors(_converter(model, None, None, int8_io),
                               _converter(model, "int8", samples, int8_io), samples, model)


def export_tflite(model: Any, path: str | os.PathLike, representative_data: Any = None,
                  quantize: str | None = "int8", int8_io: bool = True, verify: bool = True,
                  qat: dict | None = None, softmax: str = "keep", layer_errors: bool = False,
                  int8_rewrites: bool = True
                  ) -> ExportResult:
    """Write a .tflite file; int8 is full-integer PTQ (per-channel weights, int8 activations,
    int8 I/O unless int8_io=False). qat=dict(data=(x, y), epochs=1) fine-tunes a
    quantisation-aware copy first. The written file is read back and compared with Keras.

    softmax: what becomes of a softmax that makes a model output (a Softmax or
    Activation('softmax') layer, or a layer with activation='softmax', over the last axis):

    - "keep": as in the model. XNNPACK does not take int8 SOFTMAX (op_table measures it), so
      LiteRT's own int8 kernel runs it after XNNPACK's partition; fallback_ops lists it.
    - "drop": the file ends at the logits, the classes in the same order (argmax, top-1 and
      top-k are unchanged). A copy of the model is emitted through the IR with the softmax
      layer removed or the activation made linear; the caller's model is not touched, and
      verification compares the file with the copy's logits.
    - "float": int8 logits, then a DEQUANTIZE and a float32 SOFTMAX appended to the file, so
      XNNPACK takes every op and the output is float32 probabilities. With int8_io this means
      an int8 input and a float32 output (int8 probabilities would throw away what the float
      softmax computed); verification compares with the model's probabilities. Float and
      float16 files have a float softmax already: "float" keeps it there.

    "drop" and "float" raise KoptError when no output ends in a softmax: asked for, they
    cannot do what they say. The default is "keep", by measurement: on the digits VGG-like
    CNN (28x28, ~49 us per int8 invoke, 1 thread, XNNPACK) the three files time alike within
    run-to-run noise (medians of 9 and 15 interleaved rounds of 2,000 invokes: drop and float
    0.98-1.005x of keep, in both directions), and on a 4x narrower one (~10 us) "drop" saves
    0.1 us. A 10-class int8 softmax costs that little, so the default keeps the file computing
    what the Keras model computes, in the output type int8_io promises.

    layer_errors=True (int8 post-training exports) also measures each layer's int8 error
    (kopt.runtime.int8_error) into result.layer_errors, against the float32 file of the model
    that was quantised (after int8_rewrites). It converts that float file too and runs both
    files and each op alone on the calibration samples without XNNPACK: on the digits VGG-like
    CNN (200 samples) it adds 1.3 to 2.6 s to a 3 to 14 s export (a shared, loaded machine),
    20-40 %, so it is asked for, not on by default.

    int8_rewrites=True (int8 post-training exports): kopt.runtime.int8_prep tries BN folding,
    cross-layer and concatenation range equalisation and bias correction, each converted and
    compared with the model on the calibration samples, and the file is written from the best
    candidate if it beats plain PTQ by a margin (else from the model as given). What was tried,
    chosen and measured is in result.int8_rewrites. False gives plain PTQ.
    """
    path = os.fspath(path)
    _require_fixed_shapes(model)
    if softmax not in SOFTMAX_MODES:
        raise KoptError(f"softmax={softmax!r}: use one of {SOFTMAX_MODES}")
    int8 = qat is not None or quantize == "int8"
    if layer_errors and (not int8 or qat is not None):
        raise KoptError("layer_errors=True measures a post-training int8 export (quantize="
                        "'int8', no qat: a QAT file's weights no longer match the float model)")
    exported, dropped = (model, []) if softmax == "keep" else _without_softmax(model)
    if softmax == "float" and not int8:
        exported = model  # its softmax is float already
    if qat is not None:
        samples = representative_samples(model, representative_data)
        flat = _qat_flatbuffer(exported, samples, int8_io=int8_io, **qat)
    else:
        samples = representative_samples(model, representative_data) if int8 else None
        quantized, rewrites = exported, {}
        converted: dict[int, tuple[Any, bytes]] = {}  # the search's files, reused when chosen

        def convert(m: Any) -> bytes:
            if id(m) not in converted:  # the model is kept alive with its id
                converted[id(m)] = (m, _converter(m, quantize, samples, int8_io))
            return converted[id(m)][1]

        if int8 and int8_rewrites:  # equalisation / bias correction where they measure better
            from kopt.runtime.int8_prep import prepare_for_int8

            quantized, _, rewrites = prepare_for_int8(exported, samples, convert)
        flat = convert(quantized)
    logits_flat = flat
    if softmax == "float" and int8:
        flat = _float_softmax(flat, dropped)
    result = ExportResult(path=path, bytes=len(flat), format="tflite",
                          quantize="int8" if qat is not None else quantize, softmax=softmax)
    result.int8_rewrites = rewrites if qat is None else {}
    runner = LiteRTRunner(flat)
    result.ops, result.fallback_ops, result.xnnpack_ops = op_table(flat)
    if result.fallback_ops:
        log.warning("%s: ops XNNPACK does not take (LiteRT's own kernels run them): %s",
                    path, result.fallback_ops)
    if verify:
        if samples is None:
            samples = _probe_samples(model)
        reference = exported if softmax == "drop" else model
        result.verification = verify_tflite(reference, runner, samples, result.quantize)
    if layer_errors:
        result.layer_errors = tflite_layer_errors(_converter(quantized, None, None, int8_io),
                                                  logits_flat, samples, quantized)
    _write(path, flat)  # last: a failed conversion or verification leaves no file behind
    return result


def _write(path: str, content: bytes) -> None:
    """Write through a temporary file in the same folder, so that `path` is either the whole
    new file or what it was before (never a partial file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _without_softmax(model: Any) -> tuple[Any, list[int]]:
    """A copy of `model` emitted through the IR whose outputs end at the logits, and the
    positions of the outputs that lost a softmax (see export_tflite's `softmax`)."""
    g = from_keras(model)
    dropped = []
    for i, (name, _) in enumerate(list(g.outputs)):
        node = g[name]
        rank = len(node.output_shape)
        if g.is_shared(node) or g.out_edges(name):
            continue  # the softmax also feeds other layers, or its layer is called elsewhere
        if node.op == "Softmax" and _is_last_axis(node.config.get("axis", -1), rank) \
                or node.op == "Activation" and node.activation == "softmax":
            g.bypass(name)
        elif node.activation == "softmax" and node.op != "Activation":
            node.config["activation"] = "linear"
        else:
            continue
        dropped.append(i)
    if not dropped:
        raise KoptError(f"no output of '{model.name}' ends in a softmax over its last axis "
                        "(a Softmax layer or activation='softmax'), so there is none to drop "
                        "or make float: export it with softmax='keep'")
    return to_keras(g, backend="tf_keras" if _is_tf_keras(model) else "keras"), dropped


def _is_last_axis(axis: Any, rank: int) -> bool:
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def _float_softmax(flat: bytes, outputs: list[int]) -> bytes:
    """The file with a DEQUANTIZE (for an int8 output) and a float32 SOFTMAX appended after
    each of its `outputs` (positions), which become float32 probabilities. Written into the
    flatbuffer because a full-int8 conversion quantises every op it can, softmax included."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    fb = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    sub = fb.subgraphs[0]

    def opcode(code: int, version: int) -> int:
        for i, c in enumerate(fb.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == code and c.version == version:
                return i
        fb.operatorCodes.append(schema.OperatorCodeT(deprecatedBuiltinCode=code,
                                                     builtinCode=code, version=version))
        return len(fb.operatorCodes) - 1

    def append(code: int, version: int, src: int, name: str, options: Any = None) -> int:
        like = sub.tensors[src]
        t = schema.TensorT()
        t.shape, t.shapeSignature, t.name = like.shape, like.shapeSignature, name
        t.type, t.buffer = schema.TensorType.FLOAT32, len(fb.buffers)
        fb.buffers.append(schema.BufferT())
        sub.tensors.append(t)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs = opcode(code, version), np.array([src], np.int32)
        op.outputs = np.array([len(sub.tensors) - 1], np.int32)
        if options is not None:
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.SoftmaxOptions, \
                options
        sub.operators.append(op)
        return len(sub.tensors) - 1

    for pos in outputs:
        src = int(sub.outputs[pos])
        if sub.tensors[src].type != schema.TensorType.FLOAT32:
            src = append(schema.BuiltinOperator.DEQUANTIZE, 2, src, f"logits_{pos}")
        options = schema.SoftmaxOptionsT()
        options.beta = 1.0  # the schema's default is 0: a uniform "softmax"
        probs = append(schema.BuiltinOperator.SOFTMAX, 1, src, f"probabilities_{pos}", options)
        for m in fb.signatureDefs[0].outputs:
            if m.tensorIndex == sub.outputs[pos]:
                m.tensorIndex = probs
        sub.outputs[pos] = probs
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fb))


def _qat_flatbuffer(model: Any, samples: list, data: tuple, epochs: int = 1,
                    batch_size: int = 32, learning_rate: float = 1e-4, int8_io: bool = True
                    ) -> bytes:
    """Quantisation-aware fine-tuning through tfmot, which only wraps tf_keras models: emit a
    tf_keras copy from the IR (the caller's model is not touched), wrap, fit, convert."""
    import tensorflow as tf
    import tf_keras

    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1 process-wide

    if saved is None:  # put it back so tf.keras in the caller's process stays Keras 3
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = saved

    x, y = data
    g = from_keras(model)
    for node in g:  # Keras 3 initializer configs carry keys tf_keras rejects; names suffice
        for key, value in node.config.items():
            if key.endswith("_initializer") and isinstance(value, dict):
                node.config[key] = value.get("class_name", value)
    tk = to_keras(g, backend="tf_keras")
    q = tfmot.quantization.keras.quantize_model(tk)
    y = np.asarray(y)
    if y.ndim == 1 and y.dtype.kind in "iu":
        probs = np.asarray(tk(np.asarray(x[:8]), training=False))
        logits = not (probs.min() >= 0 and np.allclose(probs.sum(-1), 1, atol=1e-3))
        loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
    else:
        loss = "mse"
    q.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss=loss)
    q.fit(np.asarray(x), y, epochs=epochs, batch_size=batch_size, verbose=0)
    conv = tf.lite.TFLiteConverter.from_keras_model(q)
    _configure(conv, "int8", samples, int8_io)
    return conv.convert()


def _probe_samples(model: Any, n: int = 4) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [[rng.normal(0, 1, (1,) + s[1:]).astype(np.float32) for s in _input_shapes(model)]
            for _ in range(n)]


def verify_tflite(model: Any, runner: LiteRTRunner, samples: list, quantize: str | None
                  ) -> dict[str, float]:
    """Float: max relative error (must be <= 1e-4, float16 <= 1e-2); int8: top-1 agreement and
    mean absolute error over the samples."""
    samples = samples[:VERIFY_SAMPLES]
    expected = [predict_outputs(model, s) for s in samples]
    got = [runner.run_all(s) for s in samples]
    if quantize == "int8":  # every output; keys of outputs after the first end in _<index>
        figures: dict[str, float] = {}
        for i in range(len(expected[0])):
            exp = np.concatenate([e[i] for e in expected])
            out = np.concatenate([g[i] for g in got])
            end = f"_{i}" if i else ""
            figures[f"mean_abs_error{end}"] = float(np.mean(np.abs(exp - out)))
            figures[f"max_abs_output{end}"] = float(np.max(np.abs(exp)))
            if exp.ndim == 2 and exp.shape[1] > 1:
                figures[f"top1_agreement{end}"] = float(np.mean(exp.argmax(1) == out.argmax(1)))
        return figures
    err = max(max_relative_error(e, g) for e, g in zip(expected, got))
    tol = 1e-2 if quantize == "float16" else 1e-4
    if err > tol:
        raise VerificationError(f"{runner.source}: TFLite outputs differ from Keras by "
                                f"{err:.3e} (relative) > {tol:.0e}")
    return {"max_relative_error": err}


# ---- ONNX --------------------------------------------------------------------------------
def export_onnx(model: Any, path: str | os.PathLike, verify: bool = True,
                opset: int = 13) -> ExportResult:
    """Write an ONNX file through tf2onnx.convert.from_function (from_keras does not handle
    Keras 3) and check it with onnxruntime against Keras at 1e-4 relative."""
    import tensorflow as tf
    import tf2onnx

    path = os.fspath(path)
    specs = [tf.TensorSpec((None,) + s[1:], dt, name=f"input_{i}")
             for i, (s, dt) in enumerate(zip(_input_shapes(model), _input_dtypes(model)))]

    def serve(*xs: Any) -> Any:
        return model(xs[0] if len(xs) == 1 else list(xs), training=False)

    fn = tf.function(serve, input_signature=specs)
    tmp = f"{path}.tmp-{os.getpid()}"  # renamed to `path` once verified: no partial file
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset,
                                                 output_path=tmp)
        ops = Counter(n.op_type for n in proto.graph.node)
        result = ExportResult(path=path, bytes=os.path.getsize(tmp), format="onnx",
                              ops=dict(ops))
        if verify:
            import onnxruntime as ort

            sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            xs = [np.concatenate(s) for s in zip(*_probe_samples(model, 2))]
            names = [i.name for i in sess.get_inputs()]
            got = sess.run(None, dict(zip(names, xs)))
            err = max_relative_error(predict_outputs(model, xs), got)
            if err > 1e-4:
                raise VerificationError(f"{path}: ONNX outputs differ from Keras by {err:.3e} "
                                        "(relative) > 1e-4")
            result.verification = {"max_relative_error": err}
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return result


