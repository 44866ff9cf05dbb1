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
