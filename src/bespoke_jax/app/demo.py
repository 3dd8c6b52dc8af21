"""The command-line jobs as Python functions: the demo report, train, evaluate, sample, export.

Each job takes a model (``UserModel`` from ``_user_model.load_model``) and plain settings,
logs its progress to stderr, and writes its outputs atomically; ``bespoke-jax`` (``_cli.py``)
only parses options and calls these. Noise set ``k`` of a run (0 training, 1 validation,
2 test) is drawn from ``fold_in(key(seed), k)``; its ground truth is solved once and shared by
every family and NFE of the run (and across runs through the on-disk cache, ``cache_dir``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from bespoke_jax import solvers
from bespoke_jax.app import report as _report
from bespoke_jax.app.user_model import UserModel, load_model
from bespoke_jax.core.metrics import psnr
from bespoke_jax.families.bns import bns
from bespoke_jax.families.bst import bst
from bespoke_jax.families.grid import learned_grid
from bespoke_jax.io.cache import cached_training_data
from bespoke_jax.io.storage import export_solver, load_solver, save_solver
from bespoke_jax.training.loop import train
from bespoke_jax.training.sigma0 import Sigma0Choice, choose_sigma0
from bespoke_jax.truth.data import TrainingData
from bespoke_jax.truth.sharded import sharded_training_data

FAMILY_NAMES = ("bns", "bst", "grid")
TRAIN, VAL, TEST = 0, 1, 2
# The coefficients of an export (``bj.export_solver``) drawn by ``_report.plot_coefficients``.
_PLOTTED = {"bst": ("r", "t", "s", "dt", "ds"), "bns": ("grid", "a", "b", "sigma0")}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and optimisation settings of a run.

    Attributes:
      n_train, n_val, n_test: noise samples for training, validation (the best step is kept)
        and the reported comparison; each set has its own ground truth.
      steps, batch_size, learning_rate: of ``bj.train``; ``None`` takes the family's defaults.
      eval_every: steps between validations.
      seed: the seed of the noise sets.
      cache_dir: an on-disk ground-truth cache (``None``: solve in memory).
    """

    n_train: int = 520
    n_val: int = 128
    n_test: int = 256
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    eval_every: int = 50
    seed: int = 0
    cache_dir: str | None = None


QUICK = Settings(n_train=4, n_val=4, n_test=4, steps=2, batch_size=4, eval_every=1)


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bespoke-jax] {message}", file=sys.stderr, flush=True)


def make_family(family: str, nfe: int, *, init=None, sigma0=None, scheduler=None):
    """A learned solver family from command-line options (``None``: the family's default).

    Args:
      family: ``"bns"``, ``"bst"`` or ``"grid"``.
      nfe: model calls per sample.
      init: BNS: the baseline it starts from (``bj.solvers.NAMES``); BST: its base, ``"rk1"``
        or ``"rk2"`` (default ``"rk2"``); grid: the baseline whose grid is learned
        (default ``"dpm_solver_pp"``).
      sigma0: BNS preconditioning; not a BST option.
      scheduler: the model's scheduler (BNS preconditioning and exponential inits need it).

    Raises:
      ValueError: an unknown family, an option the family does not take, or an NFE it cannot
        spend.
    """
    if family == "bst":
        if sigma0 is not None:
            raise ValueError("--sigma0 (preconditioning) applies to --family bns only.")
        return bst(nfe, base=init or "rk2")
    if family == "bns":
        options = {"init": init, "sigma0": sigma0}
        return bns(nfe, scheduler=scheduler, **{k: v for k, v in options.items() if v is not None})
    if family == "grid":
        if sigma0 is not None:
            raise ValueError("--sigma0 (preconditioning) applies to --family bns only.")
        return learned_grid(nfe, solver=init or "dpm_solver_pp", scheduler=scheduler)
    raise ValueError(f"Unknown family {family!r}; valid families: {', '.join(FAMILY_NAMES)}.")


@dataclasses.dataclass(frozen=True)
class NoiseSet:
    """Noise ``x0 (N, *shape)``, the field's args for it, and its ground truth."""

    x0: np.ndarray
    args: object
    data: TrainingData


def noise_set(model: UserModel, n: int, index: int, settings: Settings, save_ts=None):
    """Noise set ``index`` of ``settings.seed`` (``n`` samples), its args and ground truth."""
    key_x, key_args = jax.random.split(jax.random.fold_in(jax.random.key(settings.seed), index))
    x0 = np.asarray(model.noise(key_x, n))
    args = model.make_args(key_args, n)
    options = {"args": args, "save_ts": save_ts}
    if settings.cache_dir is None:
        data = sharded_training_data(model.velocity, x0, **options)
    else:
        data = cached_training_data(
            model.velocity, x0, cache_dir=settings.cache_dir, model_id=model.identity, **options
        )
    return NoiseSet(x0, args, data)


class TrainingSets:
    """The training noise of a run with one ground-truth solve per distinct ``save_ts``.

    A set that kept a path also serves every family that needs (noise, sample) pairs only.
    """

    def __init__(self, model: UserModel, settings: Settings):
        self.model, self.settings = model, settings
        self.sets: dict[bytes | None, NoiseSet] = {}

    def get(self, save_ts) -> NoiseSet:
        if save_ts is None and self.sets:
            return next(iter(self.sets.values()))
        key = None if save_ts is None else np.asarray(save_ts).tobytes()
        if key not in self.sets:
            n = self.settings.n_train
            log(f"ground truth of {n} training samples" + ("" if key is None else " with paths"))
            self.sets[key] = noise_set(self.model, n, TRAIN, self.settings, save_ts)
        return self.sets[key]


def sampler(family, u: Callable) -> Callable:
    """``jit(params, x0, args) -> x1``: a learned family's sampler on field ``u``."""
    return jax.jit(lambda params, x0, args: family.sample(params, u, x0, args))


def baseline_samples(
    model: UserModel, test: NoiseSet, nfe: int, names: Sequence[str] = solvers.NAMES
) -> tuple[dict, dict]:
    """The baselines ``names`` that can spend ``nfe``, run on the test noise.

    Returns:
      ``({name: x1}, {name: why it was not run})``.
    """
    samples, skipped = {}, {}
    for name in names:
        spec = solvers.SPECS[name]
        try:
            solvers.steps_for(name, nfe)
        except ValueError as err:
            skipped[name] = str(err)
            continue
        if spec.requires_scheduler and model.scheduler is None:
            skipped[name] = f"{name} needs the model's scheduler (add 'scheduler' to the model)."
            continue
        run = jax.jit(
            lambda x0, args, fn=spec.fn: fn(
                model.velocity, x0, nfe=nfe, args=args, scheduler=model.scheduler
            )
        )
        samples[name] = np.asarray(run(test.x0, test.args))
    return samples, skipped


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained solver and what it cost."""

    family: object
    params: object
    history: dict
    best_step: int
    val_psnr: float
    steps: int
    batch_size: int
    wall_s: float
    model_calls: int

    @property
    def label(self) -> str:
        return f"{self.family.name}-{self.family.nfe}"


def fit(model: UserModel, family, sets: TrainingSets, val: NoiseSet, *, progress=True) -> Trained:
    """Train ``family`` on the shared ground truth of ``model`` (``bj.train``)."""
    settings = sets.settings
    train_set = sets.get(family.save_ts)
    steps = settings.steps or family.default_steps
    batch_size = min(settings.batch_size or family.default_batch_size, settings.n_train)
    start = time.perf_counter()
    result = train(
        family,
        model.velocity,
        train_set.x0,
        val.x0,
        args=train_set.args,
        val_args=val.args,
        steps=steps,
        batch_size=batch_size,
        learning_rate=settings.learning_rate,
        eval_every=min(settings.eval_every, steps),
        data_range=model.data_range,
        train_data=train_set.data,
        val_data=val.data,
        progress=progress,
    )
    wall = time.perf_counter() - start
    trained = Trained(
        family,
        result.params,
        result.history,
        result.best_step,
        result.best_val_psnr,
        steps,
        batch_size,
        wall,
        result.model_calls,
    )
    log(
        f"{trained.label}: validation PSNR {result.history['val_psnr'][0]:.2f} -> "
        f"{result.best_val_psnr:.2f} dB (best step {result.best_step}/{steps}, {wall:.0f} s)"
    )
    return trained


def _metadata(model: UserModel, trained: Trained, **extra) -> dict:
    return {
        "model": model.name,
        "model_id": model.identity,
        "guidance": model.guidance,
        "data_range": model.data_range,
        "scheduler": model.scheduler,
        "val_psnr": trained.val_psnr,
        "best_step": trained.best_step,
        "steps": trained.steps,
        "train_wall_s": trained.wall_s,
        "train_model_calls": trained.model_calls,
        **extra,
    }


def validation_set(model: UserModel, settings: Settings) -> NoiseSet:
    """The validation noise of ``settings`` and its ground truth."""
    log(f"ground truth of {settings.n_val} validation samples")
    return noise_set(model, settings.n_val, VAL, settings)


def auto_sigma0(model: UserModel, nfe: int, init, val: NoiseSet) -> Sigma0Choice:
    """``choose_sigma0`` for BNS from ``init`` (default midpoint) on the validation set."""
    choice = choose_sigma0(
        model.velocity,
        val.x0,
        nfe=nfe,
        init=init or "midpoint",
        scheduler=model.scheduler,
        args=val.args,
        x1_val=val.data.x1,
        data_range=model.data_range,
    )
    scores = ", ".join(f"{c:g}: {p:.2f}" for c, p in choice.psnr.items())
    log(f"sigma0 auto: {choice.sigma0:g} (untrained validation PSNR [dB] {scores})")
    return choice


def train_solver(
    model: UserModel,
    family,
    out,
    settings: Settings = Settings(),
    *,
    progress=True,
    val: NoiseSet | None = None,
):
    """Train ``family`` on ``model`` and save it to the directory ``out``.

    ``val``: the validation set when already solved (``validation_set``).

    Returns:
      ``(path, Trained)``.
    """
    sets = TrainingSets(model, settings)
    sets.get(family.save_ts)
    val = validation_set(model, settings) if val is None else val
    trained = fit(model, family, sets, val, progress=progress)
    path = save_solver(out, family, trained.params, _metadata(model, trained))
    log(f"saved {trained.label} to {path}")
    return path, trained


def solver_model(path, model: str | None = None, guidance: float | None = None):
    """A saved solver and its model (the one in its metadata unless ``model`` is given).

    Returns:
      ``(family, params, metadata, UserModel)``.
    """
    family, params, metadata = load_solver(path)
    name = model or metadata.get("model")
    if name is None:
        raise ValueError(f"{path} does not record its model: pass --model.")
    guidance = metadata.get("guidance") if guidance is None else guidance
    return family, params, metadata, load_model(name, guidance=guidance)


def evaluate_solver(
    path, *, model=None, guidance=None, n: int = 256, seed: int = 0, cache_dir=None
) -> dict:
    """PSNR of a saved solver and of every baseline at its NFE against fresh ground truth.

    Returns:
      ``{"nfe", "data_range", "ground_truth_nfe", "psnr": {solver: dB}, "skipped": {...}}``
      with the saved solver first; the test noise is set ``TEST`` of ``seed``.
    """
    family, params, _, user = solver_model(path, model, guidance)
    log(f"ground truth of {n} test samples of {user.name}")
    test = noise_set(user, n, TEST, Settings(seed=seed, cache_dir=cache_dir))
    x1 = sampler(family, user.velocity)(params, test.x0, test.args)
    table = {f"{family.name}-{family.nfe} (saved)": float(psnr(x1, test.data.x1, user.data_range))}
    samples, skipped = baseline_samples(user, test, family.nfe)
    table.update({k: float(psnr(x, test.data.x1, user.data_range)) for k, x in samples.items()})
    return {
        "nfe": family.nfe,
        "data_range": user.data_range,
        "ground_truth_nfe": test.data.nfe,
        "psnr": table,
        "skipped": skipped,
    }


def save_npy(path, array) -> Path:
    """``np.save`` into ``path`` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return _report.atomic_write(path, buffer.getvalue())


def sample_solver(path, out_dir, *, n: int = 64, seed: int = 0, model=None, guidance=None):
    """Samples of a saved solver: ``samples.npy`` ``(n, *shape)`` and, for images or 2-D
    points, ``samples.png``. Returns the paths written."""
    family, params, _, user = solver_model(path, model, guidance)
    key_x, key_args = jax.random.split(jax.random.key(seed))
    x0 = user.noise(key_x, n)
    x1 = np.asarray(sampler(family, user.velocity)(params, x0, user.make_args(key_args, n)))
    out_dir = Path(out_dir)
    written = [save_npy(out_dir / "samples.npy", x1)]
    try:
        title = f"{family.name}, {family.nfe} NFE"
        written.append(_report.plot_samples({title: x1}, out_dir / "samples.png", max_samples=16))
    except ValueError as err:
        log(f"no samples.png: {err}")
    return written


def export_json(path, out) -> Path:
    """The plain-JSON coefficients of a saved solver (``bj.export_solver``), written to ``out``."""
    family, params, metadata = load_solver(path)
    return export_solver(out, family, params, metadata)


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What ``run_demo`` computed; ``report`` holds the same in Markdown."""

    report: Path
    psnr: dict
    trained: tuple
    wall_s: float


def run_demo(
    out_dir="runs/demo",
    *,
    nfes: Sequence[int] = (4, 8, 16),
    steps: int | None = 1000,
    quick: bool = False,
    guidance: float = 2.0,
    sigma0: float = 0.5,
    baselines: Sequence[str] | None = None,
    progress: bool = True,
) -> DemoResult:
    """Learn BNS and RK2-BST solvers for the shipped digits model and write a report.

    The ground truth of each noise set is solved once (and cached in ``out_dir``) for every
    family and NFE. Each learned solver is compared on held-out noise with every baseline that
    can spend the same NFE, saved under ``out_dir/solvers/`` (``bj.save_solver``, with its
    plain-JSON export) and plotted.

    Args:
      out_dir: the report folder: ``report.md``, PNG figures, ``solvers/``.
      nfes: even NFE values (RK2-BST spends two per step).
      steps: optimisation steps per solver (``None``: the families' defaults).
      quick: tiny sizes and two baselines for smoke tests (the numbers mean nothing).
      guidance: classifier-free guidance scale w of the digits model.
      sigma0: BNS preconditioning. On this model at w = 2, 0.5 trained better than 1 and much
        better than 5, the BNS paper's value for its latent text-to-image model at w = 2.
      baselines: the baselines to compare with (default: every one; with ``quick``, Euler and
        midpoint).
      progress: tqdm bars during training.
    """
    start = time.perf_counter()
    if baselines is None:
        baselines = ("euler", "midpoint") if quick else solvers.NAMES
    unknown = sorted(set(baselines) - set(solvers.NAMES))
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}; valid names: {solvers.NAMES}.")
    nfes = sorted({int(n) for n in nfes})
    if not nfes or nfes[0] < 2 or any(n % 2 for n in nfes):
        raise ValueError(f"--nfe values must be even and >= 2 (RK2-BST), got {nfes}.")
    out_dir = Path(out_dir)
    settings = dataclasses.replace(
        QUICK if quick else Settings(steps=steps), cache_dir=str(out_dir / "ground_truth")
    )
    model = load_model("digits", guidance=guidance)
    log(
        f"digits at guidance {guidance:g}; NFE {nfes}; {settings.steps} steps per solver; "
        f"{settings.n_train}/{settings.n_val}/{settings.n_test} train/val/test samples"
    )
    families = [
        family
        for nfe in nfes
        for family in (
            make_family("bns", nfe, sigma0=sigma0, scheduler=model.scheduler),
            make_family("bst", nfe),
        )
    ]
    sets = TrainingSets(model, settings)
    for family in sorted(families, key=lambda f: f.save_ts is None):  # paths first
        sets.get(family.save_ts)
    log(f"ground truth of {settings.n_val} validation and {settings.n_test} test samples")
    val = noise_set(model, settings.n_val, VAL, settings)
    test = noise_set(model, settings.n_test, TEST, settings)
    ground_truth_s = time.perf_counter() - start

    table: dict[str, dict[int, float]] = {}
    grids: dict[int, dict[str, np.ndarray]] = {}
    skipped: dict[str, str] = {}
    for nfe in nfes:
        log(f"baselines at NFE {nfe}")
        samples, why = baseline_samples(model, test, nfe, baselines)
        skipped.update({f"{name}, NFE {nfe}": reason for name, reason in why.items()})
        for name, x in samples.items():
            table.setdefault(name, {})[nfe] = float(psnr(x, test.data.x1, model.data_range))
        grids[nfe] = {"ground truth": np.asarray(test.data.x1), **samples}

    trained, exports = [], {}
    for family in families:
        log(f"training {family.name} for NFE {family.nfe} ({family.num_params} parameters)")
        result = fit(model, family, sets, val, progress=progress)
        x1 = np.asarray(sampler(family, model.velocity)(result.params, test.x0, test.args))
        name = family.name.upper()
        table.setdefault(name, {})[family.nfe] = float(psnr(x1, test.data.x1, model.data_range))
        grids[family.nfe][name] = x1
        metadata = _metadata(model, result, test_psnr=table[name][family.nfe])
        path = save_solver(out_dir / "solvers" / result.label, family, result.params, metadata)
        exported = export_solver(path.with_suffix(".json"), family, result.params, metadata)
        exports[result.label] = json.loads(exported.read_text())
        trained.append(result)

    costs = {
        "ground_truth_s": ground_truth_s,
        "compute_s": time.perf_counter() - start,
        "sets": sets,
        "test": test,
    }
    report = _write_report(out_dir, model, settings, table, grids, trained, exports, skipped, costs)
    wall = time.perf_counter() - start
    log(f"done in {wall:.0f} s: {report}")
    return DemoResult(report, table, tuple(trained), wall)


def _ordered(table: dict) -> dict:
    """Learned solvers first, then the baselines in the registry's order."""
    learned = {k: v for k, v in table.items() if k.lower() in FAMILY_NAMES}
    return {**learned, **{k: v for k, v in table.items() if k not in learned}}


def _write_report(out_dir, model, settings, table, grids, trained, exports, skipped, costs):
    """The demo's figures and ``report.md``; returns the report's path."""
    nfes = sorted(grids)
    table = _ordered(table)
    title = f"digits, guidance {model.guidance:g}"
    _report.plot_psnr_vs_nfe(
        table, out_dir / "psnr_vs_nfe.png", data_range=model.data_range, title=title
    )
    for nfe in nfes:
        shown = {"ground truth": grids[nfe]["ground truth"], **_ordered(grids[nfe])}
        _report.plot_samples(shown, out_dir / f"samples_nfe{nfe}.png", title=f"NFE {nfe}")
    for label, record in exports.items():
        plotted = {k: record[k] for k in _PLOTTED[record["family"]["name"]]}
        _report.plot_coefficients(plotted, out_dir / f"{label}.png", title=f"learned {label}")
    _report.plot_time_grids(
        {label: record["times"] for label, record in exports.items()},
        out_dir / "time_grids.png",
        title="learned time grids (model time)",
    )
    _report.plot_histories({r.label: r.history for r in trained}, out_dir / "training.png")

    test = costs["test"]
    cost_rows = [
        [r.label, r.family.num_params, r.steps, r.best_step, r.val_psnr, r.wall_s, r.model_calls]
        for r in trained
    ]
    cost_header = ["solver", "parameters", "steps", "best step", "val PSNR", "wall s", "calls"]
    gt_calls = sum(s.data.nfe * len(s.x0) for s in costs["sets"].sets.values())
    lines = [
        "# Bespoke solvers for the shipped digits model",
        "",
        f'Model: `bj.pretrained("digits")`, 8x8 handwritten digits in [-1, 1], CondOT flow '
        f"matching, classifier-free guidance w = {model.guidance:g} (one model call is "
        f"{model.forwards_per_call} network passes).",
        f"Test set: {settings.n_test} noise samples (labels 0-9 in turn) never used in "
        f"training. Ground truth: adaptive Dopri5, rtol = atol = 1e-5, up to "
        f"{test.data.nfe} model calls per sample.",
        "PSNR against the ground truth, per sample then averaged, "
        f"**data range R = {model.data_range:g}**.",
        "",
        "## PSNR [dB] vs NFE",
        "",
        _report.psnr_table(table, nfes),
        "BNS: bespoke non-stationary solver (midpoint init, preconditioned with sigma0 = "
        f"{trained[0].family.sigma0:g}); BST: RK2 bespoke scale-time solver. `-`: the solver "
        "cannot spend that NFE.",
        "",
        "![PSNR vs NFE](psnr_vs_nfe.png)",
        "",
        "## Samples",
        "",
        "Same noise and labels in every row: the ground truth, then the learned solvers, then "
        "the baselines.",
        "",
        *(f"![NFE {n}](samples_nfe{n}.png)\n" for n in nfes),
        "## Learned solvers",
        "",
        "Time grids in model time (the diagonal is the uniform grid):",
        "",
        "![time grids](time_grids.png)",
        "",
        "BST: time t(r), scale s(r) and their derivatives on r = j / NFE. BNS: grid (solver "
        "time r), weights a of the noise, lower-triangular weights b of the velocities.",
        "",
        *(f"![{label}]({label}.png)\n" for label in exports),
        "Validation PSNR during training:",
        "",
        "![training](training.png)",
        "",
        "## Training cost",
        "",
        _report.markdown_table(cost_header, cost_rows),
        "calls: sample-forwards of the model (one call on a batch of B counts B), ground truth "
        f"included. Ground truth of the training sets: {gt_calls} sample-forwards; of all sets: "
        f"{costs['ground_truth_s']:.0f} s wall. Adam with the family's warm-up and cosine "
        f"schedule, minibatches of {trained[0].batch_size}, validation every "
        f"{settings.eval_every} steps on {settings.n_val} samples, {settings.n_train} training "
        f"samples. Wall time of everything before this report (compilation included): "
        f"{costs['compute_s']:.0f} s.",
        "",
        "Saved solvers: `solvers/NAME` (`bj.load_solver`, `bespoke-jax eval solvers/NAME`) "
        "and their plain-JSON coefficients `solvers/NAME.json`.",
        "",
        "## Baselines not run",
        "",
        *(f"- {name}: {why}" for name, why in skipped.items()),
        "",
    ]
    return _report.atomic_write(out_dir / "report.md", "\n".join(lines))
