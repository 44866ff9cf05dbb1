"""The IR graph: a networkx.MultiDiGraph of ops (nodes) and tensors (edges).

Rules read and change models through the few queries here, so that the bookkeeping that is easy
to get wrong (ports, graph outputs, shared layers) lives in one place.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator

import networkx as nx

from kopt.errors import GraphLintError, KoptError
from kopt.ir.cost import node_macs
from kopt.ir.lint import check_weight_shapes
from kopt.ir.node import Node
from kopt.ir.ops import category


class Graph:
    """A model as a graph. Edge data: `src_port` (output index) and `dst_port` (input index)."""

    def __init__(self, name: str = "model"):
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.inputs: list[str] = []
        self.outputs: list[tuple[str, int]] = []
        self._order = itertools.count()

    # ---- construction -------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        if node.name in self.nx:
            raise GraphLintError(f"node name '{node.name}' is already in the graph")
        self.nx.add_node(node.name, node=node, order=next(self._order))
        return node

    def connect(self, src: str, dst: str, src_port: int = 0, dst_port: int = 0) -> None:
        self.nx.add_edge(src, dst, src_port=src_port, dst_port=dst_port)

    def next_order(self) -> int:
        """A mark: nodes added after it are returned by added_since(mark)."""
        return next(self._order)

    def added_since(self, mark: int) -> list[str]:
        return [n for n, o in self.nx.nodes(data="order") if o > mark]

    def unique_name(self, base: str) -> str:
        if base not in self.nx:
            return base
        for i in itertools.count(1):
            if f"{base}_{i}" not in self.nx:
                return f"{base}_{i}"
        raise AssertionError("unreachable")

    # ---- queries ------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        try:
            return self.nx.nodes[name]["node"]
        except KeyError:
            raise KoptError(f"no node named '{name}' in graph '{self.name}'") from None

    def __contains__(self, name: str) -> bool:
        return name in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.topological())

    def topological(self) -> list[Node]:
        """Nodes in a deterministic topological order (insertion order breaks ties)."""
        order = nx.get_node_attributes(self.nx, "order")
        names = nx.lexicographical_topological_sort(self.nx, key=order.__getitem__)
        return [self[n] for n in names]

    def nodes_of(self, *ops: str) -> list[Node]:
        return [n for n in self.topological() if n.op in ops]

    def in_edges(self, name: str) -> list[tuple[str, int, int]]:
        """(src, src_port, dst_port) for every input of `name`, ordered by dst_port."""
        edges = [(s, d["src_port"], d["dst_port"]) for s, _, d in self.nx.in_edges(name, data=True)]
        return sorted(edges, key=lambda e: e[2])

    def out_edges(self, name: str) -> list[tuple[str, int, int]]:
        """(dst, src_port, dst_port) for every reader of an output of `name`."""
        edges = [(t, d["src_port"], d["dst_port"])
                 for _, t, d in self.nx.out_edges(name, data=True)]
        order = nx.get_node_attributes(self.nx, "order")
        return sorted(edges, key=lambda e: (order[e[0]], e[2]))

    def producers(self, name: str) -> list[Node]:
        return [self[s] for s, _, _ in self.in_edges(name)]

    def input_shapes(self, name: str) -> list[tuple]:
        return [self[s].output_shapes[p] for s, p, _ in self.in_edges(name)]

    def single_producer(self, name: str) -> Node | None:
        edges = self.in_edges(name)
        return self[edges[0][0]] if len(edges) == 1 else None

    def is_output(self, name: str) -> bool:
        return any(n == name for n, _ in self.outputs)

    def only_consumer(self, name: str) -> Node | None:
        """The one node reading `name`'s output, if exactly one edge reads it and it is not a
        model output; rules that fuse a node into its reader need this to be true."""
        edges = self.out_edges(name)
        if len(edges) != 1 or self.is_output(name):
            return None
        return self[edges[0][0]]

    def is_shared(self, node: Node) -> bool:
        """True if the node's Keras layer is called elsewhere too (rules must not change it)."""
        if node.shared_key is None:  # the frontend keys every call of a layer called twice
            return False
        return sum(1 for n in self.nx.nodes if self[n].shared_key == node.shared_key) > 1

    # ---- edits --------------------------------------------------------------------------
    def rewire(self, old: str, new: str, port_map: dict[int, int] | None = None) -> None:
        """Move every reader (and graph output) of `old`'s outputs onto `new`."""
        for dst, sp, dp in self.out_edges(old):
            np_ = port_map.get(sp, sp) if port_map else sp
            self._remove_edge(old, dst, sp, dp)
            self.connect(new, dst, np_, dp)
        self.outputs = [
            (new, port_map.get(p, p) if port_map else p) if n == old else (n, p)
            for n, p in self.outputs
        ]

    def remove(self, name: str) -> None:
        if self.out_edges(name) or self.is_output(name):
            raise GraphLintError(f"cannot remove '{name}': its output is still read")
        if name in self.inputs:
            raise GraphLintError(f"cannot remove model input '{name}'")
        self.nx.remove_node(name)

    def bypass(self, name: str) -> None:
        """Drop a one-input node, connecting its producer straight to its readers."""
        edges = self.in_edges(name)
        if len(edges) != 1:
            raise GraphLintError(f"cannot bypass '{name}': it has {len(edges)} inputs")
        src, sp, _ = edges[0]
        for dst, _, dp in self.out_edges(name):
            self.connect(src, dst, sp, dp)
        self.outputs = [(src, sp) if n == name else (n, p) for n, p in self.outputs]
        self.nx.remove_node(name)

    def replace(self, old: Iterable[str], new: Node, inputs: list[tuple[str, int]],
                output_of: str) -> Node:
        """Replace the connected nodes `old` by `new`, which reads `inputs` (src, port) and
        takes over the outputs of `output_of`. No other node in `old` may be read outside."""
        old = list(old)
        for name in old:
            if name == output_of:
                continue
            outside = [d for d, _, _ in self.out_edges(name) if d not in old]
            if outside or self.is_output(name):
                raise GraphLintError(f"cannot replace '{name}': its output is read by {outside}")
        self.add(new)
        for port, (src, sp) in enumerate(inputs):
            self.connect(src, new.name, sp, port)
        self.rewire(output_of, new.name)
        for name in old:
            self.nx.remove_node(name)
        return new

    def set_inputs(self, name: str, inputs: list[tuple[str, int]]) -> None:
        """Make `name` read exactly `inputs` (src, port), on ports 0..n-1 in that order."""
        for src, sp, dp in self.in_edges(name):
            self._remove_edge(src, name, sp, dp)
        for port, (src, sp) in enumerate(inputs):
            self.connect(src, name, sp, port)

    def insert_after(self, name: str, new: Node, port: int = 0) -> Node:
        """Put a one-input node between `name`'s output `port` and all of its readers."""
        self.add(new)
        for dst, sp, dp in self.out_edges(name):
            if sp == port:
                self._remove_edge(name, dst, sp, dp)
                self.connect(new.name, dst, 0, dp)
        self.outputs = [(new.name, 0) if (n, p) == (name, port) else (n, p)
                        for n, p in self.outputs]
        self.connect(name, new.name, port, 0)
        return new

    def _remove_edge(self, src: str, dst: str, sp: int, dp: int) -> None:
        for key, d in list(self.nx.get_edge_data(src, dst).items()):
            if d["src_port"] == sp and d["dst_port"] == dp:
                self.nx.remove_edge(src, dst, key)
                return
        raise GraphLintError(f"no edge {src}:{sp} -> {dst}:{dp}")

    def copy(self) -> Graph:
        g = Graph(self.name)
        g._order = itertools.count(next(copy.copy(self._order)))
        for name, data in self.nx.nodes(data=True):
            g.nx.add_node(name, node=data["node"].copy(), order=data["order"])
        for s, t, d in self.nx.edges(data=True):
            g.nx.add_edge(s, t, **d)
        g.inputs, g.outputs = list(self.inputs), list(self.outputs)
        return g

    # ---- cost model ---------------------------------------------------------------------
    def count_params(self) -> int:
        """Parameters as Keras counts them (trainable and not), shared layers counted once."""
        seen, total = set(), 0
        for node in self.topological():
            key = node.shared_key or node.name
            if key not in seen:
                seen.add(key)
                total += node.weight_count()
        return total

    def count_macs(self) -> int:
        """Multiply-accumulates of the tensor ops at the model's input shape, batch 1."""
        return int(sum(node_macs(self, n) for n in self.topological()))

    def lint(self) -> None:
        """Raise GraphLintError if an invariant is broken; cheap enough to run after each rule."""
        if not nx.is_directed_acyclic_graph(self.nx):
            raise GraphLintError("graph has a cycle")
        for node in self.topological():
            ports = [dp for _, _, dp in self.in_edges(node.name)]
            if ports != list(range(len(ports))):
                raise GraphLintError(f"'{node.name}': input ports {ports} are not 0..n-1")
            if node.op == "InputLayer" and node.name not in self.inputs:
                raise GraphLintError(f"'{node.name}' is an InputLayer but not a model input")
            check_weight_shapes(self, node)
        for n, p in self.outputs:
            if n not in self.nx or p >= len(self[n].output_shapes):
                raise GraphLintError(f"model output {n}:{p} does not exist")

    def summary_rows(self) -> list[dict]:
        return [
            dict(name=n.name, op=n.op, shape=_fmt_shape(n.output_shapes),
                 params=n.weight_count(), macs=int(node_macs(self, n)),
                 category=category(n.op))
            for n in self.topological()
        ]

    def __repr__(self) -> str:
        return (f"<kopt.Graph '{self.name}': {len(self)} nodes, "
                f"{self.count_params():,} params, {self.count_macs():,} MACs>")


def _fmt_shape(shapes: list[tuple]) -> str:
    parts = ["(" + ", ".join("?" if d is None else str(d) for d in s) + ")" for s in shapes]
    return parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
