"""Per-layer int8 error: every tensor of an int8 .tflite file against the float32 file of the
same model, on calibration data, and the layers ranked by the error each one adds.

How it is measured. Both files are run sample by sample in LiteRT with
`experimental_preserve_all_tensors=True` and the BUILTIN_WITHOUT_DEFAULT_DELEGATES op resolver:
XNNPACK would replace the graph by one delegate node whose intermediate tensors are never
written, and the preserving flag alone does not stop the default delegate (LiteRT applies it
for AUTO/BUILTIN). So the numbers are those of LiteRT's builtin int8 kernels; XNNPACK rounds
a little differently (on the digits VGG-like CNN its logits differ from theirs by at most one
int8 step).

How tensors are matched. Both files come from the same SavedModel trace, so a tensor keeps its
name in both ("functional_1/conv2d_1/Relu;functional_1/conv2d_1/BiasAdd;..."); an int8 tensor
with no float namesake that a QUANTIZE / DEQUANTIZE op makes from (or turns into) a matched
tensor is compared with that tensor's reference. Each matched tensor is then named after the
Keras layer it is the output of: the layers whose output, on the first sample, equals the float
tensor (1e-3 relative), preferring those named in the tensor's name, the last of them in the
model (a fused conv, BN, ReLU tensor is the ReLU's output). Names alone are ambiguous: Keras 3
suffixes every name scope ("conv2d" traces as "conv2d_1", and the layer "conv2d_1" as
"conv2d_1_2"), so a tensor that equals no layer's output (an op inside a decomposed layer) is
named from its scope, longest layer name first.

The figures, per tensor, pooled over all samples (ref: the float file's tensor, q: the int8
file's, dequantised):

- sqnr_db = 10 log10(sum(ref^2) / sum((ref - q)^2)) and cosine = <ref, q> / (|ref| |q|), as
  ai-edge-quantizer's validate() reports them: the error accumulated up to this tensor;
- channel_sqnr_db: the same per channel (last axis), as the mean over the channels that carry
  any signal of the noise-to-signal ratios NSR_c = sum_c((ref - q)^2) / max(sum_c(ref^2), F),
  with F 1% of the median channel's signal power (see below);
- added: the error the op adds itself, as that mean NSR (over the float file's tensor's
  per-channel signal) of the noise between two one-op models cut from the files, the op in
  int8 and in float, fed the same inputs: the float file's tensors rounded to the int8 op's
  input scales. What remains is the op's own rounding (its weights, integer arithmetic and
  output scale) and none of the error it inherits; a RESHAPE adds exactly 0. A model input
  adds its rounding to int8, a QUANTIZE / DEQUANTIZE its change of scale. An op that cannot be
  cut out alone (control flow) gets its mean NSR minus its noisiest input's.

Why each op alone, on inputs free of upstream error: layers change the ratio of noise they
inherit (averaging lowers it, a Dense whose signals cancel raises it), and an op fed a noisy
input can be pushed out of its calibrated output range and clip. Differences of accumulated
ratios (output minus worst input), or the op fed the int8 file's own inputs, blame those later
layers for an earlier layer's error. Why per channel: int8 activations
have one scale per tensor, but the next layer weights each channel separately. A channel with a
much larger range than the others (after BN folding, or on purpose in tests/test_int8_error.py)
takes the whole scale and leaves the other channels a few int8 steps; a tensor-wide ratio,
dominated by the big channel, stays high there and drops only at the next layer, where the
small channels are amplified. Per channel, the crushed channels show at the layer that crushes
them. The floor F keeps nearly silent channels out of it: a ReLU channel that is almost
always zero has a ratio of 1 or, when the int8 op's rounding makes it fire where float does
not, of thousands, whether or not any later layer listens to it (an untrained model is full of
them). Floored at 1% of the median channel's power (a tenth of its amplitude), such a channel
counts as much as a quiet one, while the crushed channels above, being the majority, set the
median and count in full. (After a flatten the last axis is each element.)
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kopt.keras_io.probes import predict_outputs
from kopt.runtime.litert import dequantize, quantize

_PASS_THROUGH = {"QUANTIZE", "DEQUANTIZE"}
_COMPARED = {np.dtype(t) for t in ("float32", "float16", "int8", "uint8", "int16")}
_SAME = 1e-3  # relative tolerance for "this float tensor is that Keras layer's output"
_QUIET = 1e-2  # a channel's signal power counts as at least this share of the median channel's


@dataclass
class Int8ErrorReport:
    """Rows in graph order, one per int8 tensor compared: {layer, tensor, op, sqnr_db, cosine,
    channel_sqnr_db, added}; see the module docstring for what each figure means."""

    rows: list[dict] = field(default_factory=list)
    samples: int = 0
    unmatched: list[str] = field(default_factory=list)  # int8 tensors with no float reference
    model: str = "model"

    def ranked(self) -> list[dict]:
        """Rows by the error they add, largest first."""
        return sorted(self.rows, key=lambda r: -r["added"])

    def worst(self) -> dict:
        return self.ranked()[0]

    def table(self, top: int | None = None) -> str:
        rows = self.ranked()[:top] if top else self.ranked()
        lw = max([len(r["layer"]) for r in rows] + [5])
        ow = max([len(r["op"]) for r in rows] + [2])
        lines = [f"{self.model}: int8 error per tensor against float32 over {self.samples} "
                 "samples, ranked by the noise-to-signal ratio each op adds (per channel)",
                 f"{'layer':<{lw}}  {'op':<{ow}}  {'SQNR dB':>8} {'cosine':>8} "
                 f"{'chan dB':>8} {'added':>10}"]
        lines += [f"{r['layer']:<{lw}}  {r['op']:<{ow}}  {r['sqnr_db']:>8.2f} "
                  f"{r['cosine']:>8.5f} {r['channel_sqnr_db']:>8.2f} {r['added']:>10.3g}"
                  for r in rows]
        if self.unmatched:
            lines.append(f"not compared (no float counterpart): {len(self.unmatched)} tensors")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"model": self.model, "samples": self.samples, "rows": self.rows,
                "ranked": [r["tensor"] for r in self.ranked()], "unmatched": self.unmatched}

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:  # inf (an exact tensor) is written as null: JSON has no inf
            json.dump(_finite(self.to_dict()), f, indent=1)

    def plot(self, path: str | os.PathLike, top: int = 20) -> None:
        """PNG: the `top` largest added errors as bars (left), SQNR along the graph (right)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.ranked()[:top][::-1]
        height = max(5.5, 0.3 * max(len(rows), len(self.rows) / 2) + 2.5)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, height),
                                       gridspec_kw={"width_ratios": [1.1, 1]})
        y = np.arange(len(rows))  # positions, not labels: two rows may share a label
        bars = ax1.barh(y, [r["added"] for r in rows], color="tab:red")
        ax1.set_yticks(y, [_label(r) for r in rows])
        ax1.bar_label(bars, [f"{r['added']:.2g}" for r in rows], padding=3, fontsize=7)
        ax1.set_xlabel("error the op adds itself: noise / signal, mean over channels")
        ax1.set_title(f"{self.model}: int8 error added per layer ({len(rows)} largest)")
        ax1.tick_params(axis="y", labelsize=8)
        ax1.margins(x=0.15)
        x = np.arange(len(self.rows))
        for key, label in (("sqnr_db", "tensor SQNR"), ("channel_sqnr_db", "per-channel SQNR")):
            ax2.plot(x, [_capped(r[key]) for r in self.rows], marker="o", label=label)
        ax2.set_xticks(x, [_label(r) for r in self.rows], rotation=60, ha="right", fontsize=7)
        ax2.set_ylabel("SQNR against float32, dB (capped at 80)")
        ax2.set_title(f"SQNR along the graph, {self.samples} samples (higher is better)")
        ax2.grid(axis="y", alpha=0.3)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def tflite_layer_errors(float_tflite: bytes, int8_tflite: bytes,
                        samples: list[list[np.ndarray]], model: Any = None) -> Int8ErrorReport:
    """Compare every tensor of `int8_tflite` with its namesake in `float_tflite` (both converted
    from one model, e.g. by kopt.runtime.convert_tflite) on `samples` (lists of one array per
    input, as representative_samples makes them). `model`, the Keras model both came from,
    names each tensor after its Keras layer; without it rows carry the tensor's scope."""
    ref, q = _inspector(float_tflite), _inspector(int8_tflite)
    tracked, unmatched = _match(ref, q)
    ops = q._get_ops_details()  # noqa: SLF001 - the only op listing in the Python API
    producer = {int(o): op for op in ops for o in op["outputs"]}
    alone = _ops_alone(float_tflite, int8_tflite, ref, q, tracked)
    total = {t: _Stats() for t in tracked}  # the int8 file against the float file
    own = {t: _Stats() for t in tracked}  # each op alone, int8 against float, same inputs
    first: dict[int, np.ndarray] = {}
    for xs in samples:
        for d, x in zip(ref.get_input_details(), xs):
            ref.set_tensor(d["index"], np.asarray(x, d["dtype"]))
        for d, x in zip(q.get_input_details(), xs):
            q.set_tensor(d["index"], quantize(x, d))
        ref.invoke()
        q.invoke()
        cut = {i: op.run(ref) for i, op in alone.items()}
        for t, (r_index, detail) in tracked.items():
            r = ref.get_tensor(r_index)
            first.setdefault(t, r)
            total[t].add(r, _value(q, t))
            op = producer.get(t)
            if op is None:  # a model input: its own error is its rounding
                own[t].add(r, _rounded(r, detail))
            elif op["op_name"] in _PASS_THROUGH and int(op["inputs"][0]) in tracked:
                source, source_detail = tracked[int(op["inputs"][0])]
                x = _rounded(ref.get_tensor(source), source_detail)
                own[t].add(x, _rounded(x, detail))
            elif op["index"] in cut:
                own[t].add(*cut[op["index"]][list(op["outputs"]).index(t)])
    names = _layer_names(model, samples[0], tracked, first) if model is not None and samples \
        else {}
    rows = []
    for t, (_, detail) in tracked.items():
        op = producer.get(t)
        if own[t].signal is not None:
            added = own[t].channel_nsr(signal=total[t])
        else:  # the op could not run alone: what it adds to the noisiest input's error
            inputs = [int(i) for i in op["inputs"] if int(i) in tracked]
            added = total[t].channel_nsr() - max([total[i].channel_nsr() for i in inputs] + [0])
        rows.append({"layer": names.get(t) or _scope(detail["name"]), "tensor": detail["name"],
                     "op": op["op_name"] if op is not None else "INPUT",
                     "sqnr_db": total[t].sqnr_db(), "cosine": total[t].cosine(),
                     "channel_sqnr_db": _db(total[t].channel_nsr()), "added": added})
    return Int8ErrorReport(rows=rows, samples=len(samples), unmatched=unmatched,
                           model=getattr(model, "name", "model"))


# ---- running and matching ------------------------------------------------------------------
def _inspector(flat: bytes) -> Any:
    """An interpreter that keeps every intermediate tensor (no XNNPACK: see the docstring)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=bytes(flat), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType
                              .BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def _value(interpreter: Any, tensor: int) -> np.ndarray:
    """A tensor of the last invoke as float32 (dequantised if it is int8)."""
    detail = interpreter._get_tensor_details(tensor, 0)  # noqa: SLF001 - any tensor, by index
    return dequantize(interpreter.get_tensor(tensor), detail)


def _rounded(x: np.ndarray, detail: dict) -> np.ndarray:
    """x as a tensor of that type holds it: rounded to its int8 scale (float: unchanged)."""
    return dequantize(quantize(x, detail), detail)


class _OpAlone:
    """One op cut out of both files into two one-op models, fed the same inputs: the float
    file's tensors rounded to the int8 op's input scales. Their outputs differ by the op's own
    rounding only (weights, integer arithmetic, the output's scale), none inherited."""

    def __init__(self, float_op: bytes, int8_op: bytes, feeds: list[tuple[int, dict]]):
        self.float, self.int8 = _inspector(float_op), _inspector(int8_op)
        self.feeds = feeds  # (float file tensor, int8 input's detail) per one-op model input

    def run(self, ref: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """(float output, int8 output dequantised) per output of the op."""
        for f, i, (tensor, detail) in zip(self.float.get_input_details(),
                                          self.int8.get_input_details(), self.feeds):
            x = quantize(ref.get_tensor(tensor), detail)
            self.int8.set_tensor(i["index"], x)
            self.float.set_tensor(f["index"], dequantize(x, detail).astype(f["dtype"]))
        self.float.invoke()
        self.int8.invoke()
        return [(self.float.get_tensor(f["index"]), dequantize(self.int8.get_tensor(i["index"]), i))
                for f, i in zip(self.float.get_output_details(), self.int8.get_output_details())]


def _ops_alone(float_tflite: bytes, int8_tflite: bytes, ref: Any, q: Any, tracked: dict
               ) -> dict[int, _OpAlone]:
    """{int8 op index: the op alone} for every int8 op whose outputs are compared and whose
    float namesake is the same kind of op with constants and activations in the same places."""
    from tensorflow.lite.tools import flatbuffer_utils

    fbs = [flatbuffer_utils.read_model_from_bytearray(bytearray(f))
           for f in (float_tflite, int8_tflite)]
    consts = [{i for i, t in enumerate(fb.subgraphs[0].tensors)
               if fb.buffers[t.buffer].data is not None and len(fb.buffers[t.buffer].data)}
              for fb in fbs]
    float_op = {int(o): op for op in ref._get_ops_details() for o in op["outputs"]}  # noqa: SLF001
    alone = {}
    for p in q._get_ops_details():  # noqa: SLF001
        outs = [int(o) for o in p["outputs"]]
        if p["op_name"] in _PASS_THROUGH or not all(o in tracked for o in outs):
            continue
        f = float_op.get(tracked[outs[0]][0])
        if f is None or f["op_name"] != p["op_name"] or len(f["inputs"]) != len(p["inputs"]) \
                or [tracked[o][0] for o in outs] != [int(o) for o in f["outputs"]]:
            continue
        pairs = [(int(a), int(b)) for a, b in zip(f["inputs"], p["inputs"])]
        live = [(a, b) for a, b in pairs if a >= 0 and a not in consts[0]]
        if any(b < 0 or b in consts[1] for _, b in live) or \
                any(b >= 0 and b not in consts[1] and (a, b) not in live for a, b in pairs):
            continue
        try:
            alone[p["index"]] = _OpAlone(
                _one_op_model(fbs[0], f["index"], [a for a, _ in live]),
                _one_op_model(fbs[1], p["index"], [b for _, b in live]),
                [(a, q._get_tensor_details(b, 0)) for a, b in live])  # noqa: SLF001
        except (RuntimeError, ValueError):  # an op that needs more than its tensors (control
            continue  # flow, variables): its `added` falls back to the difference of ratios
    return alone


def _one_op_model(fb: Any, index: int, inputs: list[int]) -> bytes:
    """A .tflite holding operator `index` of `fb` (a ModelT), its tensors and constants only,
    with `inputs` (tensor indices of fb) as the model's inputs."""
    import copy

    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    sub, op = fb.subgraphs[0], copy.copy(fb.subgraphs[0].operators[index])
    model, graph, new = schema.ModelT(), schema.SubGraphT(), {}
    model.version, model.operatorCodes, model.buffers = fb.version, fb.operatorCodes, \
        [schema.BufferT()]
    graph.tensors = []

    def take(i: int) -> int:
        if i < 0:
            return i
        if i not in new:
            tensor = copy.copy(sub.tensors[i])
            model.buffers.append(fb.buffers[tensor.buffer])
            tensor.buffer = len(model.buffers) - 1
            new[i] = len(graph.tensors)
            graph.tensors.append(tensor)
        return new[i]

    op.inputs = np.array([take(int(i)) for i in op.inputs], np.int32)
    op.outputs = np.array([take(int(i)) for i in op.outputs], np.int32)
    op.intermediates = None
    graph.operators = [op]
    graph.inputs = np.array([new[i] for i in inputs], np.int32)
    graph.outputs = op.outputs
    model.subgraphs = [graph]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _match(ref: Any, q: Any) -> tuple[dict[int, tuple[int, dict]], list[str]]:
    """{int8 tensor index: (float tensor index, int8 tensor detail)} for the model inputs and
    every op output of the int8 file, in graph order; and the names left unmatched."""
    by_name = {d["name"]: d for d in ref.get_tensor_details()}
    details = {d["index"]: d for d in q.get_tensor_details()}
    ops = q._get_ops_details()  # noqa: SLF001 - the only op listing in the Python API
    order = [d["index"] for d in q.get_input_details()]
    order += [int(o) for op in ops for o in op["outputs"] if int(o) not in order]
    found = {t: by_name[details[t]["name"]]["index"] for t in order
             if t in details and details[t]["name"] in by_name}
    for op in ops + ops[::-1]:  # through QUANTIZE / DEQUANTIZE, forwards then backwards
        if op["op_name"] in _PASS_THROUGH:
            src, dst = int(op["inputs"][0]), int(op["outputs"][0])
            if src in found and dst not in found:
                found[dst] = found[src]
            elif dst in found and src not in found:
                found[src] = found[dst]
    shapes = {d["index"]: tuple(d["shape"]) for d in ref.get_tensor_details()}
    tracked, unmatched = {}, []
    for t in order:
        d = details.get(t)
        if d is None or np.dtype(d["dtype"]) not in _COMPARED:
            continue  # int32 indices, shapes and the like carry no quantisation noise
        if t in found and shapes[found[t]] == tuple(d["shape"]):
            tracked[t] = (found[t], d)
        else:
            unmatched.append(d["name"])
    return tracked, unmatched


def _layer_names(model: Any, sample: list[np.ndarray], tracked: dict,
                 first: dict[int, np.ndarray]) -> dict[int, str]:
    """The Keras layer each tracked tensor is the output of (see the module docstring)."""
    outputs = _keras_outputs(model, sample)
    order = list(outputs)
    names = {}
    for t, (_, detail) in tracked.items():
        scopes = _scope_names(detail["name"])
        by_name = [n for n in order if any(_same_scope(n, s) for s in scopes)]
        by_value = [n for n in order if _equal(outputs[n], first[t])]
        both = [n for n in by_value if n in by_name]
        if both or by_value:
            names[t] = (both or by_value)[-1]
        elif by_name:
            names[t] = max(by_name, key=len)
    return names


def _keras_outputs(model: Any, sample: list[np.ndarray]) -> dict[str, np.ndarray]:
    """{layer name: output on `sample`} for the model's inputs and every layer called once
    (a shared layer has no single output; its tensors are named from their scope)."""
    api = _keras_api(model)
    values: dict[str, np.ndarray] = {}
    for t, x in zip(model.inputs, sample):
        history = t._keras_history  # noqa: SLF001 - the input's layer, in both Keras APIs
        layer = getattr(history, "operation", None) or history.layer
        values[layer.name] = np.asarray(x)
    taps = {}
    for layer in model.layers:
        try:
            out = layer.output
        except (AttributeError, ValueError):  # called several times, or never
            continue
        if not isinstance(out, (list, tuple)) and layer.name not in values:
            taps[layer.name] = out
    if taps:
        tap = api.Model(model.inputs, list(taps.values()))
        for name, v in zip(taps, predict_outputs(tap, list(sample))):
            values[name] = v
    return values


def _keras_api(model: Any) -> Any:
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def _scope_names(tensor: str) -> set[str]:
    return {seg for part in tensor.split(";") for seg in part.split("/")}


def _same_scope(layer: str, segment: str) -> bool:
    return segment == layer or re.fullmatch(re.escape(layer) + r"_\d+", segment) is not None


def _scope(tensor: str) -> str:
    """A tensor's first op's scope without the model's ("functional_1/dense_1/MatMul" ->
    "dense_1/MatMul"): the label of a tensor no Keras layer could be matched to."""
    parts = tensor.split(";")[0].split("/")
    return "/".join(parts[1:]) if len(parts) > 1 else parts[0]


def _equal(keras_value: np.ndarray, tflite_value: np.ndarray) -> bool:
    a, b = np.asarray(keras_value, np.float64), np.asarray(tflite_value, np.float64)
    if a.shape != b.shape or a.size == 0:
        return False
    return float(np.max(np.abs(a - b))) <= _SAME * max(float(np.max(np.abs(a))), 1e-12)


class _Stats:
    """Running sums over samples of a reference r and a value q: per channel (last axis) the
    signal sum(r^2) and noise sum((q - r)^2), and <r, q> and sum(q^2) for the cosine."""

    def __init__(self) -> None:
        self.signal: np.ndarray | None = None
        self.noise: np.ndarray | None = None
        self.dot = self.q2 = 0.0

    def add(self, r: np.ndarray, q: np.ndarray) -> None:
        r = np.asarray(r, np.float64)
        q = np.asarray(q, np.float64)
        channels = r.shape[-1] if r.ndim else 1
        r2, q2 = r.reshape(-1, channels), q.reshape(-1, channels)
        signal, noise = (r2 ** 2).sum(0), ((q2 - r2) ** 2).sum(0)
        self.signal = signal if self.signal is None else self.signal + signal
        self.noise = noise if self.noise is None else self.noise + noise
        self.dot += float((r * q).sum())
        self.q2 += float((q ** 2).sum())

    def sqnr_db(self) -> float:
        return _db(_ratio(float(self.noise.sum()), float(self.signal.sum())))

    def cosine(self) -> float:
        norms = math.sqrt(float(self.signal.sum()) * self.q2)
        if norms == 0:
            return 1.0 if self.signal.sum() == self.q2 == 0 else 0.0
        return self.dot / norms

    def channel_nsr(self, signal: _Stats | None = None) -> float:
        """Mean over the channels that carry any signal of noise / signal, each signal floored
        at _QUIET of the median channel's; `signal`: take it from those stats instead."""
        power = (signal or self).signal
        live = power > 0
        if not live.any():
            return 0.0
        floor = _QUIET * float(np.median(power[live]))
        return float(np.mean(self.noise[live] / np.maximum(power[live], floor)))


def _ratio(noise: float, signal: float) -> float:
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)


def _db(nsr: float) -> float:
    return math.inf if nsr == 0 else -10.0 * math.log10(nsr)


def _capped(db: float, cap: float = 80.0) -> float:
    return min(db, cap)


def _label(row: dict) -> str:
    return f"{row['layer']} ({row['op']})"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
