"""The `kopt` command line: inspect prints the per-node table; bad input gives a clear error."""

import keras

from kopt.cli import main


def _save(tmp_path):
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, name="c1")(x)
    y = keras.layers.BatchNormalization(name="bn1")(y)
    y = keras.layers.Flatten()(y)
    path = tmp_path / "m.keras"
    keras.Model(x, keras.layers.Dense(2, name="fc")(y)).save(path)
    return path


def test_inspect_prints_table_and_totals(tmp_path, capsys):
    assert main(["inspect", str(_save(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "c1" in out and "Conv2D" in out and "tensor" in out and "non-tensor" in out
    # conv: 6*6*4 outputs x 27 MACs = 3888; dense: 144*2 = 288
    assert "4,176 MACs" in out and "1 4,176" not in out
    assert "(?, 6, 6, 4)" in out


def test_optimize_writes_a_smaller_model(tmp_path, capsys):
    out_path = tmp_path / "o.keras"
    assert main(["optimize", str(_save(tmp_path)), "-o", str(out_path)]) == 0
    text = capsys.readouterr().out
    assert "fold_batchnorm" in text and "verified" in text
    assert "bn1" not in [layer.name for layer in keras.saving.load_model(out_path).layers]


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.keras")]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_optimize_with_data_compresses_within_the_drop(tmp_path, capsys):
    import numpy as np

    from kopt.flows.data import load_digits

    x, y, xt, yt = load_digits(size=12, seed=0)
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(
        keras.layers.MaxPooling2D(2)(h)))
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "train.npz", x=x)  # no labels: agreement with the original decides
    np.savez(tmp_path / "val.npz", x=xt, y=yt)
    out_path = tmp_path / "small.keras"
    assert main(["optimize", str(tmp_path / "m.keras"), "-o", str(out_path), "--data",
                 str(tmp_path / "train.npz"), "--validation", str(tmp_path / "val.npz"),
                 "--max-drop", "0.02", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "original" in out and "fuse (exact)" in out
    small = keras.models.load_model(out_path)
    assert small.count_params() < model.count_params()
    acc = np.mean(np.argmax(small.predict(xt, verbose=0), -1) == yt)
    base = np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt)
    assert acc >= base - 0.02
    np.savez(tmp_path / "bad.npz", images=x)
    assert main(["optimize", str(tmp_path / "m.keras"), "-o", str(out_path), "--data",
                 str(tmp_path / "bad.npz")]) == 2
    assert "needs an array named 'x'" in capsys.readouterr().err


def test_optimize_a_regression_model_on_a_named_metric(tmp_path, capsys):
    import numpy as np

    from kopt.flows.data import load_digits

    x, y, xt, yt = load_digits(size=12, seed=0)
    target, target_t = (y / 9.0).astype("float32"), (yt / 9.0).astype("float32")
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(h))
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Dense(32, "relu")(h)))
    model.compile("adam", "mse")
    model.fit(x, target, epochs=3, verbose=0)
    model.save(tmp_path / "r.keras")
    np.savez(tmp_path / "train.npz", x=x, y=target)
    np.savez(tmp_path / "val.npz", x=xt, y=target_t)
    out_path = tmp_path / "small.keras"
    assert main(["optimize", str(tmp_path / "r.keras"), "-o", str(out_path), "--data",
                 str(tmp_path / "train.npz"), "--validation", str(tmp_path / "val.npz"),
                 "--metric", "mae", "--max-metric-drop", "0.05", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "val mean_absolute_error" in out and "fuse (exact)" in out  # the column names the metric
    small = keras.models.load_model(out_path)
    mae = float(np.mean(np.abs(small.predict(xt, verbose=0)[:, 0] - target_t)))
    base = float(np.mean(np.abs(model.predict(xt, verbose=0)[:, 0] - target_t)))
    assert mae <= base + 0.05
