"""Every keras.applications architecture: lossless round trip (include_top both ways) and
exact optimisation. Small input sizes keep the zoo inside CI's budget; the graphs are the same.
"""

import inspect

import keras
import numpy as np
import pytest

import kopt
from kopt.testing import assert_same_function, randomize_weights

ARCHITECTURES = sorted(n for n, f in inspect.getmembers(keras.applications, callable)
                       if n[0].isupper())
FOLDABLE = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")
# VGG has no BN, dropout or standalone activation: nothing exact to remove.
NOTHING_TO_FUSE = {"VGG16", "VGG19"}
# ~1000 layers with random kernels and random BN statistics amplify float32 rounding: the folded
# weights' rounding (1e-7) grows smoothly with depth (1e-6 at block2, 7e-4 at block7 of V2M)
# to >1e-4 at the logits. Verification must then roll fold_batchnorm back, which is asserted.
CHAOTIC_WHEN_RANDOM = {"EfficientNetV2M", "EfficientNetV2L"}
# The smallest input each builder accepts (keras.applications' min_size; 32 for the rest).
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
# 200M-350M parameters: optimize() holds several copies of the weights (about 10 GB at peak for
# ConvNeXtXLarge). One xdist group runs them one after another on one worker, never side by side,
# and each test builds its own (a shared one would sit beside the round trip's three models).
BIG = {"ConvNeXtLarge", "ConvNeXtXLarge"}

pytestmark = pytest.mark.usefixtures("free_models")  # one model's memory at a time


def _cases():
    """One xdist group per architecture: its two tests run back to back on one worker, sharing
    the `zoo_model` build; the BIG ones share a group so that they never run side by side."""
    return [pytest.param(n, marks=pytest.mark.xdist_group("zoo-big" if n in BIG else f"zoo-{n}"))
            for n in ARCHITECTURES]


def _build(name: str, include_top: bool) -> keras.Model:
    keras.backend.clear_session()
    keras.utils.set_random_seed(7)  # initial kernels too: earlier tests move the global seed
    size = MIN_SIZE.get(name, 32)
    model = getattr(keras.applications, name)(weights=None, include_top=include_top,
                                              input_shape=(size, size, 3), classes=10)
    return randomize_weights(model, seed=7)


@pytest.fixture(scope="module")
def zoo_model(request):
    """(name, the include_top=True model), built once for both tests of that architecture (None
    for BIG ones); pytest finalizes it before building the next architecture's."""
    model = None if request.param in BIG else _build(request.param, include_top=True)
    yield request.param, model
    del model
    keras.backend.clear_session()  # also gc.collect()


def _probe(model: keras.Model) -> np.ndarray:
    shape = (1,) + tuple(model.input_shape[1:])
    return np.random.default_rng(0).uniform(0, 255, shape).astype("float32")


@pytest.mark.slow
@pytest.mark.parametrize("zoo_model", _cases(), indirect=True)
def test_zoo_roundtrip(zoo_model):
    name, top = zoo_model
    for include_top in (True, False):
        model = top if include_top and top is not None else _build(name, include_top)
        g = kopt.from_keras(model)
        out = kopt.to_keras(g)
        assert out.count_params() == model.count_params() == g.count_params()
        assert_same_function(model, out, rtol=1e-5, x=_probe(model))
        del model, g, out  # before the next build


@pytest.mark.slow
@pytest.mark.parametrize("zoo_model", _cases(), indirect=True)
def test_zoo_optimize_is_exact_and_smaller(zoo_model):
    name, model = zoo_model
    if model is None:
        model = _build(name, include_top=True)
    opt = kopt.Optimizer()
    new = opt.optimize(model)
    rolled_back = [rule for rule, _ in opt.report.rolled_back]
    # float32 rounding of folded weights on random deep models is chaotic: whether verification
    # must roll fold_batchnorm back depends on the draw; the function is checked either way
    allowed = ([], ["fold_batchnorm"]) if name in CHAOTIC_WHEN_RANDOM else ([],)
    assert rolled_back in allowed, str(opt.report)
    assert_same_function(model, new, rtol=1e-4, x=_probe(model))
    assert new.count_params() <= model.count_params()
    if name in NOTHING_TO_FUSE:
        assert len(new.layers) == len(model.layers)
    else:
        assert len(new.layers) < len(model.layers), str(opt.report)
    if name in ("ResNet50", "MobileNet", "MobileNetV2", "InceptionV3", "VGG16"):
        g = kopt.from_keras(new)
        after_conv = [n.name for n in g.nodes_of("BatchNormalization")
                      if any(p.op in FOLDABLE for p in g.producers(n.name))]
        assert not after_conv, f"BN left after a conv: {after_conv}"
