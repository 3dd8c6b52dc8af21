"""The command-line jobs as Python functions: the demo report, train, evaluate, sample, export.

Each job takes a ``UserModel`` (``_user_model.load_model``) and plain settings, prints its
progress to stderr, and writes its outputs atomically. ``bespoke-jax`` (``_cli.py``) only parses
options and calls these.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import _report, solvers
from ._data import TrainingData, make_training_data
from ._metrics import psnr
from ._storage import export_solver, load_solver, save_solver
from ._train import train
from ._user_model import UserModel, load_model

FAMILY_NAMES = ("bns", "bst")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and optimisation settings of a run.

    Attributes:
      n_train, n_val, n_test: noise samples for training, validation (best-step selection) and
        the reported comparison; each gets its own ground truth.
      steps, batch_size, learning_rate, eval_every: of ``bj.train``.
      seed: the noise of set k is drawn from ``fold_in(key(seed), k)``.
    """

    n_train: int = 520
    n_val: int = 128
    n_test: int = 256
    steps: int = 1000
    batch_size: int = 40
    learning_rate: float = 2e-3
    eval_every: int = 50
    seed: int = 0


QUICK = Settings(n_train=8, n_val=4, n_test=4, steps=4, batch_size=4, eval_every=2)


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bespoke-jax] {message}", file=sys.stderr, flush=True)


def make_family(
    family: str,
    nfe: int,
    *,
    init: str | None = None,
    sigma0: float | None = None,
    scheduler=None,
):
    """A learned solver family from command-line style options.

    Args:
      family: ``"bns"`` or ``"bst"``.
      nfe: model calls per sample.
      init: BNS: the baseline solver it starts from (default: the family's); BST: its base
        ``"rk1"`` or ``"rk2"`` (default ``"rk2"``).
      sigma0: BNS preconditioning (default: the family's); not a BST option.
      scheduler: the model's scheduler (BNS preconditioning and scheduler-based inits).

    Raises:
      ValueError: an unknown family or an option the family does not take, or an NFE it
        cannot spend.
    """
    from . import bns, bst

    if family == "bst":
        if sigma0 is not None:
            raise ValueError("--sigma0 (preconditioning) applies to --family bns only.")
        return bst(nfe, base=init or "rk2")
    if family == "bns":
        options = {"init": init, "sigma0": sigma0}
        return bns(nfe, scheduler=scheduler, **{k: v for k, v in options.items() if v is not None})
    raise ValueError(f"Unknown family {family!r}; valid families: {', '.join(FAMILY_NAMES)}.")


@dataclasses.dataclass(frozen=True)
class NoiseSet:
    """Noise, the field's args for it, and its ground truth."""

    x0: jax.Array
    args: object
    data: TrainingData


def noise_set(model: UserModel, n: int, index: int, seed: int, save_ts=None) -> NoiseSet:
    """``n`` noise samples (set ``index`` of ``seed``), their args and ground truth."""
    key = jax.random.fold_in(jax.random.key(seed), index)
    key_x, key_args = jax.random.split(key)
    x0 = model.noise(key_x, n)
    args = model.make_args(key_args, n)
    return NoiseSet(x0, args, make_training_data(model.velocity, x0, args=args, save_ts=save_ts))


def _save_ts_key(save_ts) -> bytes | None:
    return None if save_ts is None else np.asarray(save_ts).tobytes()


class GroundTruthCache:
    """Training sets shared across families: one ground-truth solve per distinct ``save_ts``.

    A set with a saved path also serves every family that needs only (noise, sample) pairs.
    """

    def __init__(self, model: UserModel, settings: Settings):
        self.model, self.settings = model, settings
        self.sets: dict[bytes | None, NoiseSet] = {}

    def get(self, save_ts) -> NoiseSet:
        key = _save_ts_key(save_ts)
        if key is None and self.sets:
            return next(iter(self.sets.values()))
        if key not in self.sets:
            s = self.settings
            log(f"ground truth for {s.n_train} training samples (adaptive Dopri5)")
            self.sets[key] = noise_set(self.model, s.n_train, 0, s.seed, save_ts)
        return self.sets[key]


def sampler(family, u: Callable) -> Callable:
    """``jit(params, x0, args) -> x1`` of a learned family on field ``u``."""
    return jax.jit(lambda params, x0, args: family.sample(params, u, x0, args))


def baseline_samples(model: UserModel, test: NoiseSet, nfe: int) -> tuple[dict, dict]:
    """Every baseline that can spend ``nfe`` on the test noise.

    Returns:
      ``({name: x1}, {name: why it was skipped})``.
    """
    samples, skipped = {}, {}
    for name, spec in solvers.SPECS.items():
        try:
            solvers.steps_for(name, nfe)
        except ValueError as err:
            skipped[name] = str(err)
            continue
        if spec.requires_scheduler and model.scheduler is None:
            skipped[name] = f"{name} needs the model's scheduler"
            continue
        run = jax.jit(
            lambda x0, args, fn=spec.fn: fn(
                model.velocity, x0, nfe=nfe, args=args, scheduler=model.scheduler
            )
        )
        samples[name] = np.asarray(run(test.x0, test.args))
    return samples, skipped


def save_npy(path, array) -> Path:
    """``np.save`` to ``path`` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return _report.atomic_write(path, buffer.getvalue())


@dataclasses.dataclass
class Trained:
    """A trained solver and its costs."""

    label: str
    family: object
    params: object
    history: dict
    best_step: int
    val_psnr: float
    wall_s: float
    model_calls: int


def fit(
    model: UserModel,
    family,
    cache: GroundTruthCache,
    val: NoiseSet,
    settings: Settings,
    *,
    progress: bool = True,
) -> Trained:
    """Train ``family`` on the cached ground truth of ``model`` (``bj.train``)."""
    train_set = cache.get(family.save_ts)
    start = time.perf_counter()
    result = train(
        family,
        model.velocity,
        train_set.x0,
        val.x0,
        args=train_set.args,
        val_args=val.args,
        steps=settings.steps,
        batch_size=min(settings.batch_size, settings.n_train),
        learning_rate=settings.learning_rate,
        eval_every=settings.eval_every,
        data_range=model.data_range,
        key=jax.random.key(settings.seed),
        train_data=train_set.data,
        val_data=val.data,
        progress=progress,
    )
    wall = time.perf_counter() - start
    label = f"{family.name}-{family.nfe}"
    log(
        f"{label}: best validation PSNR {result.best_val_psnr:.2f} dB at step "
        f"{result.best_step}/{settings.steps} ({wall:.0f} s)"
    )
    return Trained(
        label,
        family,
        result.params,
        result.history,
        result.best_step,
        result.best_val_psnr,
        wall,
        result.model_calls,
    )


def _metadata(model: UserModel, trained: Trained, settings: Settings, **extra) -> dict:
    return {
        "model": model.name,
        "guidance": model.guidance,
        "data_range": model.data_range,
        "val_psnr": trained.val_psnr,
        "best_step": trained.best_step,
        "steps": settings.steps,
        "train_wall_s": trained.wall_s,
        "train_model_calls": trained.model_calls,
        **extra,
    }


def train_solver(
    model: UserModel,
    family,
    out,
    settings: Settings = Settings(),
    *,
    progress: bool = True,
) -> tuple[Path, Trained]:
    """Train ``family`` on ``model`` and save it to ``out`` (``bj.save_solver``)."""
    cache = GroundTruthCache(model, settings)
    log(f"ground truth for {settings.n_val} validation samples")
    val = noise_set(model, settings.n_val, 1, settings.seed)
    trained = fit(model, family, cache, val, settings, progress=progress)
    path = save_solver(out, trained.family, trained.params, _metadata(model, trained, settings))
    log(f"saved {trained.label} to {path}")
    return Path(path), trained


def solver_model(path, model: str | None = None, guidance: float | None = None):
    """A saved solver and the model it belongs to (from its metadata unless given).

    Returns:
      ``(family, params, metadata, UserModel)``.
    """
    family, params, metadata = load_solver(path)
    name = model or metadata.get("model")
    if name is None:
        raise ValueError(f"{path} does not record its model: pass --model.")
    guidance = metadata.get("guidance") if guidance is None else guidance
    return family, params, metadata, load_model(name, guidance=guidance)


def evaluate_solver(path, *, model=None, guidance=None, n: int = 256, seed: int = 2) -> dict:
    """PSNR of a saved solver and of every baseline at its NFE, against fresh ground truth.

    Returns:
      ``{"nfe", "data_range", "ground_truth_nfe", "psnr": {solver: dB}, "skipped": {...}}``,
      the learned solver first.
    """
    family, params, metadata, user = solver_model(path, model, guidance)
    log(f"ground truth for {n} test samples of {user.name}")
    test = noise_set(user, n, 2, seed)
    x1 = test.data.x1
    table = {
        f"{family.name} (saved)": float(
            psnr(sampler(family, user.velocity)(params, test.x0, test.args), x1, user.data_range)
        )
    }
    samples, skipped = baseline_samples(user, test, family.nfe)
    table.update({name: float(psnr(x, x1, user.data_range)) for name, x in samples.items()})
    return {
        "nfe": family.nfe,
        "data_range": user.data_range,
        "ground_truth_nfe": test.data.nfe,
        "psnr": table,
        "skipped": skipped,
    }


def sample_solver(path, out_dir, *, n: int = 64, seed: int = 3, model=None, guidance=None):
    """Samples of a saved solver: ``samples.npy`` ``(n, *shape)`` and, when drawable,
    ``samples.png``. Returns the written paths."""
    family, params, _, user = solver_model(path, model, guidance)
    key_x, key_args = jax.random.split(jax.random.key(seed))
    x0 = user.noise(key_x, n)
    x1 = np.asarray(sampler(family, user.velocity)(params, x0, user.make_args(key_args, n)))
    out_dir = Path(out_dir)
    written = [save_npy(out_dir / "samples.npy", x1)]
    try:
        grid = _report.plot_samples(
            {f"{family.name} NFE {family.nfe}": x1},
            out_dir / "samples.png",
            max_samples=min(n, 16),
        )
        written.append(grid)
    except ValueError as err:
        log(f"no image: {err}")
    return written


def export_json(path, out) -> Path:
    """The plain-JSON coefficients of a saved solver (``bj.export_solver``) written to ``out``."""
    family, params, metadata = load_solver(path)
    return Path(export_solver(out, family, params, metadata))


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What ``run_demo`` computed (the report holds the same in Markdown)."""

    report: Path
    psnr: dict
    trained: tuple
    wall_s: float


def run_demo(
    out_dir="runs/demo",
    *,
    nfes: Sequence[int] = (4, 8, 16),
    steps: int | None = None,
    quick: bool = False,
    guidance: float = 2.0,
    sigma0: float = 5.0,
    progress: bool = True,
) -> DemoResult:
    """Learn BNS and RK2-BST solvers for the shipped digits model and write a report.

    One ground truth (per noise set) is shared by every NFE and family. Each learned solver is
    compared on held-out noise with every baseline that can spend the same NFE, saved with
    ``bj.save_solver`` under ``out_dir/solvers/``, and plotted.

    Args:
      out_dir: the report folder (``report.md``, PNG figures, ``solvers/``).
      nfes: the NFE values (even: RK2-BST spends two per step).
      steps: optimisation steps per solver (default ``Settings.steps``).
      quick: tiny sizes for smoke tests (the numbers mean nothing).
      guidance: classifier-free guidance scale w of the digits model.
      sigma0: BNS preconditioning (BNS paper: 5 at guidance 2).
      progress: tqdm bars during training.
    """
    start = time.perf_counter()
    nfes = sorted(set(int(n) for n in nfes))
    if not nfes or nfes[0] < 2 or any(n % 2 for n in nfes):
        raise ValueError(f"Demo NFE values must be even and >= 2 (RK2-BST), got {nfes}.")
    settings = QUICK if quick else Settings()
    if steps is not None:
        settings = dataclasses.replace(settings, steps=int(steps))
    out_dir = Path(out_dir)
    model = load_model("digits", guidance=guidance)
    log(
        f"digits model, guidance {guidance:g}, NFE {nfes}, {settings.steps} steps per solver, "
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
    cache = GroundTruthCache(model, settings)
    for family in families:
        if family.save_ts is not None:
            cache.get(family.save_ts)
    log(f"ground truth for {settings.n_val} validation and {settings.n_test} test samples")
    val = noise_set(model, settings.n_val, 1, settings.seed)
    test = noise_set(model, settings.n_test, 2, settings.seed)
    gt_s = time.perf_counter() - start

    table: dict[str, dict[int, float]] = {}
    grids: dict[int, dict[str, np.ndarray]] = {}
    skipped: dict[str, str] = {}
    for nfe in nfes:
        log(f"baselines at NFE {nfe}")
        samples, why = baseline_samples(model, test, nfe)
        skipped.update(why)
        for name, x in samples.items():
            table.setdefault(name, {})[nfe] = float(psnr(x, test.data.x1, model.data_range))
        grids[nfe] = {"ground truth": np.asarray(test.data.x1), **samples}

    trained = []
    for family in families:
        log(f"training {family.name} NFE {family.nfe} ({family.num_params} parameters)")
        result = fit(model, family, cache, val, settings, progress=progress)
        x1 = sampler(family, model.velocity)(result.params, test.x0, test.args)
        name = family.name.upper()
        table.setdefault(name, {})[family.nfe] = float(
            psnr(x1, test.data.x1, model.data_range)
        )
        grids[family.nfe][name] = np.asarray(x1)
        save_solver(
            out_dir / "solvers" / result.label,
            family,
            result.params,
            _metadata(model, result, settings, test_psnr=table[name][family.nfe]),
        )
        trained.append(result)

    report = _write_demo_report(
        out_dir, model, settings, table, grids, trained, skipped, test, gt_s, cache
    )
    wall = time.perf_counter() - start
    log(f"done in {wall:.0f} s: {report}")
    return DemoResult(report, table, tuple(trained), wall)


def _ordered(table: dict) -> dict:
    """Learned solvers first, then baselines in the registry's order."""
    learned = {k: v for k, v in table.items() if k.lower() in FAMILY_NAMES}
    return {**learned, **{k: v for k, v in table.items() if k not in learned}}


def _write_demo_report(out_dir, model, settings, table, grids, trained, skipped, test, gt_s, cache):
    nfes = sorted(grids)
    table = _ordered(table)
    _report.plot_psnr_vs_nfe(
        table,
        out_dir / "psnr_vs_nfe.png",
        data_range=model.data_range,
        title=f"digits, guidance {model.guidance:g}",
    )
    for nfe in nfes:
        _report.plot_samples(grids[nfe], out_dir / f"samples_nfe{nfe}.png", title=f"NFE {nfe}")
    for result in trained:
        _report.plot_coefficients(
            result.family.coefficients(result.params),
            out_dir / f"{result.label}.png",
            title=f"learned {result.label}",
        )
    _report.plot_time_grids(
        {r.label: r.family.coefficients(r.params)["t"] for r in trained},
        out_dir / "time_grids.png",
        title="learned time grids",
    )
    _report.plot_histories({r.label: r.history for r in trained}, out_dir / "training.png")

    train_gt = sum(s.data.nfe * len(s.data) for s in cache.sets.values())
    cost_rows = [
        [
            r.label,
            r.family.num_params,
            r.best_step,
            r.val_psnr,
            r.wall_s,
            r.model_calls,
        ]
        for r in trained
    ]
    skipped_lines = "".join(f"- {name}: {why}\n" for name, why in sorted(skipped.items()))
    cfg = model.forwards_per_call
    text = f"""# Bespoke solvers for the shipped digits model

Model: `bj.pretrained("digits")` (8x8 handwritten digits in [-1, 1], CondOT flow matching),
classifier-free guidance w = {model.guidance:g}: one model call (NFE) is {cfg} network passes.
Test set: {settings.n_test} noise samples, labels 0-9 in turn, never seen in training.
Ground truth: adaptive Dopri5 (rtol = atol = 1e-5), up to {test.data.nfe} model calls per sample.
PSNR against the ground truth, per sample then averaged, **data range R = {model.data_range:g}**.

## PSNR [dB] vs NFE

{_report.psnr_table(table, nfes)}
BNS: bespoke non-stationary solver (midpoint init, preconditioning sigma0 as configured);
BST: RK2 bespoke scale-time solver. `-`: the solver cannot spend that NFE.

![PSNR vs NFE](psnr_vs_nfe.png)

## Samples (same noise and labels, ground truth first)

{"".join(f"![NFE {n}](samples_nfe{n}.png)\n" for n in nfes)}
## Learned solvers

Time grids ![time grids](time_grids.png)

{"".join(f"![{r.label}]({r.label}.png)\n" for r in trained)}
Validation PSNR during training: ![training](training.png)

## Training cost

{_report.markdown_table(
    ["solver", "parameters", "best step", "val PSNR", "wall s", "model calls"], cost_rows
)}
Model calls count sample-forwards (one call on a batch of B counts B), ground truth included.
Ground truth of all sets: {gt_s:.0f} s wall ({train_gt} sample-forwards for training sets).
Settings: {settings.steps} steps, batch {settings.batch_size}, Adam learning rate
{settings.learning_rate:g}, validation every {settings.eval_every} steps on {settings.n_val}
samples, {settings.n_train} training samples.

Saved solvers: `solvers/` (reload with `bj.load_solver`, or
`bespoke-jax eval {out_dir / "solvers" / trained[-1].label}`).

## Baselines not run

{skipped_lines or "none"}
"""
    return _report.atomic_write(out_dir / "report.md", text)


def dumps(value) -> str:
    """JSON with NaN as null."""
    return json.dumps(
        value, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x
    )
