"""FoldRescaling: a Rescaling after a conv / dense disappears into its weights, outputs
unchanged; every near miss stays, with its reason."""

import keras
import numpy as np
import pytest

import kopt
from kopt.rewriting import registered
from kopt.testing import assert_same_function, chain, check_rule, randomize_weights
from rewrites.fold_rescaling import FoldRescaling

L = keras.layers
C = 6  # output channels of every op below


OPS = {
    "conv2d": lambda: L.Conv2D(C, 3, padding="same"),
    "conv2d_nobias": lambda: L.Conv2D(C, 3, strides=2, use_bias=False),
    "conv1d": lambda: L.Conv1D(C, 3),
    "depthwise": lambda: L.DepthwiseConv2D(3, depth_multiplier=2),  # 3 in x 2 = C out
    "separable": lambda: L.SeparableConv2D(C, 3, use_bias=False),
    "transpose": lambda: L.Conv2DTranspose(C, 3, strides=2),
    "dense": lambda: L.Dense(C),
    "dense_nobias": lambda: L.Dense(C, use_bias=False),
}
SHAPES = {"conv1d": (10, 3), "dense": (5,), "dense_nobias": (5,)}
SCALES = {  # Rescaling arguments, given a random generator
    "scalar": lambda rng: dict(scale=0.37, offset=-1.5),
    "scale_only": lambda rng: dict(scale=1 / 255),
    "per_channel": lambda rng: dict(scale=rng.uniform(-2, 2, C).astype("float32"),
                                    offset=rng.normal(0, 1, C).tolist()),
    "per_channel_rank3": lambda rng: dict(scale=rng.uniform(0.5, 2, (1, 1, C)).astype("float32"),
                                          offset=0.25),
}


@pytest.mark.parametrize("scale", sorted(SCALES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_rescaling_after_linear_op_is_folded(op, scale):
    kw = SCALES[scale](np.random.default_rng(7))
    if scale == "per_channel_rank3" and op in SHAPES:  # (1, 1, C) would add an axis there
        kw["scale"] = kw["scale"].reshape(-1)
    m = chain(SHAPES.get(op, (7, 7, 3)), OPS[op](), L.Rescaling(**kw))
    r = check_rule(m, FoldRescaling(), applied={"fold_rescaling": 1}, seed=3)
    assert not r.graph.nodes_of("Rescaling")
    lin = [n for n in r.graph if n.op != "InputLayer"][0]
    assert lin.config["use_bias"] is True and "bias" in lin.weights
    assert r.report.max_error is not None and r.report.max_error <= 1e-5


def test_relu_conv_folds_with_non_negative_scale_and_no_offset():
    scale = np.random.default_rng(7).uniform(0.1, 3, C).astype("float32")
    scale[0] = 0.0
    m = chain((7, 7, 3), L.Conv2D(C, 3, activation="relu"), L.Rescaling(scale))
    g = check_rule(m, FoldRescaling(), applied={"fold_rescaling": 1}, seed=3).graph
    assert g.nodes_of("Conv2D")[0].activation == "relu"


def test_chain_bn_rescaling_relu_becomes_one_conv():
    """The registered order: BN folds first, then the Rescaling, then the ReLU joins."""
    m = chain((7, 7, 3), L.Conv2D(C, 3, use_bias=False), L.BatchNormalization(),
               L.Rescaling(2.0, offset=0.5), L.ReLU())
    r = check_rule(m, [cls() for cls in registered(exact=True, default_only=True)], seed=3,
                   applied={"fold_batchnorm": 1, "fold_rescaling": 1, "fuse_vertical": 1})
    assert [n.op for n in r.graph] == ["InputLayer", "Conv2D"]


def test_relu_layer_between_is_fused_first_then_folded_in_round_two():
    m = chain((7, 7, 3), L.Conv2D(C, 3), L.ReLU(), L.Rescaling(0.5))
    r = check_rule(m, [cls() for cls in registered(exact=True, default_only=True)], seed=3,
                   applied={"fuse_vertical": 1, "fold_rescaling": 1},
                   declined="Rescaling follows ReLU")
    assert [n.op for n in r.graph] == ["InputLayer", "Conv2D"]


def test_registered_order():
    names = [cls.name for cls in registered(exact=True, default_only=True)]
    assert names[:3] == ["remove_identity", "fold_batchnorm", "fold_rescaling"]
    assert names.index("fold_rescaling") < names.index("fuse_vertical")


def test_kopt_optimize_runs_it():
    m = chain((7, 7, 3), L.Conv2D(C, 3), L.Rescaling(0.5, offset=1.0))
    randomize_weights(m, seed=1, all_weights=True)
    opt = kopt.Optimizer()
    out = opt.optimize(m)
    assert opt.report.counts() == {"fold_rescaling": 1}
    assert [type(layer).__name__ for layer in out.layers] == ["InputLayer", "Conv2D"]
    assert_same_function(m, out, rtol=1e-5)


# ---- near misses ------------------------------------------------------------------------
def _declined(model, needle):
    r = check_rule(model, FoldRescaling(), applied=0, declined=needle, seed=3)
    assert r.graph.nodes_of("Rescaling")
    assert r.report.why(r.graph.nodes_of("Rescaling")[0].name)
    return r.report


@pytest.mark.parametrize("act", ["sigmoid", "relu6", "tanh"])
def test_declines_activation_on_the_conv(act):
    _declined(chain((7, 7, 3), L.Conv2D(C, 3, activation=act), L.Rescaling(0.5)),
              f"activation '{act}' between Conv2D and Rescaling")


@pytest.mark.parametrize("kw", [dict(scale=0.5, offset=0.1), dict(scale=-0.5)],
                         ids=["offset", "negative"])
def test_declines_relu_conv_unless_scale_commutes(kw):
    _declined(chain((7, 7, 3), L.Conv2D(C, 3, activation="relu"), L.Rescaling(**kw)),
              "non-negative scale and a zero offset")


def test_declines_when_conv_output_is_read_elsewhere():
    x = keras.Input((7, 7, 3))
    y = L.Conv2D(C, 3, padding="same")(x)
    _declined(keras.Model(x, L.Add()([L.Rescaling(0.5)(y), y])), "also read elsewhere")


def test_declines_when_conv_output_is_a_model_output():
    x = keras.Input((7, 7, 3))
    y = L.Conv2D(C, 3)(x)
    _declined(keras.Model(x, [y, L.Rescaling(0.5)(y)]), "also read elsewhere")


def test_declines_shared_rescaling_layer():
    a, b = keras.Input((7, 7, 3)), keras.Input((7, 7, 3))
    shared = L.Rescaling(0.5, offset=1.0)
    m = keras.Model([a, b], [shared(L.Conv2D(C, 3)(a)), shared(L.Conv2D(C, 3)(b))])
    report = _declined(m, "shared layer")
    assert all("shared layer" in d.reason for d in report.declined)


def test_declines_channels_first_conv():
    # 3 channels first and last: kopt.ir.lint reads a conv's input channels from the last
    # axis, so other channels_first shapes do not lift today
    m = chain((3, 7, 3), L.Conv2D(C, 3, data_format="channels_first"), L.Rescaling(0.5))
    _declined(m, "is channels_first: Rescaling scales the last axis")


def test_declines_per_channel_scale_under_channels_first_image_format():
    before = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:  # a (C,) scale becomes (C, 1, 1): it would scale rows, not channels
        m = chain((C, C, 3), L.Conv2D(C, 1, data_format="channels_last"),
                   L.Rescaling(np.arange(1, C + 1, dtype="float32")))
        _declined(m, "image_data_format is channels_first")
    finally:
        keras.config.set_image_data_format(before)


@pytest.mark.parametrize("shape", [(5, 5, 1), (5, 1, 1), (1, 5, 5, C), (1, 1, 1, 1, C)],
                         ids=["spatial", "rows", "full", "extra_axis"])
def test_declines_scale_reaching_other_axes(shape):
    scale = np.random.default_rng(7).uniform(0.5, 2, shape).astype("float32")
    m = chain((7, 7, 3), L.Conv2D(C, 3), L.Rescaling(scale))
    _declined(m, "does not broadcast over the channel axis only")


def test_declines_per_channel_offset_of_wrong_length():
    m = chain((7, 7, 3), L.Conv2D(C, 3), L.Rescaling(0.5, offset=np.ones((5, 1, 1))))
    _declined(m, "offset of shape (5, 1, 1)")


def test_declines_rescaling_that_changes_the_dtype():
    m = chain((7, 7, 3), L.Conv2D(C, 3), L.Rescaling(0.5, dtype="float64"))
    _declined(m, "changes the dtype (['float32'] -> ['float64'])")


def test_declines_rescaling_after_input():
    """EfficientNet's input Rescaling: nothing before it to fold into."""
    _declined(chain((7, 7, 3), L.Rescaling(1 / 255), L.Conv2D(C, 3)),
              "Rescaling follows InputLayer, not a conv or dense layer")
