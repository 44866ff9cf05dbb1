"""The public entry points: Optimizer settings reach the exact pass of the data flow; the
command answers --version, also as `python -m kopt`."""

import subprocess
import sys

import keras
import numpy as np

import kopt
from kopt.cli import main
from kopt.flows.data import load_digits
from rewrites import FoldBatchNorm


def _bn_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(h))
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="fc")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_optimizer_with_data_runs_its_own_rules_and_fills_the_report():
    x, y, xt, yt = load_digits(size=12, seed=0)
    model = _bn_model()
    model.fit(x, y, epochs=1, verbose=0)
    kopt.recalibrate_bn(model, x)  # one epoch leaves BN's moving statistics behind
    opt = kopt.Optimizer(rules=[FoldBatchNorm()], tolerance=1e-3)
    small = opt.optimize(model, data=(x, y), validation=(xt, yt), max_accuracy_drop=1.0,
                         merge_width=(), prune_ratio=0.5, svd_energy=(), epochs=1)
    assert opt.report is not None  # was None whenever data was given
    assert set(opt.report.counts()) == {"fold_batchnorm"}  # only the rule asked for ran
    assert opt.report.max_error is not None and opt.report.max_error <= 1e-3
    names = [layer.name for layer in small.layers]
    assert "bn" not in names and "relu" in names  # fuse_vertical was not asked for
    assert opt.steps[-1]["step"] == "fuse (exact)"


def test_version_from_the_command_and_python_m(capsys):
    code = None
    try:
        main(["--version"])
    except SystemExit as exc:  # argparse's version action exits 0 after printing
        code = exc.code
    assert code == 0 and capsys.readouterr().out.strip() == f"kopt {kopt.__version__}"
    run = subprocess.run([sys.executable, "-m", "kopt", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == f"kopt {kopt.__version__}"


def test_optimize_without_data_is_unchanged_and_input_not_mutated():
    model = _bn_model()
    before = [w.copy() for w in model.get_weights()]
    fast = kopt.optimize(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert len(fast.layers) < len(model.layers)
