"""Small graph and kernel helpers shared by the rules that build new convs from old ones.

Kernels are Keras 3 channels-last: conv (kh, kw, in, out), Dense (in, out). Arithmetic is done in
float64 and cast back once, so a merged kernel is as close to the exact sum as float32 allows.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kopt.ir import Graph, Node
from rewrites._linear import bn_axis_is_last

PER_PIXEL = {"BatchNormalization", "ReLU", "Activation", "LeakyReLU", "ELU", "Dropout"}
"""Layers that act on each pixel alone at inference (BN over the channel axis, activations,
Dropout): they commute with dropping or subsampling pixels."""

FUSABLE = {"relu", "relu6", "sigmoid", "tanh", "swish", "silu", "gelu", "elu", "selu",
           "softplus", "softsign", "hard_sigmoid", "hard_swish", "hard_silu", "mish",
           "exponential", "log_sigmoid", "softmax"}
"""Activation names every conv / dense config accepts, with the same meaning."""


def activation_name(act: Node) -> str | None:
    """The `activation` string a conv / dense config would need to compute what this ReLU or
    Activation layer does, or None if there is none (a slope, a threshold, a clip but 6)."""
    if act.op == "Activation":
        return act.activation if act.activation in FUSABLE else None
    cfg = act.config
    if cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
        return None
    return {None: "relu", 6: "relu6"}.get(cfg.get("max_value"))


def pair(value: Any) -> tuple:
    """Config values come as tuples (Keras 3) or lists (tf_keras, JSON); compare them as tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(pair(v) for v in value)
    return value


def pair2(value: Any) -> tuple[int, int]:
    """A 2-D layer's size setting (kernel, pool, strides, dilation) as a pair: Keras accepts
    and may store one int for both axes."""
    value = pair(value)
    return (value, value) if isinstance(value, int) else tuple(value)


def pool_geometry(pool: Node) -> tuple[tuple[int, int], tuple[int, int]]:
    """A 2-D pool's (size, strides) as pairs; Keras' default strides are the pool size."""
    size = pair2(pool.config["pool_size"])
    return size, pair2(pool.config.get("strides") or size)


def kernel_bias(node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) in float64; a layer without bias has a zero one."""
    kernel = np.asarray(node.weights["kernel"], np.float64)
    bias = node.weights.get("bias")
    bias = np.zeros(kernel.shape[-1]) if bias is None else np.asarray(bias, np.float64)
    return kernel, bias


def average_pool_into_conv(g: Graph, conv: Node, size: tuple[int, int], **geometry: Any) -> Node:
    """The 1x1 `conv` read after a size[0] x size[1] average pool, as one conv of that size:
    the 1x1 kernel / (k_h k_w) at every tap, the same bias; `geometry` gives the new conv's
    strides and padding (pool_to_conv: the pool's, "valid"; pool_branch_to_conv: 1, "same")."""
    kernel, bias = kernel_bias(conv)
    weights = {"kernel": np.broadcast_to(kernel / (size[0] * size[1]),
                                         size + kernel.shape[2:]).copy()}
    if conv.config.get("use_bias", True):
        weights["bias"] = bias
    return derive(g, conv, f"{conv.name}_pooled", weights, conv.output_shape, kernel_size=size,
                  dilation_rate=(1, 1), **geometry)


def centre_pad(kernel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pad a (kh, kw, in, out) kernel to `size` around its centre (odd sizes only): with
    stride 1 and "same" padding the padded kernel computes the same correlation."""
    (kh, kw), (H, W) = kernel.shape[:2], size
    top, left = (H - kh) // 2, (W - kw) // 2
    return np.pad(kernel, ((top, H - kh - top), (left, W - kw - left), (0, 0), (0, 0)))


def derive(g: Graph, template: Node, base: str, weights: dict[str, np.ndarray],
           output_shape: tuple, **config: Any) -> Node:
    """A new node of `template`'s op and config, with `config` overrides, fresh weights (cast to
    float32 in the order given: kernel before bias, as Keras creates them) and a unique name."""
    node = template.copy()
    node.name = g.unique_name(base)
    node.config.update(config)
    node.config["name"] = node.name
    node.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    node.output_shapes = [tuple(output_shape)]
    node.output_dtypes = list(template.output_dtypes[:1]) or ["float32"]
    node.call, node.shared_key, node.layer = None, None, None
    return node


def reads_only(g: Graph, node: Node, reader: Node) -> bool:
    """`node`'s output goes to `reader` over exactly one edge and is not a model output: the
    condition for folding `node` into whatever replaces `reader`."""
    consumer = g.only_consumer(node.name)
    return consumer is not None and consumer.name == reader.name


def per_pixel_chain(g: Graph, head: Node) -> list[Node]:
    """The PER_PIXEL layers after `head`, each the only reader of the one before it (and BN
    only over the last axis): what goes with a conv when its output pixels are subsampled (a
    stride) or when the conv itself is dropped."""
    chain: list[Node] = []
    node = head
    while True:
        nxt = g.only_consumer(node.name)
        if nxt is None or nxt.op not in PER_PIXEL or len(g.in_edges(nxt.name)) != 1 or (
                nxt.op == "BatchNormalization" and not bn_axis_is_last(g, nxt)):
            return chain
        chain.append(nxt)
        node = nxt


def new_node(g: Graph, base: str, make: Any, shape: tuple, dtypes: list,
             weights: dict | None = None) -> Node:
    """A node (not yet added to `g`) for the Keras layer, or Keras 3 operation, that
    `make(name=...)` builds under a fresh name from `base`: its config, `weights` as float32 in
    the order given (kernel before bias), output `shape` and `dtypes`. An operation (rsqrt) is
    an opaque node the emitter calls as it is."""
    name = g.unique_name(base)
    op = make(name=name)
    values = {k: np.asarray(v, np.float32) for k, v in (weights or {}).items()}
    if isinstance(op, keras.layers.Layer):
        return Node(name=name, op=type(op).__name__, config=op.get_config(), weights=values,
                    output_shapes=[tuple(shape)], output_dtypes=list(dtypes))
    return Node(name=name, op=f"ops.{type(op).__name__}", config={}, output_shapes=[tuple(shape)],
                output_dtypes=list(dtypes), layer_class=type(op), source="keras", layer=op)
