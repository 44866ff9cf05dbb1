"""Channel dependency groups: which weights must lose channel c together.

Every channels-last tensor gets a *channel map*: for each position along its last axis, the
channel atom `(source, index)` it carries, or None when no prunable op chose it (a model input,
an opaque layer). Sources are ops whose output width is free (Conv with groups=1, Dense); their
output map is fresh atoms. Elementwise ops, BN, pools, dropout, padding and depthwise convs pass
the map through (a depth multiplier m repeats each atom m times); Concatenate concatenates the
maps (so a pruned channel lands at its offset in the concat); Flatten repeats the map H*W times
(Dense row (h*W + w)*C + c reads atom map[c]); Add/Multiply/... unite the atoms at each position
(every branch must drop the same channels). Atoms united this way form one channel of a group;
a group is a connected set of sources. A group that reaches a model output, an opaque layer or
a position without an atom is frozen, with the reason.

Removing a channel removes every position holding one of its atoms from every tensor map: the
source's kernel columns and bias, the BN/depthwise per-channel weights, and the input rows of
every Conv/Dense that reads the tensor. prune_group() recomputes the maps and slices each node
by them, so every member stays consistent. Indices change after pruning: recompute the groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from kopt.errors import KoptError
from kopt.ir import Graph, Node
from kopt.ir.ops import CONV_OPS, KINDS, channels_last, last_axis


Atom = tuple[str, int]
CMap = list  # list[Atom | None] along the last axis, or None when unknown

SOURCES = CONV_OPS | {"Dense"}
PASS = (KINDS["pool"] | {"BatchNormalization", "ReLU", "LeakyReLU", "ELU", "Activation",
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
        "DepthwiseConv1D", "DepthwiseConv2D", "ZeroPadding1D", "ZeroPadding2D",
        "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D",
        "UpSampling2D", "UpSampling3D"})
ELEMENTWISE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


@dataclass
class Group:
    """Channels that must be removed together; channel i is the atom set `channels[i]`."""

    sources: list[str]
    channels: list[list[Atom]]
    members: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def prunable(self) -> bool:
        return self.reason is None

    @property
    def key(self) -> str:
        return self.sources[0]

    def __len__(self) -> int:
        return len(self.channels)


class _Atoms:
    """Union-find over channel atoms; a frozen set remembers why it may not be pruned."""

    def __init__(self) -> None:
        self.parent: dict[Atom, Atom] = {}
        self.frozen: dict[Atom, str] = {}

    def find(self, a: Atom) -> Atom:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: Atom, b: Atom) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.frozen:
                self.frozen.setdefault(ra, self.frozen.pop(rb))

    def freeze(self, cmap: CMap | None, reason: str) -> None:
        for a in cmap or []:
            if a is not None:
                self.frozen.setdefault(self.find(a), reason)


def _is_source(g: Graph, node: Node) -> bool:
    return (node.op in SOURCES and channels_last(node) and node.config.get("groups", 1) == 1
            and not g.is_shared(node))


def _is_pass(g: Graph, node: Node) -> bool:
    if node.op not in PASS or g.is_shared(node) or not channels_last(node):
        return False
    if node.op == "Activation" and node.activation == "softmax":
        return False
    if node.op == "BatchNormalization":
        return last_axis(node.config, len(node.output_shape))
    return True


def channel_maps(g: Graph) -> tuple[dict[tuple[str, int], CMap | None], _Atoms]:
    """The channel map of every tensor (node, port) and the atom equivalences."""
    maps: dict[tuple[str, int], CMap | None] = {}
    atoms = _Atoms()
    for node in g.topological():
        ins = [maps.get((s, p)) for s, p, _ in g.in_edges(node.name)]
        shapes = node.output_shapes
        out: CMap | None = None
        if node.op == "InputLayer":
            out = _unknown(shapes[0])
        elif _is_source(g, node):
            out = [(node.name, i) for i in range(shapes[0][-1])]
            if node.activation == "softmax":
                atoms.freeze(out, f"'{node.name}' normalises across its channels (softmax)")
        elif _is_pass(g, node) and len(ins) == 1 and ins[0] is not None:
            mult = node.config.get("depth_multiplier", 1) if "Depthwise" in node.op else 1
            out = [a for a in ins[0] for _ in range(mult)]
        elif node.op == "Flatten" and ins[0] is not None and channels_last(node) \
                and None not in shapes[0][1:]:
            out = ins[0] * (shapes[0][-1] // max(1, len(ins[0])))
            if len(out) != shapes[0][-1]:
                out = None
        elif node.op == "Concatenate" and node.config.get("axis") in (-1, len(shapes[0]) - 1) \
                and all(m is not None for m in ins):
            out = [a for m in ins for a in m]
        elif node.op in ELEMENTWISE and ins and all(m is not None and len(m) == len(ins[0])
                                                    for m in ins):
            out = _unite(atoms, ins, node)
        if out is None:  # an op kopt cannot prune through: what it reads stays
            for m in ins:
                atoms.freeze(m, f"read by '{node.name}' ({node.op}), which kopt cannot prune "
                                "through")
            out = _unknown(shapes[0]) if shapes else None
        maps[(node.name, 0)] = out
        for p in range(1, len(shapes)):
            maps[(node.name, p)] = _unknown(shapes[p])
    for name, port in g.outputs:
        atoms.freeze(maps.get((name, port)), f"reaches model output '{name}'")
    return maps, atoms


def _unknown(shape: tuple) -> CMap | None:
    return [None] * shape[-1] if shape and shape[-1] is not None else None


def _unite(atoms: _Atoms, ins: list[CMap], node: Node) -> CMap:
    for pos in range(len(ins[0])):
        column = [m[pos] for m in ins]
        known = [a for a in column if a is not None]
        if len(known) < len(column):
            atoms.freeze(known, f"'{node.name}' ({node.op}) combines them with channels kopt "
                                "cannot prune")
        for a in known[1:]:
            atoms.union(known[0], a)
    return list(ins[0])


def channel_groups(g: Graph) -> list[Group]:
    """Every source's channel group (prunable or not, with the reason), in graph order."""
    maps, atoms = channel_maps(g)
    classes: dict[Atom, list[Atom]] = {}
    for node in g.topological():
        if _is_source(g, node):
            for i in range(node.output_shapes[0][-1]):
                classes.setdefault(atoms.find((node.name, i)), []).append((node.name, i))
    joined = nx.Graph()  # sources sharing a channel class are one group
    for members in classes.values():
        srcs = list(dict.fromkeys(s for s, _ in members))
        joined.add_nodes_from(srcs)
        joined.add_edges_from(zip(srcs, srcs[1:], strict=False))
    group_of = {s: i for i, comp in enumerate(nx.connected_components(joined)) for s in comp}
    by_group: dict[int, list[Atom]] = {}
    for root, members in classes.items():
        by_group.setdefault(group_of[members[0][0]], []).append(root)
    groups = []
    for roots in by_group.values():
        chans = [classes[r] for r in roots]
        sources = list(dict.fromkeys(s for c in chans for s, _ in c))
        reasons = [atoms.frozen[r] for r in roots if r in atoms.frozen]
        members = [n.name for n in g.topological() if any(
            a is not None and a[0] in sources for s, p, _ in g.in_edges(n.name) + [(n.name, 0, 0)]
            for a in maps.get((s, p)) or [])]
        groups.append(Group(sources, chans, members,
                            reasons[0] if reasons else None))
    return groups


def prune_group(g: Graph, group: Group, keep_indices: list[int] | np.ndarray) -> None:
    """Keep only channels `keep_indices` of `group`, in every node the group touches."""
    keep = sorted(set(int(i) for i in keep_indices))
    if not group.prunable:
        raise KoptError(f"group of '{group.key}' cannot be pruned: {group.reason}")
    if not keep:
        raise KoptError(f"refusing to prune every channel of the group of '{group.key}': keep at "
                        "least one")
    if keep[0] < 0 or keep[-1] >= len(group):
        raise KoptError(f"keep indices out of range for the group of '{group.key}' "
                        f"({len(group)} channels)")
    removed = {a for i in set(range(len(group))) - set(keep) for a in group.channels[i]}
    maps, _ = channel_maps(g)

    def mask(cmap: CMap | None) -> np.ndarray | None:
        if cmap is None or not any(a in removed for a in cmap):
            return None
        return np.array([a not in removed for a in cmap])

    for node in g.topological():
        out_mask = mask(maps.get((node.name, 0)))
        in_edges = g.in_edges(node.name)
        in_mask = mask(maps.get(in_edges[0][:2])) if len(in_edges) == 1 else None
        slice_weights(node, in_mask, out_mask)
        if out_mask is not None:
            node.output_shapes[0] = tuple(node.output_shapes[0][:-1]) + (int(out_mask.sum()),)


def slice_weights(node: Node, in_mask: np.ndarray | None, out_mask: np.ndarray | None) -> None:
    """Keep the input channels `in_mask` and output channels `out_mask` (boolean, None for all)
    in one node's weights and config. prune_group calls it for every member of a group; the
    latency model calls it to narrow a standalone conv group for its channel sweep."""
    w, cfg = node.weights, node.config
    if node.op in SOURCES:
        if in_mask is not None:
            w["kernel"] = w["kernel"][..., in_mask, :]
        if out_mask is not None:
            w["kernel"] = w["kernel"][..., out_mask]
            if "bias" in w:
                w["bias"] = w["bias"][out_mask]
            cfg["units" if node.op == "Dense" else "filters"] = int(out_mask.sum())
    elif "Depthwise" in node.op and in_mask is not None:
        w["kernel"] = w["kernel"][..., in_mask, :]
        if "bias" in w:
            w["bias"] = w["bias"][out_mask]
    elif node.op == "BatchNormalization" and out_mask is not None:
        for k in list(w):
            w[k] = w[k][out_mask]
