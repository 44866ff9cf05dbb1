"""SvdSpatial: exact at full rank for every stride/padding, rank by energy, declines, accuracy."""

import keras
import numpy as np
import pytest

import kopt
from kopt.flows.data import load_digits
from kopt.rewriting import Match, max_relative_error
from kopt.testing import check_rule, model_inputs, outputs, randomize_weights
from rewrites.svd_spatial import SvdSpatial, factor, unfold


def _conv_model(shape=(11, 13, 6), filters=8, name="c", **conv):
    x = keras.Input(shape)
    y = keras.layers.Conv2D(filters, name=name, **conv)(x)
    return randomize_weights(keras.Model(x, y), all_weights=True)


def _error(model, g, batch=4):
    x = model_inputs(model, batch=batch)
    return max_relative_error(outputs(model, x), outputs(kopt.to_keras(g), x))


def test_unfold_and_factor_index_order(rng):
    w = rng.normal(size=(3, 5, 4, 6))
    m = unfold(w)
    assert m.shape == (12, 30) and m[2 * 4 + 1, 3 * 6 + 5] == w[2, 3, 1, 5]
    v, h = factor(w, min(m.shape))
    assert v.shape == (3, 1, 4, 12) and h.shape == (1, 5, 12, 6)
    np.testing.assert_allclose(np.einsum("icr,jrn->ijcn", v[:, 0], h[0]), w, atol=1e-12)


CASES = [(3, 1, "same"), (3, 2, "same"), (5, 1, "same"), (5, 2, "same"),
         (3, 1, "valid"), (3, 2, "valid"), (5, 1, "valid"), (5, 2, "valid"),
         ((4, 4), 2, "same"), ((3, 5), (2, 1), "same"), (3, 3, "same")]


@pytest.mark.parametrize("size", [(11, 13), (12, 12)])
@pytest.mark.parametrize("kernel,strides,padding", CASES)
def test_full_rank_reproduces_conv(kernel, strides, padding, size):
    # TF pads "same" per axis (total (ceil(n/s)-1)*s + k - n, the extra pixel after), so the
    # (kh, 1) conv pads rows exactly as the k x k conv does, the (1, kw) conv columns; zero
    # columns stay zero through the bias-free first conv. Every case here is exact: none to
    # decline. Full rank saves nothing, so apply() is called past reject() to prove the maths.
    model = _conv_model(size + (6,), kernel_size=kernel, strides=strides, padding=padding,
                        activation="relu")
    g = kopt.from_keras(model)
    rule = SvdSpatial(energy=1.0)
    assert "would not save parameters" in rule.reject(g, Match(node=g["c"]))
    rule.apply(g, Match(node=g["c"]))
    g.lint()
    v, h = g.nodes_of("Conv2D")
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    assert (v.name, h.name) == ("c_v", "c_h")
    assert v.weights["kernel"].shape == (kh, 1, 6, min(kh * 6, kw * 8))
    assert not v.config["use_bias"] and v.activation == "linear" and h.activation == "relu"
    assert h.output_shape == model.output_shape
    assert _error(model, g) < 1e-5


def _separable_kernel(rng, k=3, c=16, n=32, terms=2):
    """sum over t of a_t[i, c] b_t[j, n]: rank `terms` once unfolded to (k*C, k*N)."""
    w = sum(np.einsum("ic,jn->ijcn", rng.normal(size=(k, c)), rng.normal(size=(k, n)))
            for _ in range(terms))
    return (w / np.sqrt(k * c * terms)).astype("float32")


def test_rank_two_kernel_reproduced_and_smaller(rng):
    model = _conv_model((10, 10, 16), 32, kernel_size=3, padding="same", activation="relu")
    layer = model.get_layer("c")
    layer.set_weights([_separable_kernel(rng), layer.get_weights()[1]])
    g0 = kopt.from_keras(model)
    r = check_rule(model, SvdSpatial(energy=0.999), applied={"svd_spatial": 1},
                   randomize=False, x=model_inputs(model, batch=4))
    g, report = r.graph, r.report
    v, h = g.nodes_of("Conv2D")
    assert v.config["filters"] == 2 and v.config["kernel_size"] == (3, 1)
    assert h.config["kernel_size"] == (1, 3) and h.config["filters"] == 32
    params, macs = (g0.count_params(), g.count_params()), (g0.count_macs(), g.count_macs())
    print(f"rank 2: params {params[0]} -> {params[1]}, MACs {macs[0]} -> {macs[1]}")
    assert params == (3 * 3 * 16 * 32 + 32, 2 * (3 * 16 + 3 * 32) + 32)
    assert macs[1] < macs[0] / 10
    print(f"rank 2 relative error {r.error:.2e}")
    assert r.error < 1e-5
    # fixed point: the (3, 1) and (1, 3) factors are never factored again
    reasons = {d.nodes[0]: d.reason for d in report.declined}
    assert "kernel is 3x1" in reasons["c_v"] and "kernel is 1x3" in reasons["c_h"]
    check_rule(r.model, SvdSpatial(energy=0.5), applied=0, randomize=False)


def test_rank_by_ratio_and_energy(rng):
    w = _separable_kernel(rng, terms=3)
    assert SvdSpatial(energy=0.999).rank(w) == 3
    assert SvdSpatial(energy=1e-6).rank(w) == 1
    assert SvdSpatial(ratio=0.25).rank(w) == int(0.25 * 4608 / (48 + 96))


def test_declines_with_reasons():
    x, mono = keras.Input((12, 12, 16)), keras.Input((12, 12, 1))
    a = keras.layers.Conv2D(16, 1, name="pointwise")(x)
    b = keras.layers.Conv2D(16, 3, dilation_rate=2, padding="same", name="dilated")(a)
    c = keras.layers.Conv2D(16, 3, groups=4, padding="same", name="grouped")(b)
    d = keras.layers.Conv2D(16, 3, padding="same", name="full")(c)  # random: flat spectrum
    e = keras.layers.Conv2D(4, 3, padding="same", name="tiny")(mono)  # 36 weights
    shared = keras.layers.Conv2D(16, 3, padding="same", name="shared")
    y = keras.layers.Concatenate()([shared(d), shared(d), e])
    model = randomize_weights(keras.Model([x, mono], y), all_weights=True)
    report = check_rule(model, SvdSpatial(energy=0.9), applied=0, randomize=False,
                        declined="shared").report
    reasons = {n: report.why(n)[0].reason for n in
               ("pointwise", "dilated", "grouped", "full", "tiny")}
    assert "kernel is 1x1" in reasons["pointwise"]
    assert "dilated" in reasons["dilated"]
    assert "grouped" in reasons["grouped"]
    assert "would not save parameters" in reasons["full"]
    assert "min_size" in reasons["tiny"]
    for name, why in reasons.items():
        print(f"{name}: {why}")


def test_declines_when_macs_grow():
    # a wide input, stride 4 across columns: the (5, 1) conv runs at every input column, so
    # the factors cost more MACs than the conv even at a rank that halves the parameters
    model = _conv_model((8, 64, 16), 16, kernel_size=5, strides=(1, 4), padding="same")
    report = check_rule(model, SvdSpatial(ratio=0.5), applied=0, randomize=False).report
    assert "not MACs" in report.why("c")[0].reason


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def test_accuracy_on_digits_after_retrain():
    keras.utils.set_random_seed(0)
    x, y, xt, yt = load_digits(size=16)
    model = keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    before = _accuracy(model, xt, yt)
    g0 = kopt.from_keras(model)
    # two epochs leave conv2's unfolded (48 x 96) spectrum flat: 95% of its energy needs rank
    # 34, past the break-even rank 32 (r * 144 < 4608), so energy 0.95 declines here
    report = check_rule(model, SvdSpatial(energy=0.95, min_size=1000), applied=0,
                        randomize=False).report
    assert "would not save parameters" in report.why("conv2")[0].reason
    r = check_rule(model, SvdSpatial(energy=0.8, min_size=1000),  # conv1 is 144 weights
                   applied={"svd_spatial": 1}, randomize=False)
    g, report = r.graph, r.report
    assert report.applied[0].nodes == ["conv2"]
    assert "min_size" in report.why("conv1")[0].reason
    small = r.model
    factored = _accuracy(small, xt, yt)
    kopt.retrain(small, teacher=model, data=(x, y), epochs=2)
    after = _accuracy(small, xt, yt)
    control = keras.models.clone_model(model)  # the same retraining without the rewrite
    control.set_weights(model.get_weights())
    kopt.retrain(control, teacher=model, data=(x, y), epochs=2)
    rank = g["conv2_v"].config["filters"]
    print(f"conv2 rank {rank}; params {g0.count_params()} -> {g.count_params()}, "
          f"MACs {g0.count_macs()} -> {g.count_macs()}; test accuracy {before:.4f} -> "
          f"{factored:.4f} (factored) -> {after:.4f} (retrained; unfactored control retrained "
          f"the same way {_accuracy(control, xt, yt):.4f})")
    assert g.count_params() < g0.count_params() and g.count_macs() < g0.count_macs()
    assert before > 0.8
    assert after >= before - 0.02
