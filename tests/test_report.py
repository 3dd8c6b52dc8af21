"""The report's writers and figures: valid PNGs, Markdown tables, atomic writes."""

import math

import numpy as np
import pytest

from bespoke_jax.app import figures
from bespoke_jax.app import report as _report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 50 and height > 50


def no_temporaries(directory):
    return not any(p.name.endswith(".tmp") for p in directory.iterdir())


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "report.md"
    _report.atomic_write(path, "first")
    _report.atomic_write(path, b"second")
    assert path.read_text() == "second"
    assert no_temporaries(path.parent)


def test_markdown_tables():
    table = _report.psnr_table({"euler": {4: 20.0, 8: 25.123}, "bns": {8: math.nan}}, [4, 8])
    lines = table.strip().splitlines()
    assert lines[0] == "| solver | NFE 4 | NFE 8 |"
    assert lines[2] == "| euler | 20.00 | 25.12 |"
    assert lines[3] == "| bns | - | - |"


def test_psnr_plot(tmp_path):
    psnr = {"euler": {4: 10.0, 8: 14.0, 16: 18.0}, "bns": {4: 20.0, 8: 30.0}, "edm": {}}
    assert_png(_report.save_figure(figures.psnr_vs_nfe(psnr), tmp_path / "psnr.png"))


@pytest.mark.parametrize("shape", [(8, 8), (6, 5, 3), (2,)])
def test_sample_grids(tmp_path, shape):
    rng = np.random.default_rng(0)
    samples = {name: rng.uniform(-1, 1, (12, *shape)) for name in ("ground truth", "euler")}
    path = _report.save_figure(figures.samples(samples, max_samples=5), tmp_path / "grid.png")
    assert_png(path)
    assert no_temporaries(tmp_path)


def test_sample_grid_rejects_other_shapes(tmp_path):
    with pytest.raises(ValueError, match="Cannot draw samples of shape"):
        figures.samples({"x": np.zeros((3, 4, 4, 4))})


def test_coefficient_and_grid_plots(tmp_path):
    n = 4
    bns = {"t": np.linspace(0, 1, n + 1), "a": np.ones(n), "b": np.tril(np.ones((n, n)))}
    assert_png(_report.save_figure(figures.coefficients(bns, title="bns"), tmp_path / "bns.png"))
    r = np.linspace(0, 1, 2 * n + 1)
    bst = {"r": r, "t": r**2, "s": 1 + r, "dt": 2 * r, "ds": np.ones_like(r), "sigma0": 1.0}
    assert_png(_report.save_figure(figures.coefficients(bst), tmp_path / "bst.png"))
    grids = {"bns": bns["t"], "bst": r**2}
    assert_png(_report.save_figure(figures.time_grids(grids), tmp_path / "grids.png"))
    history = {"step": [0, 10, 20], "val_psnr": [10.0, 12.0, 13.0]}
    figure = figures.histories({"bns": history})
    assert_png(_report.save_figure(figure, tmp_path / "history.png"))
