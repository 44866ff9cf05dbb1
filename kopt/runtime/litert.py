"""Running .tflite files in LiteRT (XNNPACK on by default) and listing their ops.

Callers pass and get float data; int8 (de)quantisation with each tensor's scale and zero point
is done here, so the timing report and the exporters never touch the interpreter directly.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from kopt.errors import DataError
from kopt.runtime.clock import median_ms


def op_table(flatbuffer: bytes) -> tuple[dict[str, int], dict[str, int], int]:
    """(ops by name, ops LiteRT's own kernels run by 'NAME(dtype)', count XNNPACK takes),
    measured on the interpreter LiteRTRunner builds (default XNNPACK delegate, 1 thread).

    The Python API has no execution plan, but it lists every node: the file's ops first, then
    one DELEGATE node per partition XNNPACK took, whose inputs and outputs are the partition's
    boundary tensors (the replaced ops stay listed). A partition's ops are found by walking
    back from its outputs through the ops that make them, stopping at its inputs; every op in
    no partition falls back. (An op whose output nothing reads would count as falling back;
    the converter leaves none.) This replaces a hand-written table of the ops XNNPACK takes,
    an estimate from its source that could drift from the installed delegate and could not
    see the checks it makes per node (shapes, constant weights, quantisation parameters).
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(flatbuffer), num_threads=1)
    interpreter.allocate_tensors()  # the default delegate is applied here
    nodes = interpreter._get_ops_details()  # noqa: SLF001 - the only op listing in Python
    ops = [n for n in nodes if n["op_name"] != "DELEGATE"]
    producer = {int(t): op for op in ops for t in op["outputs"]}
    taken: set[int] = set()
    for partition in (n for n in nodes if n["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in partition["inputs"]}
        todo = [int(t) for t in partition["outputs"]]
        while todo:
            op = producer.get(todo.pop())
            if op is not None and op["index"] not in taken:
                taken.add(op["index"])
                todo += [int(t) for t in op["inputs"] if int(t) not in boundary]
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    fallback = Counter(f"{op['op_name']}({_op_dtype(op, tensors)})" for op in ops
                       if op["index"] not in taken)
    return dict(Counter(op["op_name"] for op in ops)), dict(fallback), len(taken)


def _op_dtype(op: dict, tensors: dict) -> str:
    """The type an op computes in: that of its first non-constant activation input."""
    for i in list(op["inputs"]) + list(op["outputs"]):
        t = tensors.get(int(i))
        if t is not None:
            return np.dtype(t["dtype"]).name
    return "float32"


class LiteRTRunner:
    """Runs a .tflite model in LiteRT (XNNPACK on by default); callers pass and get float data,
    int8 (de)quantisation with each tensor's scale and zero point is done here."""

    def __init__(self, path_or_bytes: str | os.PathLike | bytes, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(path_or_bytes, (bytes, bytearray)):
            self.source = "<bytes>"
            self.interpreter = Interpreter(model_content=bytes(path_or_bytes), num_threads=threads)
        else:
            self.source = os.fspath(path_or_bytes)
            self.interpreter = Interpreter(model_path=self.source, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()

    def run_all(self, x: Any) -> list[np.ndarray]:
        """All outputs for input(s) x, any batch size (run one sample at a time)."""
        xs = [np.asarray(a) for a in (x if isinstance(x, (list, tuple)) else [x])]
        fixed = self.inputs[0]["shape"][0]
        if len(xs[0]) == fixed:
            return self._invoke(xs)
        per = [self._invoke([a[i:i + fixed] for a in xs]) for i in range(0, len(xs[0]), fixed)]
        return [np.concatenate(outs) for outs in zip(*per)]

    def run(self, x: Any) -> np.ndarray | list[np.ndarray]:
        outs = self.run_all(x)
        return outs[0] if len(outs) == 1 else outs

    __call__ = run

    def set_inputs(self, xs: list[np.ndarray]) -> None:
        """Put float (or integer) inputs into the interpreter, quantised where it takes int8;
        then `invoke()` runs it. Timing loops call invoke() alone."""
        if len(xs) != len(self.inputs):
            raise DataError(f"{self.source} takes {len(self.inputs)} inputs, got {len(xs)}")
        for detail, x in zip(self.inputs, xs):
            self.interpreter.set_tensor(detail["index"], quantize(x, detail))

    def invoke(self) -> None:
        self.interpreter.invoke()

    def outputs_now(self) -> list[np.ndarray]:
        """The outputs of the last invoke, dequantised to float."""
        return [dequantize(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]

    def _invoke(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        self.set_inputs(xs)
        self.invoke()
        return self.outputs_now()

    def random_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """Seeded normal inputs at the interpreter's input shapes (for timing)."""
        rng = np.random.default_rng(seed)
        return [rng.normal(0, 1, d["shape"]).astype(np.float32) for d in self.inputs]

    def latency(self, n: int = 500, warmup: int = 50) -> float:
        """Median milliseconds of one invoke at the model's (batch-1) input shape."""
        self.set_inputs(self.random_inputs())
        return median_ms(self.invoke, runs=n, warmup=warmup)


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """x in the tensor's type: int8 with its scale and zero point, or float as it is."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return np.asarray(x, dtype)
    scale, zero = detail["quantization"]
    if scale == 0:
        return np.asarray(x).astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float32) / scale + zero)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    """y back to float32 with its tensor's scale and zero point (float tensors unchanged)."""
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or scale == 0:
        return np.array(y, np.float32)
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
