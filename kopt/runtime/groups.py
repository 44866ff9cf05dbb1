"""The parts a runtime runs as one op, cut out of a graph as standalone models.

TFLite folds BN into the conv before it and fuses ReLU into conv/add; TF's remapper does the
same on CPU. Timed alone, a BN or ReLU would pay a full pass over memory that the whole model
never pays, so the timing report and the latency model time each such *fused group* (a head op
and the BN/ReLU chain after it) as one small model with the group's real input shapes. The
key of a group is what its latency depends on (ops, configs that shape the computation, input
shapes), not its weights or layer names, so identical groups are timed once.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from kopt.ir import Graph, Node
from kopt.ir.ops import kind
from kopt.keras_io import to_keras

# Followers a runtime fuses into the op before them (by the kind of that op).
_FUSABLE = {"BatchNormalization": ("conv", "fc"), "ReLU": ("conv", "fc", "merge", "bn"),
            "Activation": ("conv", "fc", "merge", "bn")}
_FUSABLE_ACTIVATIONS = {"relu", "relu6", "linear"}
# Config entries that do not change what a layer computes at inference, or how fast.
_IGNORED = ("name", "trainable", "dtype")
_IGNORED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


def fused_group(g: Graph, head: Node) -> list[Node]:
    """`head` and the BN / ReLU chain after it that a runtime fuses into it."""
    chain = [head]
    if kind(head.op) not in ("conv", "fc", "merge", "bn"):  # a BN that no conv absorbed
        return chain  # (pre-activation BN-ReLU, after a Concatenate) still takes its ReLU
    while len(chain) < 3:
        nxt = g.only_consumer(chain[-1].name)
        if nxt is None or kind(chain[-1].op) not in _FUSABLE.get(nxt.op, ()) \
                or (nxt.op == "Activation" and nxt.activation not in _FUSABLE_ACTIVATIONS) \
                or len(g.in_edges(nxt.name)) != 1:
            break
        chain.append(nxt)
    return chain


def fused_groups(g: Graph) -> list[list[Node]]:
    """Every op of `g` except the inputs, in one fused group each, in topological order: what
    the whole model's latency is predicted as the sum of."""
    seen: set[str] = set()
    out = []
    for node in g.topological():
        if node.op == "InputLayer" or node.name in seen:
            continue
        group = fused_group(g, node)
        group = group[:next((i for i, n in enumerate(group) if n.name in seen), len(group))]
        seen.update(n.name for n in group)
        out.append(group)
    return out


def sub_graph(g: Graph, nodes: list[Node], batch: int = 1,
              weights: bool = True) -> tuple[Graph, list[tuple]]:
    """A graph computing `nodes` (a chain or one node, copied) on inputs of their real shapes,
    and those input shapes. weights=False leaves the weights out (and shares the configs, not
    to be changed): enough for group_key, and a table lookup need not copy a model's weights."""
    sub = Graph(f"t_{nodes[0].name}")
    inside = {n.name for n in nodes}
    shapes: list[tuple] = []
    for node in nodes:
        copy = node.copy() if weights else dataclasses.replace(node, weights={}, meta={})
        copy.shared_key = None
        sub.add(copy)
    for node in nodes:
        for src, sp, dp in g.in_edges(node.name):
            if src in inside:
                sub.connect(src, node.name, sp, dp)
                continue
            name = f"in_{len(shapes)}"
            shape = (batch,) + tuple(g[src].output_shapes[sp][1:])
            dtypes = g[src].output_dtypes
            sub.add(Node(name=name, op="InputLayer", config={}, output_shapes=[shape],
                         output_dtypes=[dtypes[sp] if len(dtypes) > sp else "float32"]))
            sub.inputs.append(name)
            sub.connect(name, node.name, 0, dp)
            shapes.append(shape)
    last = nodes[-1]
    sub.outputs = [(last.name, p) for p in range(max(1, len(last.output_shapes)))]
    return sub, shapes


def sub_model(g: Graph, nodes: list[Node], batch: int = 1) -> tuple[Any, list[tuple]]:
    """A Keras model computing `nodes` on inputs of their real shapes (see sub_graph)."""
    sub, shapes = sub_graph(g, nodes, batch)
    return to_keras(sub), shapes


def _config(node: Node) -> dict:
    return {k: v for k, v in node.config.items()
            if k not in _IGNORED and not k.endswith(_IGNORED_SUFFIXES)}


def group_key(sub: Graph) -> str:
    """What a standalone group's latency depends on, as a string: each op with its config
    (less names, initialisers, regularisers, constraints) and input shapes, in order."""
    parts = [[n.op, _config(n), [list(s) for s in sub.input_shapes(n.name)], repr(n.call)]
             for n in sub.topological() if n.op != "InputLayer"]
    return json.dumps(parts, sort_keys=True, default=repr, separators=(",", ":"))


def group_desc(sub: Graph) -> dict:
    """The readable columns of a standalone group: op kinds, input and output shapes, kernel,
    stride and channels in/out of its head."""
    nodes = [n for n in sub.topological() if n.op != "InputLayer"]
    head, cfg = nodes[0], nodes[0].config
    ins = [list(s) for s in sub.input_shapes(head.name)]
    return {"ops": "+".join(n.op for n in nodes), "input": ins,
            "output": list(nodes[-1].output_shape), "kernel": cfg.get("kernel_size",
                                                                     cfg.get("pool_size")),
            "stride": cfg.get("strides"),
            "channels_in": ins[0][-1] if ins and ins[0] else None,
            "channels_out": (nodes[-1].output_shape or [None])[-1]}
