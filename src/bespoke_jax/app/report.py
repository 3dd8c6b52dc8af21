"""The demo's report: Markdown tables, figures and the prose around them, written atomically.

``write_demo_report`` takes a ``DemoRecord`` (plain numbers, arrays and strings) and writes
``report.md`` with its PNG figures (drawn by ``figures``). Every writer goes through
``atomic_write``: the bytes land in a temporary file next to the target and are moved over it with
``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bespoke_jax.app import figures
from bespoke_jax.io.files import atomic_write


def save_figure(fig, path) -> Path:
    """Render ``fig`` as PNG into ``path`` atomically and close it."""
    return atomic_write(path, figures.png(fig))


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


@dataclasses.dataclass(frozen=True)
class DemoSetup:
    """What the demo ran on, and what its ground truth cost.

    Attributes:
      model: the shipped model's name.
      description: a sentence on it (``DemoPreset.description``).
      guidance: classifier-free guidance w.
      forwards_per_call: network passes per model call (2 with guidance).
      data_range: R of the PSNR.
      sigma0: BNS preconditioning.
      n_train, n_val, n_test: noise samples of the three sets.
      eval_every: training steps between validations.
      ground_truth_nfe: the most model calls the adaptive ground truth spent on a test sample.
      ground_truth_calls: sample-forwards of the training sets' ground truth.
      ground_truth_s, compute_s: wall time of every ground truth, and of everything before the
        report (compilation included).
    """

    model: str
    description: str
    guidance: float
    forwards_per_call: int
    data_range: float
    sigma0: float
    n_train: int
    n_val: int
    n_test: int
    eval_every: int
    ground_truth_nfe: int
    ground_truth_calls: int
    ground_truth_s: float
    compute_s: float


@dataclasses.dataclass(frozen=True)
class LearnedSolver:
    """One trained solver of the demo.

    Attributes:
      label: its name in tables and files (``"bns-8"``).
      optimizer: the optimizer's display name (``defaults.optimizer_name``).
      num_params, steps, batch_size, best_step: its size and optimisation.
      val_psnr: validation PSNR [dB] of the kept step.
      wall_s: training wall time (compilation included).
      model_calls: sample-forwards spent, ground truth included.
      history: ``{"step", "val_psnr"}`` lists of the validations.
      times: the ``nfe + 1`` model times of its grid.
      coefficients: its decoded coefficients (``family.coefficients``).
    """

    label: str
    optimizer: str
    num_params: int
    steps: int
    batch_size: int
    best_step: int
    val_psnr: float
    wall_s: float
    model_calls: int
    history: Mapping[str, Sequence[float]]
    times: np.ndarray
    coefficients: Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DemoRecord:
    """Everything the demo's report shows.

    Attributes:
      setup: the settings and ground-truth costs.
      psnr: ``{solver: {nfe: dB}}`` on the test set, learned solvers first.
      samples: ``{nfe: {solver: (N, *shape)}}``, the ground truth first.
      learned: the trained solvers.
      skipped: ``{"baseline, NFE n": why it was not run}``.
    """

    setup: DemoSetup
    psnr: Mapping[str, Mapping[int, float]]
    samples: Mapping[int, Mapping[str, np.ndarray]]
    learned: Sequence[LearnedSolver]
    skipped: Mapping[str, str]


def write_demo_report(out_dir, record: DemoRecord) -> Path:
    """The demo's figures and ``report.md`` in ``out_dir``; returns the report's path."""
    out_dir = Path(out_dir)
    setup = record.setup
    title = f"{setup.model}, guidance {setup.guidance:g}"
    figure = figures.psnr_vs_nfe(record.psnr, data_range=setup.data_range, title=title)
    save_figure(figure, out_dir / "psnr_vs_nfe.png")
    for nfe, shown in record.samples.items():
        save_figure(figures.samples(shown, title=f"NFE {nfe}"), out_dir / f"samples_nfe{nfe}.png")
    for solver in record.learned:
        figure = figures.coefficients(solver.coefficients, title=f"learned {solver.label}")
        save_figure(figure, out_dir / f"{solver.label}.png")
    grids = {solver.label: solver.times for solver in record.learned}
    figure = figures.time_grids(grids, title="learned time grids (model time)")
    save_figure(figure, out_dir / "time_grids.png")
    histories = {solver.label: solver.history for solver in record.learned}
    save_figure(figures.histories(histories), out_dir / "training.png")
    sections = (_introduction, _results, _learned_solvers, _training_cost, _skipped)
    lines = [line for section in sections for line in section(record)]
    return atomic_write(out_dir / "report.md", "\n".join(lines))


def _introduction(record: DemoRecord) -> list[str]:
    setup = record.setup
    return [
        f"# Bespoke solvers for the shipped {setup.model} model",
        "",
        f"Model: {setup.description} Classifier-free guidance w = {setup.guidance:g} (one model "
        f"call is {setup.forwards_per_call} network passes).",
        f"Test set: {setup.n_test} noise samples (the class labels in turn) never used in "
        f"training. Ground truth: adaptive Dopri5, rtol = atol = 1e-5, up to "
        f"{setup.ground_truth_nfe} model calls per sample.",
        "PSNR against the ground truth, per sample then averaged, "
        f"**data range R = {setup.data_range:g}**.",
        "",
    ]


def _results(record: DemoRecord) -> list[str]:
    return [
        "## PSNR [dB] vs NFE",
        "",
        psnr_table(record.psnr, list(record.samples)),
        "BNS: bespoke non-stationary solver (midpoint init, preconditioned with sigma0 = "
        f"{record.setup.sigma0:g}); untrained: the same solver at its init, i.e. midpoint on "
        "the preconditioned field (at sigma0 = 1 the midpoint row itself), so the gap to BNS "
        "is what learning adds. BST: RK2 bespoke scale-time solver. `-`: the solver cannot "
        "spend that NFE.",
        "",
        "![PSNR vs NFE](psnr_vs_nfe.png)",
        "",
        "## Samples",
        "",
        "Same noise and labels in every row: the ground truth, then the learned solvers, then "
        "the baselines.",
        "",
        *(f"![NFE {nfe}](samples_nfe{nfe}.png)\n" for nfe in record.samples),
    ]


def _learned_solvers(record: DemoRecord) -> list[str]:
    return [
        "## Learned solvers",
        "",
        "Time grids in model time (the diagonal is the uniform grid):",
        "",
        "![time grids](time_grids.png)",
        "",
        "BST: time t(r), scale s(r) and their derivatives on r = j / NFE. BNS: grid (solver "
        "time r), weights a of the noise, lower-triangular weights b of the velocities.",
        "",
        *(f"![{solver.label}]({solver.label}.png)\n" for solver in record.learned),
        "Validation PSNR during training:",
        "",
        "![training](training.png)",
        "",
    ]


def _training_cost(record: DemoRecord) -> list[str]:
    setup = record.setup
    header = ["solver", "optimizer", "parameters", "steps", "batch", "best step", "val PSNR"]
    header += ["wall s", "calls"]
    rows = [
        [s.label, s.optimizer, s.num_params, s.steps, s.batch_size, s.best_step, s.val_psnr]
        + [s.wall_s, s.model_calls]
        for s in record.learned
    ]
    return [
        "## Training cost",
        "",
        markdown_table(header, rows),
        "calls: sample-forwards of the model (one call on a batch of B counts B), ground truth "
        f"included. Ground truth of the training sets: {setup.ground_truth_calls} "
        f"sample-forwards; of all sets: {setup.ground_truth_s:.0f} s wall. Each optimizer runs "
        f"with its family's warm-up and cosine decay, validation every {setup.eval_every} steps "
        f"on {setup.n_val} samples, {setup.n_train} training samples. Wall time of everything "
        f"before this report (compilation included): {setup.compute_s:.0f} s.",
        "",
        "Saved solvers: `solvers/NAME` (`bj.load_solver`, `bespoke-jax eval solvers/NAME`) "
        "and their plain-JSON coefficients `solvers/NAME.json`.",
        "",
    ]


def _skipped(record: DemoRecord) -> list[str]:
    return [
        "## Baselines not run",
        "",
        *(f"- {name}: {why}" for name, why in record.skipped.items()),
        "",
    ]
