"""IR invariants that depend on layout: lint reads a conv's input channels from its own
data_format, so channels_first models lift (they used to fail lint)."""

import keras

import kopt
from kopt.testing import assert_same_function


def test_channels_first_conv_lifts_and_round_trips():
    x = keras.Input((3, 16, 16))
    y = keras.layers.Conv2D(8, 3, data_format="channels_first", name="conv")(x)
    y = keras.layers.BatchNormalization(axis=1, name="bn")(y)
    model = keras.Model(x, y)
    g = kopt.from_keras(model)
    assert g["conv"].weights["kernel"].shape == (3, 3, 3, 8)
    assert_same_function(model, kopt.to_keras(g))
