"""MaxPoolToConv: a depthwise conv that starts as the average pool; declines shared pools."""

import keras
import numpy as np

import kopt
from kopt.testing import check_rule, model_inputs, outputs
from rewrites.maxpool_to_conv import MaxPoolToConv


def _model(pool, padding="valid"):
    x = keras.Input((9, 9, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", name="c")(x)
    y = pool(pool_size=3, strides=2, padding=padding, name="p")(y)
    return keras.Model(x, keras.layers.Flatten()(y))


def test_starts_as_average_pool():
    model = _model(keras.layers.MaxPooling2D)
    r = check_rule(model, MaxPoolToConv(), applied={"maxpool_to_conv": 1})
    g = r.graph
    assert [n.op for n in g.topological()][2] == "DepthwiseConv2D"
    avg = _model(keras.layers.AveragePooling2D)
    avg.set_weights(model.get_weights())
    x = model_inputs(model, batch=3)
    got, want = outputs(r.model, x), outputs(avg, x)
    assert got[0].shape == want[0].shape == (3, 4 * 4 * 4)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert g.count_macs() > kopt.from_keras(model).count_macs()  # the price: the retrained op


def test_same_padding_keeps_shape():
    model = _model(keras.layers.MaxPooling2D, padding="same")
    assert check_rule(model, MaxPoolToConv(), applied=1).model.output_shape == model.output_shape


def test_declines_shared_pool():
    a, b = keras.Input((8, 8, 2)), keras.Input((8, 8, 2))
    pool = keras.layers.MaxPooling2D(name="shared")
    model = keras.Model([a, b], [pool(a), pool(b)])
    report = check_rule(model, MaxPoolToConv(), applied=0, declined="shared").report
    assert "shared" in report.declined[0].reason
