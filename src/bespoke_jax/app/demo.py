"""The demo: BNS and RK2-BST solvers for a shipped model, compared with every baseline.

It runs the jobs' pieces (``jobs.py``) on one shared ground truth per noise set and hands a
``report.DemoRecord`` to ``report.write_demo_report``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bespoke_jax import solvers
from bespoke_jax.app import jobs
from bespoke_jax.app.defaults import (
    DEFAULT_GUIDANCE,
    DEMO_MODELS,
    QUICK,
    Settings,
    default_steps,
    optimizer_name,
)
from bespoke_jax.app.report import DemoRecord, DemoSetup, LearnedSolver, write_demo_report
from bespoke_jax.app.user_model import UserModel, load_model
from bespoke_jax.io.outputs import claim_run_dir
from bespoke_jax.io.storage import export_solver, save_solver

# What a demo run writes into its folder: every other file there is left alone.
DEMO_OUTPUTS = ("report.md", "*.png", "solvers", "ground_truth")


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What ``run_demo`` computed; ``report`` holds the same in Markdown.

    Attributes:
      report: the ``report.md`` written.
      psnr: ``{solver: {nfe: dB}}`` on the test set, learned solvers first.
      trained: the trained solvers.
      setup: the sizes and the ground truth's cost, as in the report.
      wall_s: wall time of the whole demo.
    """

    report: Path
    psnr: dict[str, dict[int, float]]
    trained: tuple[jobs.Trained, ...]
    setup: DemoSetup
    wall_s: float


def run_demo(
    out_dir="runs/demo",
    *,
    model: str = "digits",
    nfes: Sequence[int] | None = None,
    steps: int | None = None,
    quick: bool = False,
    guidance: float = DEFAULT_GUIDANCE,
    sigma0: float | None = None,
    baselines: Sequence[str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> DemoResult:
    """Learn BNS and RK2-BST solvers for a shipped model and write a report.

    The ground truth of each noise set is solved once (and cached in ``out_dir``) for every
    family and NFE. Each learned solver is compared on held-out noise with every baseline that
    can spend the same NFE, saved under ``out_dir/solvers/`` (``bj.save_solver``, with its
    plain-JSON export) and plotted.

    Args:
      out_dir: the report folder: ``report.md``, PNG figures, ``solvers/``.
      model: a name of ``DEMO_MODELS`` (``"digits"``, ``"patches16"``); its preset gives the
        defaults below and the sizes.
      nfes: even NFE values (RK2-BST spends two per step; ``None``: the preset's).
      steps: optimisation steps per solver (``None``: the preset's, else each family's default).
      quick: tiny sizes and two baselines for smoke tests (the numbers mean nothing).
      guidance: classifier-free guidance scale w of the model.
      sigma0: BNS preconditioning (``None``: the preset's, tuned on the model at w = 2).
      baselines: the baselines to compare with (default: every one; with ``quick``, Euler and
        midpoint).
      progress: tqdm bars: the ground truth's chunks and the training steps.
      overwrite: write into a non-empty ``out_dir`` that holds no demo run (its other files are
        kept; one of the user's under a name in ``DEMO_OUTPUTS`` is refused).
    """
    start = time.perf_counter()
    if model not in DEMO_MODELS:
        raise ValueError(f"The demo runs on {sorted(DEMO_MODELS)}, got model {model!r}.")
    preset = DEMO_MODELS[model]
    sigma0 = preset.sigma0 if sigma0 is None else sigma0
    nfes, baselines = _checked(preset.nfes if nfes is None else nfes, baselines, quick)
    claim_run_dir(out_dir, "demo", DEMO_OUTPUTS, overwrite=overwrite)
    out_dir = Path(out_dir)
    settings = QUICK if quick else preset.settings
    settings = dataclasses.replace(
        settings, steps=steps or settings.steps, cache_dir=str(out_dir / "ground_truth")
    )
    name, model = model, load_model(model, guidance=guidance)
    families = []
    for nfe in nfes:
        bns = jobs.make_family("bns", nfe, sigma0=sigma0, scheduler=model.scheduler)
        families += [bns, jobs.make_family("bst", nfe)]
    steps = {f.name: settings.steps or default_steps(f) for f in families}
    steps_text = ", ".join(f"{name} {n}" for name, n in steps.items())
    jobs.log(
        f"{name} at guidance {guidance:g}; NFE {nfes}; steps per solver: {steps_text}; "
        f"{settings.n_train}/{settings.n_val}/{settings.n_test} train/val/test samples"
    )
    sets, val, test = _ground_truth(model, families, settings, progress)
    ground_truth_s = time.perf_counter() - start

    baseline_psnr, baseline_x1, skipped = _baselines(model, test, nfes, baselines)
    noise = (sets, val, test)
    psnr, learned_x1, trained, learned = _learn(out_dir, model, families, noise, progress)
    psnr.update(_untrained(model, families, test))
    psnr.update(baseline_psnr)  # learned solvers first, in tables and sample grids
    truth = np.asarray(test.data.x1)
    samples = {n: {"ground truth": truth, **learned_x1[n], **baseline_x1[n]} for n in nfes}
    setup = DemoSetup(
        model=name,
        description=preset.description,
        guidance=model.guidance,
        forwards_per_call=model.forwards_per_call,
        data_range=model.data_range,
        sigma0=sigma0,
        **{k: getattr(settings, k) for k in ("n_train", "n_val", "n_test", "eval_every")},
        ground_truth_nfe=test.data.nfe,
        ground_truth_calls=sets.model_calls,
        ground_truth_s=ground_truth_s,
        compute_s=time.perf_counter() - start,
    )
    report = write_demo_report(out_dir, DemoRecord(setup, psnr, samples, learned, skipped))
    wall = time.perf_counter() - start
    jobs.log(f"done in {wall:.0f} s: {report}")
    return DemoResult(report, psnr, tuple(trained), setup, wall)


def _learn(out_dir: Path, model: UserModel, families, noise, progress: bool):
    """Train and save each family on ``noise = (training sets, validation, test)``.

    Returns:
      The test PSNR ``{NAME: {nfe: dB}}``, samples ``{nfe: {NAME: x1}}``, the
      ``jobs.Trained`` solvers and their ``report.LearnedSolver`` records.
    """
    sets, val, test = noise
    psnr: dict[str, dict[int, float]] = {}
    samples: dict[int, dict[str, np.ndarray]] = {}
    trained, learned = [], []
    for family in families:
        jobs.log(f"training {family.name} for NFE {family.nfe} ({family.num_params} parameters)")
        result = jobs.fit(model, family, sets, val, progress=progress)
        x1 = jobs.sample(family, result.result.params, model, test.x0, test.args)
        name = family.name.upper()
        psnr.setdefault(name, {})[family.nfe] = jobs.psnr_against(x1, model, test)
        samples.setdefault(family.nfe, {})[name] = x1
        trained.append(result)
        learned.append(_save(out_dir, model, result, psnr[name][family.nfe]))
    return psnr, samples, trained, learned


def _untrained(model: UserModel, families, test: jobs.NoiseSet) -> dict[str, dict[int, float]]:
    """Test PSNR ``{row: {nfe: dB}}`` of each preconditioned family (one with a ``source``
    solver and ``sigma0``: BNS) at ``init()``: its source solver on the preconditioned field,
    so the tables show what learning adds on top of it (none at ``sigma0 = 1``: that is the
    source baseline's own row)."""
    psnr: dict[str, dict[int, float]] = {}
    for family in families:
        if getattr(family, "sigma0", 1.0) != 1.0 and hasattr(family, "source"):
            label = f"{family.source}, sigma0 = {family.sigma0:g}, untrained"
            x1 = jobs.sample(family, family.init(), model, test.x0, test.args)
            psnr.setdefault(label, {})[family.nfe] = jobs.psnr_against(x1, model, test)
    return psnr


def _ground_truth(model: UserModel, families, settings: Settings, progress: bool):
    """The training sets of ``families`` (one solve per distinct ``save_ts``), the validation
    and the test set."""
    sets = jobs.TrainingSets(model, settings, progress)
    for family in sorted(families, key=lambda f: f.save_ts is None):  # paths first
        sets.get(family.save_ts)
    jobs.log(f"ground truth of {settings.n_val} validation and {settings.n_test} test samples")
    val = jobs.noise_set(model, settings.n_val, jobs.VAL, settings, progress=progress)
    test = jobs.noise_set(model, settings.n_test, jobs.TEST, settings, progress=progress)
    return sets, val, test


def _checked(nfes: Sequence[int], baselines: Sequence[str] | None, quick: bool):
    """The demo's NFE values (sorted) and baselines, checked before any work."""
    if baselines is None:
        baselines = ("euler", "midpoint") if quick else solvers.NAMES
    unknown = sorted(set(baselines) - set(solvers.NAMES))
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}; valid names: {solvers.NAMES}.")
    nfes = sorted({int(n) for n in nfes})
    if not nfes or nfes[0] < 2 or any(n % 2 for n in nfes):
        raise ValueError(f"--nfe values must be even and >= 2 (RK2-BST), got {nfes}.")
    return nfes, tuple(baselines)


def _baselines(model: UserModel, test: jobs.NoiseSet, nfes: Sequence[int], names: Sequence[str]):
    """The baselines' test PSNR ``{name: {nfe: dB}}``, samples ``{nfe: {name: x1}}`` and
    ``{"name, NFE n": why not run}``."""
    psnr: dict[str, dict[int, float]] = {}
    samples: dict[int, dict[str, np.ndarray]] = {}
    skipped: dict[str, str] = {}
    for nfe in nfes:
        jobs.log(f"baselines at NFE {nfe}")
        run, why = jobs.baseline_samples(model, test, nfe, names)
        skipped.update({f"{name}, NFE {nfe}": reason for name, reason in why.items()})
        for name, x in run.items():
            psnr.setdefault(name, {})[nfe] = jobs.psnr_against(x, model, test)
        samples[nfe] = run
    return psnr, samples, skipped


def _save(out_dir: Path, model: UserModel, trained: jobs.Trained, test_psnr: float):
    """Save a trained solver and its plain-JSON export under ``out_dir/solvers``; returns its
    ``report.LearnedSolver``."""
    family, result = trained.family, trained.result
    metadata = jobs.metadata(model, trained, test_psnr=test_psnr)
    path = save_solver(out_dir / "solvers" / trained.label, family, result.params, metadata)
    exported = export_solver(path.with_suffix(".json"), family, result.params, metadata)
    record = json.loads(exported.read_text())
    return LearnedSolver(
        label=trained.label,
        optimizer=optimizer_name(family),
        num_params=family.num_params,
        steps=trained.steps,
        batch_size=trained.batch_size,
        best_step=result.best_step,
        val_psnr=result.best_val_psnr,
        wall_s=trained.wall_s,
        model_calls=result.model_calls,
        history=result.history,
        times=np.asarray(record["times"]),
        coefficients={
            key: np.asarray(value) for key, value in family.coefficients(result.params).items()
        },
    )
