"""MaxPoolToConv: a depthwise conv that starts as the average pool; declines shared pools."""

import keras
import numpy as np

import kopt
from kopt.rewriting import PassManager
from kopt.testing import model_inputs, outputs
from rewrites.maxpool_to_conv import MaxPoolToConv


def _model(pool, padding="valid"):
    x = keras.Input((9, 9, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", name="c")(x)
    y = pool(pool_size=3, strides=2, padding=padding, name="p")(y)
    return keras.Model(x, keras.layers.Flatten()(y))


def test_starts_as_average_pool():
    model = _model(keras.layers.MaxPooling2D)
    g, report = PassManager([MaxPoolToConv()], verify=False).run(kopt.from_keras(model))
    assert report.counts() == {"maxpool_to_conv": 1}
    assert [n.op for n in g.topological()][2] == "DepthwiseConv2D"
    avg = _model(keras.layers.AveragePooling2D)
    avg.set_weights(model.get_weights())
    x = model_inputs(model, batch=3)
    got, want = outputs(kopt.to_keras(g), x), outputs(avg, x)
    assert got[0].shape == want[0].shape == (3, 4 * 4 * 4)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert g.count_macs() > kopt.from_keras(model).count_macs()  # the price: the retrained op


def test_same_padding_keeps_shape():
    model = _model(keras.layers.MaxPooling2D, padding="same")
    g, _ = PassManager([MaxPoolToConv()], verify=False).run(kopt.from_keras(model))
    assert kopt.to_keras(g).output_shape == model.output_shape


def test_declines_shared_pool():
    a, b = keras.Input((8, 8, 2)), keras.Input((8, 8, 2))
    pool = keras.layers.MaxPooling2D(name="shared")
    model = keras.Model([a, b], [pool(a), pool(b)])
    g, report = PassManager([MaxPoolToConv()], verify=False).run(kopt.from_keras(model))
    assert report.counts() == {} and "shared" in report.declined[0].reason
