"""Markdown tables and matplotlib figures of solver comparisons, written atomically.

Every writer goes through ``atomic_write``: the bytes land in a temporary file next to the target
and are moved over it with ``os.replace``, so a reader never sees half a file. Figures use the
Agg backend (no display needed).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from bespoke_jax.io.files import atomic_write  # noqa: E402

_DPI = 110


def save_figure(fig, path) -> Path:
    """Render ``fig`` as PNG into ``path`` atomically and close it."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write(path, buffer.getvalue())


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], cell: Callable = _cell) -> str:
    """A GitHub Markdown table; ``cell`` formats each value (default: floats with two
    decimals, NaN as ``-``)."""
    lines = [
        "| " + " | ".join(map(str, header)) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def records_table(
    rows: Sequence[Mapping], columns: Sequence[str] | None = None, cell: Callable = _cell
) -> str:
    """A Markdown table of dict ``rows`` (no trailing newline); ``columns`` default to every
    key in order of appearance, and a missing value is passed to ``cell`` as ``None``."""
    columns = columns or list(dict.fromkeys(c for row in rows for c in row))
    body = [[row.get(c) for c in columns] for row in rows]
    return markdown_table(columns, body, cell).rstrip("\n")


def psnr_table(psnr: Mapping[str, Mapping[int, float]], nfes: Sequence[int]) -> str:
    """Solvers as rows, NFE values as columns; ``-`` where a solver cannot spend that NFE."""
    rows = [
        [name, *(float(values.get(n, math.nan)) for n in nfes)] for name, values in psnr.items()
    ]
    return markdown_table(["solver", *(f"NFE {n}" for n in nfes)], rows)


def plot_psnr_vs_nfe(
    psnr: Mapping[str, Mapping[int, float]], path, *, data_range: float = 2.0, title: str = ""
) -> Path:
    """PSNR against NFE, one line per solver; learned solvers (names with ``bst``/``bns``) bold.

    Args:
      psnr: ``{solver: {nfe: psnr}}``.
      path: the PNG to write.
      data_range: R of the PSNR, stated on the axis.
      title: the figure title.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, values in psnr.items():
        nfes = sorted(n for n, v in values.items() if math.isfinite(v))
        if not nfes:
            continue
        learned = "bst" in name.lower() or "bns" in name.lower()
        ax.plot(
            nfes,
            [values[n] for n in nfes],
            marker="o" if learned else ".",
            linewidth=2.4 if learned else 1.0,
            linestyle="-" if learned else "--",
            label=name,
        )
    all_nfes = sorted({n for values in psnr.values() for n in values})
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_nfes, [str(n) for n in all_nfes])
    ax.set_xlabel("NFE (model calls)")
    ax.set_ylabel(f"PSNR vs ground truth [dB] (data range {data_range:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(title)
    return save_figure(fig, path)


def _is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3))


def plot_samples(
    samples: Mapping[str, np.ndarray],
    path,
    *,
    max_samples: int = 10,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    title: str = "",
) -> Path:
    """A grid of samples: one row (images) or one panel (2-D points) per method.

    Images ``(B, H, W)`` or ``(B, H, W, C)`` show their first ``max_samples`` samples in a row
    per method; points ``(B, 2)`` are scattered, one panel per method with shared limits.

    Args:
      samples: ``{method: (B, *shape)}`` in display order (ground truth first, by convention).
      path: the PNG to write.
      max_samples: images shown per row.
      value_range: pixel values mapped to black and white (``None``: the data's range).
      title: the figure title.

    Raises:
      ValueError: samples that are neither images nor 2-D points.
    """
    arrays = {name: np.asarray(x) for name, x in samples.items()}
    shapes = {x.shape[1:] for x in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"All samples must share one sample shape, got {sorted(shapes)}.")
    (shape,) = shapes
    if _is_image(shape):
        return _image_grid(arrays, path, max_samples, value_range, title)
    if shape == (2,):
        return _scatter_grid(arrays, path, title)
    raise ValueError(
        f"Cannot draw samples of shape {shape}: plot_samples draws images (H, W) or (H, W, C) "
        f"and 2-D points (2,)."
    )


def _image_grid(arrays, path, max_samples, value_range, title) -> Path:
    count = min(max_samples, min(len(x) for x in arrays.values()))
    if value_range is None:
        stacked = np.concatenate([x[:count].ravel() for x in arrays.values()])
        value_range = (float(stacked.min()), float(stacked.max()))
    low, high = value_range
    fig, axes = plt.subplots(
        len(arrays), count, figsize=(0.9 * count + 1.2, 0.95 * len(arrays)), squeeze=False
    )
    for row, (name, x) in zip(axes, arrays.items(), strict=True):
        for j, ax in enumerate(row):
            image = np.clip((x[j] - low) / (high - low), 0.0, 1.0)
            ax.imshow(image.squeeze(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title(title, loc="left", fontsize=10)
    return save_figure(fig, path)


def _scatter_grid(arrays, path, title) -> Path:
    cols = min(4, len(arrays))
    rows = math.ceil(len(arrays) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    stacked = np.concatenate(list(arrays.values()))
    low, high = np.percentile(stacked, [0.5, 99.5], axis=0)
    pad = 0.05 * (high - low)
    for ax, (name, x) in zip(axes.ravel(), arrays.items(), strict=False):
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
        ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
    for ax in axes.ravel()[len(arrays) :]:
        ax.set_axis_off()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_coefficients(coefficients: Mapping[str, np.ndarray], path, *, title: str = "") -> Path:
    """One panel per learned coefficient: vectors as curves, matrices as heatmaps.

    A vector is drawn against ``coefficients["r"]`` (the BST grid in r) when that key exists and
    the vector has its length or one less (values at all but the last point), else against its
    index. A square matrix whose strict upper triangle is zero
    (BNS ``b``) shows only its lower triangle.

    Args:
      coefficients: ``{name: array}`` of scalars, vectors ``(n,)`` and matrices ``(n, m)``;
        ``"r"`` is the abscissa, not a panel; scalars appear in the title.
      path: the PNG to write.
      title: the figure title.
    """
    arrays = {name: np.asarray(value) for name, value in coefficients.items()}
    r = arrays.pop("r", None)
    scalars = {name: float(v) for name, v in arrays.items() if v.ndim == 0}
    panels = {name: v for name, v in arrays.items() if v.ndim in (1, 2)}
    if not panels:
        raise ValueError(f"No vector or matrix coefficients to plot among {sorted(arrays)}.")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, value) in zip(axes.ravel(), panels.items(), strict=False):
        if value.ndim == 1:
            use_r = r is not None and len(value) in (len(r), len(r) - 1)
            xs = r[: len(value)] if use_r else np.arange(len(value))
            ax.plot(xs, value, marker="o", markersize=3)
            ax.set_xlabel("r" if use_r else "index")
            ax.grid(alpha=0.3)
        else:
            shown = value
            if value.shape[0] == value.shape[1] and not np.any(np.triu(value, 1)):
                shown = np.ma.masked_array(value, np.triu(np.ones(value.shape, bool), 1))
            image = ax.imshow(shown, cmap="coolwarm", norm=_centred(value))
            fig.colorbar(image, ax=ax, fraction=0.046)
            ax.set_xlabel("j")
            ax.set_ylabel("i")
        ax.set_title(name, fontsize=10)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_axis_off()
    extra = ", ".join(f"{name} = {value:.4g}" for name, value in scalars.items())
    fig.suptitle(f"{title} ({extra})" if title and extra else title or extra)
    fig.tight_layout()
    return save_figure(fig, path)


def _centred(value: np.ndarray):
    bound = float(np.max(np.abs(value))) or 1.0
    return matplotlib.colors.TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)


def plot_time_grids(grids: Mapping[str, np.ndarray], path, *, title: str = "") -> Path:
    """Time grids ``0 = t_0 < ... < t_n = 1`` against ``i / n``, one line per solver.

    The diagonal is the uniform grid; a curve below it spends more steps near the noise end.
    """
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="gray", linewidth=0.8, linestyle=":", label="uniform")
    for name, grid in grids.items():
        grid = np.asarray(grid)
        ax.plot(np.linspace(0.0, 1.0, len(grid)), grid, marker="o", markersize=3, label=name)
    ax.set_xlabel("i / n")
    ax.set_ylabel("t_i")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_histories(histories: Mapping[str, Mapping[str, Sequence]], path) -> Path:
    """Validation PSNR against training step, one line per trained solver."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for name, history in histories.items():
        ax.plot(history["step"], history["val_psnr"], label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation PSNR [dB]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
