"""tools/bench_search.py's plot on made-up rows: no training, no search, no timing."""

import json

import pytest

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def bench(load_tool):
    return load_tool("bench_search")


def _row(model, asked, ms_search, extra=True):
    steps = [dict(step="original", measured_ms=0.40, val_score=0.99, kept=True),
             dict(step="1: c1 32->24", measured_ms=0.30, val_score=0.985, kept=True),
             dict(step="1: c2 32->24", measured_ms=0.41, val_score=0.97, kept=False),
             dict(step="final distillation (1: c1 32->24)", measured_ms=0.29,
                  val_score=0.99, kept=True),
             dict(step="fuse (exact)", val_score=0.99, kept=True)]  # no latency: not drawn
    row = dict(model=model, seed=0, asked=asked, ms_ptq=0.42, acc_ptq=0.99,
               ms_search=ms_search, acc_search=0.985, ms_float=0.9, acc_float=0.99,
               steps=steps)
    if extra:
        row.update(ms_recipe=0.2, acc_recipe=0.98, ms_tfmot=0.43, acc_tfmot=0.975)
    return row


def test_plot_draws_every_kind_once_per_model(bench, tmp_path, monkeypatch):
    import matplotlib.figure

    labels = []
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, path, **options):
        labels.extend(ax.get_legend_handles_labels()[1] for ax in fig.axes)
        real(fig, path, **options)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    rows = [_row("vgg", 2, 0.21), _row("vgg", 3, 0.14), _row("tree", 2, 0.3, extra=False)]
    path = tmp_path / "s.png"
    bench.plot(rows, str(path))
    assert path.stat().st_size > 0
    vgg, tree = labels
    for label in ("original, float file", "original, int8 PTQ", "fixed recipe",
                  "tfmot magnitude pruning"):
        assert vgg.count(label) == 1  # once, though two speed-ups were run
    assert "search 2x: result" in vgg and "search 3x: result" in vgg
    assert any(label.startswith("search 3x: kept steps") for label in vgg)
    assert any(label.startswith("search 3x: after final distillation") for label in vgg)
    assert "fixed recipe" not in tree and "search 2x: result" in tree


def test_replot_from_json(bench, tmp_path):
    data, path = tmp_path / "s.json", tmp_path / "again.png"
    data.write_text(json.dumps([_row("vgg", 2, 0.21)]))
    assert bench.main(["--replot", str(data), "--plot", str(path)]) == 0
    assert path.stat().st_size > 0
