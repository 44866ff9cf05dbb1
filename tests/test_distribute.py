"""Users past one machine: retraining, and optimize(data=...) as a whole, run inside the caller's
tf.distribute strategy, on a tf.data dataset that Keras splits over the replicas.

MirroredStrategy over two logical CPU devices stands in for two accelerators. The logical
devices must be configured before TensorFlow initialises its devices, which any earlier test
in this process has done, so the check runs in a fresh interpreter."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import kopt
    from kopt.errors import DataError

    L = keras.layers
    x, y, xt, yt = kopt.load_digits(size=12, seed=0)
    x, y = x[:1024], y[:1024]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(1024, seed=0).batch(64)
    out = {"replicas": strategy.num_replicas_in_sync}
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inp = keras.Input((12, 12, 1))
        h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
        h = L.Dense(32, activation="relu")(L.Flatten()(L.MaxPooling2D(2)(h)))
        model = keras.Model(inp, L.Dense(10, activation="softmax")(h))
        kopt.retrain(model, data=ds, epochs=4, learning_rate=3e-3)  # from scratch, streamed
        out["mirrored"] = type(model.trainable_weights[0].value).__name__
        out["strategy"] = model.distribute_strategy is strategy
        student = keras.models.clone_model(model)
        kopt.retrain(student, model, data=ds, epochs=1)  # distillation, teacher per batch
        out["student_strategy"] = student.distribute_strategy is strategy
        opt = kopt.Optimizer()
        vs = tf.data.Dataset.from_tensor_slices((xt, yt)).batch(64)
        opt.optimize(model, data=ds, validation=vs, max_accuracy_drop=1.0, merge_width=(),
                     prune_ratio=0.5, svd_energy=(), epochs=1)
        out["steps"] = [(s["step"], s["kept"], s["val_acc"]) for s in opt.steps]
        try:
            kopt.retrain(student, model, data=strategy.experimental_distribute_dataset(ds))
        except DataError as err:
            out["distributed_dataset"] = str(err)
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_retrain_and_optimize_inside_a_mirrored_strategy(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # kopt, installed or not
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=600, env=env, cwd=tmp_path)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["replicas"] == 2 and out["strategy"] and out["student_strategy"]
    assert out["mirrored"] == "MirroredVariable"  # the weights live on both replicas
    assert [s[0] for s in out["steps"]] == ["original", "prune 0.5", "final distillation",
                                         "fuse (exact)"]
    assert out["steps"][0][2] > 0.5 and out["steps"][1][1]
    assert "pass the tf.data.Dataset itself" in out["distributed_dataset"]
