"""Merge parallel linear branches that meet in one Add into a single conv (RepVGG re-param).

With stride 1, "same" padding and odd kernel sizes every branch is a correlation centred on the
same input pixel, so each branch of Add is a K x K kernel on the common input x:
    conv k x k (+ bias):  its kernel zero-padded to K x K at the centre, its bias
    identity:             1 at the centre on the diagonal (channel c -> c), bias 0
    inference BN:         s x + t  ->  s on the centre diagonal, bias t
    BN after a conv:      s * W, s * b + t
Convolution is linear in the kernel, so Add(branches) = x (*) sum(W_i) + sum(b_i). The merged
conv costs K^2 C O MACs, never more than the conv branches did, and the Add and the branch
layers disappear. A branch with an activation, a strided or "valid" (k > 1) conv, or a branch
output read elsewhere is not part of this algebra and is declined.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._conv import centre_pad, derive, kernel_bias, pair, reads_only
from rewrites._linear import bn_affine, bn_axis_is_last

Tensor = tuple[str, int]
Branch = list[Node]  # conv and/or BN, in data order, from the common input to the Add


def _peelings(g: Graph, tensor: Tensor) -> list[tuple[Tensor, Branch]]:
    """Ways to read `tensor` as ([conv] [BN]) applied to an earlier tensor, shallowest first."""
    out: list[tuple[Tensor, Branch]] = [(tensor, [])]
    for op in ("BatchNormalization", "Conv2D"):
        node = g[out[-1][0][0]]
        edges = g.in_edges(node.name)
        if node.op == op and len(edges) == 1:
            out.append(((edges[0][0], edges[0][1]), [node] + out[-1][1]))
    return out


def decompose(g: Graph, add: Node) -> tuple[Tensor, list[Branch]] | None:
    """The deepest common input of all of Add's branches and each branch's ops, or None."""
    options = [dict(_peelings(g, (s, p))) for s, p, _ in g.in_edges(add.name)]
    for tensor in reversed(list(options[0])):
        if all(tensor in o for o in options):
            return tensor, [o[tensor] for o in options]
    return None


def _conv_problem(conv: Node) -> str | None:
    cfg = conv.config
    k = pair(cfg["kernel_size"])
    if conv.activation != "linear":
        return f"branch conv '{conv.name}' has activation {conv.activation}"
    if pair(cfg.get("strides")) != (1, 1) or pair(cfg.get("dilation_rate")) != (1, 1):
        return f"branch conv '{conv.name}' is strided or dilated"
    if cfg.get("groups", 1) != 1 or not channels_last(conv):
        return f"branch conv '{conv.name}' is grouped or channels_first"
    if any(d % 2 == 0 for d in k):
        return f"branch conv '{conv.name}' has an even kernel {k}"
    if cfg.get("padding") != "same" and k != (1, 1):
        return f"branch conv '{conv.name}' uses 'valid' padding (changes the spatial size)"
    return None


def _node_problem(g: Graph, node: Node, reader: Node) -> str | None:
    if not reads_only(g, node, reader):
        return f"output of '{node.name}' is also read elsewhere"
    if node.op == "Conv2D":
        return _conv_problem(node)
    return None if bn_axis_is_last(g, node) else f"BN '{node.name}' is not on the channel axis"


@register(exact=True, after=("fold_batchnorm",))
class MergeBranches(Rule):

    def matches(self, g: Graph) -> Iterator[Match]:
        for add in g.nodes_of("Add"):
            found = decompose(g, add)
            ops = list({n.name: n for b in found[1] for n in b}.values()) if found else []
            yield Match(add=add, ops=ops)

    def reject(self, g: Graph, m: Match) -> str | None:
        found = decompose(g, m.add)
        if found is None:
            return "branches do not read one common tensor through conv/BN/identity only"
        (src, port), branches = found
        channels = g[src].output_shapes[port][-1]
        if not any(n.op == "Conv2D" for b in branches for n in b):
            return "no conv branch to merge into"
        for branch in branches:
            for node, reader in zip(branch, branch[1:] + [m.add]):
                problem = _node_problem(g, node, reader)
                if problem:
                    return problem
            if not any(n.op == "Conv2D" for n in branch) and m.add.output_shape[-1] != channels:
                return "identity/BN branch but input and output channels differ"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        (src, port), branches = decompose(g, m.add)
        convs = [n for b in branches for n in b if n.op == "Conv2D"]
        size = tuple(max(pair(c.config["kernel_size"])[i] for c in convs) for i in (0, 1))
        cin, cout = g[src].output_shapes[port][-1], m.add.output_shape[-1]
        kernel, bias = np.zeros(size + (cin, cout)), np.zeros(cout)
        for branch in branches:
            k = np.zeros(size + (cin, cout))
            k[size[0] // 2, size[1] // 2] = np.eye(cin, cout)
            b = np.zeros(cout)
            for node in branch:
                if node.op == "Conv2D":
                    k, b = kernel_bias(node)
                    k = centre_pad(k, size)
                else:
                    scale, shift = bn_affine(node)
                    k, b = k * scale, b * scale + shift
            kernel, bias = kernel + k, bias + b
        template = max(convs, key=lambda c: np.prod(pair(c.config["kernel_size"])))
        new = derive(g, template, f"{m.add.name}_merged", {"kernel": kernel, "bias": bias},
                     m.add.output_shape, kernel_size=size, filters=cout, padding="same",
                     use_bias=True, activation="linear")
        g.replace([n.name for n in m.ops] + [m.add.name], new, [(src, port)],
                  output_of=m.add.name)
