"""The pass manager and the registry: rollbacks keep the report true, shared layers are declined
for every rule, approximate rules are never "verified", and the rule order is derived (and its
constraints checked)."""

import logging

import keras
import numpy as np
import pytest

import kopt
from kopt.errors import KoptError
from kopt.ir import Node
from kopt.rewriting import Match, PassManager, Rule, register, registered
from kopt.rewriting import registry as reg
from kopt.testing import check_rule
from rewrites.fuse_vertical import FuseVertical
from rewrites.remove_identity import RemoveIdentity

L = keras.layers


def _state(g):
    """Everything a graph is, comparably: nodes (op, config, meta, weights), edges, in/outputs."""
    nodes = {n.name: (n.op, n.config, n.meta, {k: (w.shape, w.tobytes())
                                                for k, w in n.weights.items()}) for n in g}
    edges = sorted((s, t, d["src_port"], d["dst_port"]) for s, t, d in g.nx.edges(data=True))
    return nodes, edges, list(g.inputs), list(g.outputs)


# ---- rollbacks --------------------------------------------------------------------------------

class _TagActivation(Rule):
    """Records each conv/dense's activation in its meta (a harmless, exact change). Re-tagging a
    node whose activation has changed since breaks the graph, as a buggy rule might: it leaves
    an InputLayer that is not a model input. So round 1 goes well; once FuseVertical has given
    the conv its ReLU, the call in round 2 fails lint."""

    name = "tag_activation"

    def matches(self, g):
        for n in g.nodes_of("Conv2D", "Dense"):
            if n.meta.get("tag") != n.activation:
                yield Match(node=n)

    def apply(self, g, m):
        if "tag" in m.node.meta:
            g.add(Node(g.unique_name("stray"), "InputLayer", {}, output_shapes=[(None, 1)]))
        m.node.meta["tag"] = m.node.activation


def _conv_relu_dense():
    x = keras.Input((6, 6, 3))
    y = L.ReLU(name="relu")(L.Conv2D(4, 3, name="conv")(x))
    return keras.Model(x, L.Dense(2, name="dense")(L.Flatten(name="flat")(y)))


def test_lint_rollback_keeps_earlier_applications_in_the_report(caplog):
    """Only the failing call is undone: the rule's round-1 applications are still in the graph,
    so they stay in the report (the old manager dropped every application of the rule)."""
    model = _conv_relu_dense()
    with caplog.at_level(logging.WARNING, logger="kopt"):
        r = check_rule(model, [_TagActivation(), FuseVertical()], rolled_back="tag_activation",
                       applied={"tag_activation": 2, "fuse_vertical": 1})
    assert "InputLayer but not a model input" in r.report.rolled_back[0][1]
    assert any("tag_activation" in rec.message and "broken graph" in rec.message
               for rec in caplog.records)
    # the state before the bad call: round 1 alone (the bad call is the first of round 2)
    before_bad, first = PassManager([_TagActivation(), FuseVertical()], verify=False,
                                    rounds=1).run(kopt.from_keras(model))
    assert not first.rolled_back
    assert [(a.rule, a.nodes) for a in r.report.applied] == \
        [(a.rule, a.nodes) for a in first.applied]
    assert [a.nodes for a in r.report.applied[:2]] == [["conv"], ["dense"]]
    assert _state(r.graph) == _state(before_bad)
    assert r.graph["conv"].meta["tag"] == "linear" and r.graph["conv"].activation == "relu"
    assert not any(n.name.startswith("stray") for n in r.graph)


class _ScaleDense(Rule):
    """Claims to be exact but doubles every Dense kernel (once each: it marks what it did)."""

    name = "scale_dense"

    def matches(self, g):
        for n in g.nodes_of("Dense"):
            if not n.meta.get("scaled"):
                yield Match(node=n)

    def apply(self, g, m):
        m.node.weights["kernel"] = m.node.weights["kernel"] * 2.0
        m.node.meta["scaled"] = True


def test_verification_rollback_keeps_the_good_rule(caplog):
    x = keras.Input((6,))
    y = L.Dense(3, name="out")(L.Dropout(0.5)(L.Dense(8, activation="relu", name="hidden")(x)))
    model = keras.Model(x, y)
    with caplog.at_level(logging.WARNING, logger="kopt"):
        r = check_rule(model, [RemoveIdentity(), _ScaleDense()], rolled_back="scale_dense",
                       applied={"remove_identity": 1})  # and the outputs are equal
    assert "outputs changed" in r.report.rolled_back[0][1]
    assert any("scale_dense" in rec.message and "rolled back" in rec.message
               for rec in caplog.records)
    assert not r.graph.nodes_of("Dropout")
    assert not any(n.meta.get("scaled") for n in r.graph)
    np.testing.assert_array_equal(r.graph["out"].weights["kernel"],
                                  model.get_layer("out").get_weights()[0])
    assert r.report.max_error <= 1e-5


# ---- shared layers ----------------------------------------------------------------------------

class _TagDense(Rule):
    """Marks every Dense node once; has no reject() of its own."""

    name = "tag_dense"

    def matches(self, g):
        for n in g.nodes_of("Dense"):
            if not n.meta.get("tagged"):
                yield Match(node=n)

    def apply(self, g, m):
        m.node.meta["tagged"] = True


class _TagDenseShared(_TagDense):
    name = "tag_dense_shared"
    changes_shared = True


def _shared_dense():
    a, b = keras.Input((5,)), keras.Input((5,))
    shared = L.Dense(3, name="shared")
    return keras.Model([a, b], [shared(a), L.Dense(2, name="own")(shared(b))])


def test_shared_layers_are_declined_for_every_rule():
    r = check_rule(_shared_dense(), _TagDense(), declined="shared layer")
    g, report = r.graph, r.report
    shared = [n.name for n in g.nodes_of("Dense") if g.is_shared(n)]
    assert len(shared) == 2
    assert [a.nodes for a in report.applied] == [["own"]]
    assert {d.nodes[0] for d in report.declined} == set(shared)
    assert all("shared" in d.reason for d in report.declined)
    assert all(not g[n].meta.get("tagged") for n in shared)


def test_a_rule_that_changes_shared_layers_is_not_declined():
    r = check_rule(_shared_dense(), _TagDenseShared(), applied=3)
    assert r.report.declined == []
    assert all(n.meta.get("tagged") for n in r.graph.nodes_of("Dense"))


# ---- approximate rules ------------------------------------------------------------------------

class _Approximate(Rule):
    name = "approximate_test_rule"
    exact = False

    def matches(self, g):
        return iter(())


def test_verifying_an_approximate_rule_is_refused():
    with pytest.raises(KoptError, match="cannot verify approximate rules"):
        PassManager([RemoveIdentity(), _Approximate()], verify=True)
    PassManager([RemoveIdentity(), _Approximate()], verify=False)  # measured by the flows


# ---- registry ---------------------------------------------------------------------------------

@pytest.fixture
def registry(monkeypatch):
    """The registry as the shipped rules leave it; rules a test registers vanish after it."""
    import rewrites  # noqa: F401  (every shipped rule registers itself)

    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    return reg._REGISTRY


EXACT_ORDER = ["remove_identity", "fold_batchnorm", "merge_branches", "pool_to_conv",
               "fuse_vertical", "fuse_horizontal"]


def test_default_exact_order(registry):
    names = [cls.name for cls in registered(exact=True)]
    assert [n for n in names if n in EXACT_ORDER] == EXACT_ORDER  # rules added later may join
    order = [cls.name for cls in registered()]
    for name, entry in registry.items():  # and every declared constraint holds
        assert all(order.index(o) < order.index(name) for o in entry.after), name
        assert all(order.index(name) < order.index(o) for o in entry.before), name
    assert all(cls.exact for cls in registered(exact=True))
    assert not any(cls.exact for cls in registered(exact=False))


def test_ordering_against_an_unknown_rule_is_an_error(registry):
    @register(exact=True, after=("no_such_rule",))
    class Orphan(_TagDense):
        name = "orphan_test_rule"

    with pytest.raises(KoptError, match="'no_such_rule', which is not a registered rule"):
        registered()


def test_an_ordering_cycle_is_an_error(registry):
    @register(exact=True, after=("cycle_b",))
    class CycleA(_TagDense):
        name = "cycle_a"

    @register(exact=True, after=("cycle_a",))
    class CycleB(_TagDense):
        name = "cycle_b"

    with pytest.raises(KoptError, match="cycle"):
        registered()


def test_two_rules_with_one_name_are_an_error(registry):
    with pytest.raises(KoptError, match="two rules are named 'fuse_vertical'"):
        @register(exact=True)
        class Impostor(_TagDense):
            name = "fuse_vertical"
