"""The command-line jobs as Python functions: train, evaluate, sample and export a solver.

Each job takes a model (``UserModel`` from ``user_model.load_model``) or a saved solver's
directory and plain settings, logs its progress to stderr, writes its outputs atomically and
returns a small record; ``bespoke-jax`` (``cli.py``) only parses options and calls these, and the
demo (``demo.py``) builds on the same pieces. Noise set ``k`` of a run (0 training,
1 validation, 2 test) is drawn from ``fold_in(key(seed), k)``; its ground truth is solved once
and shared by every family and NFE of the run (and across runs through the on-disk cache,
``cache_dir``).
"""

from __future__ import annotations

import dataclasses
import io
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from bespoke_jax import solvers
from bespoke_jax.app import figures
from bespoke_jax.app.defaults import FAMILY_NAMES, Settings, default_steps
from bespoke_jax.app.report import atomic_write, save_figure
from bespoke_jax.app.trust import chosen_model
from bespoke_jax.app.user_model import UserModel, load_model
from bespoke_jax.core.checks import check_train_settings
from bespoke_jax.core.metrics import psnr
from bespoke_jax.families.bns import bns
from bespoke_jax.families.bst import BASES, bst
from bespoke_jax.families.grid import learned_grid
from bespoke_jax.io.cache import cached_training_data
from bespoke_jax.io.outputs import check_writable, claim_dir, claim_run_dir
from bespoke_jax.io.storage import (
    CHECKPOINTS_DIR,
    export_solver,
    load_solver,
    save_solver,
    solver_dir_is_ours,
)
from bespoke_jax.training.loop import TrainResult, train
from bespoke_jax.training.sigma0 import Sigma0Choice, choose_sigma0
from bespoke_jax.truth.data import TrainingData
from bespoke_jax.truth.sharded import sharded_training_data

TRAIN, VAL, TEST = 0, 1, 2


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bespoke-jax] {message}", file=sys.stderr, flush=True)


def make_family(family: str, nfe: int, *, init=None, sigma0=None, scheduler=None, guidance=None):
    """A learned solver family from command-line options (``None``: the family's default).

    Args:
      family: ``"bns"``, ``"bst"`` or ``"grid"``.
      nfe: model calls per sample.
      init: BNS: the baseline it starts from (``bj.solvers.NAMES``); BST: its base, ``"rk1"``
        or ``"rk2"`` (default ``"rk2"``); grid: the baseline whose time grid is learned
        (default ``"dpm_solver_pp"``).
      sigma0: BNS preconditioning; not an option of the other families.
      scheduler: the model's scheduler (BNS preconditioning and exponential inits need it).
      guidance: BNS: ``(w_min, w_max)``, one solver for that range of guidance scales.

    Raises:
      ValueError: an unknown family, an option the family does not take, or an NFE it cannot
        spend.
    """
    if family not in FAMILY_NAMES:
        raise ValueError(f"Unknown family {family!r}; valid families: {', '.join(FAMILY_NAMES)}.")
    inits = BASES if family == "bst" else solvers.NAMES
    if init is not None and init not in inits:
        raise ValueError(f"--family {family} takes --init {' | '.join(inits)}, not {init!r}.")
    if family != "bns" and sigma0 is not None:
        raise ValueError("--sigma0 (preconditioning) applies to --family bns only.")
    if family != "bns" and guidance is not None:
        raise ValueError("--guidance-range applies to --family bns only.")
    if family == "bst":
        return bst(nfe, base=init or "rk2")
    if family == "grid":
        return learned_grid(nfe, solver=init or "dpm_solver_pp", scheduler=scheduler)
    options = {"init": init, "sigma0": sigma0, "guidance": guidance}
    return bns(nfe, scheduler=scheduler, **{k: v for k, v in options.items() if v is not None})


def with_guidance_draws(model: UserModel, family) -> UserModel:
    """``model`` whose args give every sample its own guidance scale, drawn over
    ``family.guidance`` (``family.draw_guidance``): training and validation over the range."""

    def make_args(key, n):
        key_args, key_w = jax.random.split(key)
        args = model.make_args(key_args, n)
        if not isinstance(args, dict) or "guidance" not in args:
            raise ValueError(
                f"--guidance-range needs a model whose args hold 'guidance' (the scale w of "
                f"bj.guided); {model.name!r} gives {type(args).__name__} args."
            )
        return {**args, "guidance": family.draw_guidance(key_w, n)}

    return dataclasses.replace(model, make_args=make_args, guidance=list(family.guidance))


@dataclasses.dataclass(frozen=True)
class NoiseSet:
    """Noise ``x0 (N, *shape)``, the field's args for it, and its ground truth."""

    x0: np.ndarray
    args: object
    data: TrainingData


def noise_set(
    model: UserModel, n: int, index: int, settings: Settings, save_ts=None, *, progress=True
) -> NoiseSet:
    """Noise set ``index`` of ``settings.seed`` (``n`` samples), its args and ground truth
    (``progress``: a bar of the chunks solved)."""
    key_x, key_args = jax.random.split(jax.random.fold_in(jax.random.key(settings.seed), index))
    x0 = np.asarray(model.noise(key_x, n))
    args = model.make_args(key_args, n)
    options = {"args": args, "save_ts": save_ts, "progress": progress}
    if settings.cache_dir is None:
        data = sharded_training_data(model.velocity, x0, **options)
    else:
        data = cached_training_data(
            model.velocity, x0, cache_dir=settings.cache_dir, model_id=model.identity, **options
        )
    return NoiseSet(x0, args, data)


class TrainingSets:
    """The training noise of a run with one ground-truth solve per distinct ``save_ts``.

    A set that kept a path also serves every family that needs (noise, sample) pairs only;
    ``progress`` draws a bar of each solve's chunks.
    """

    def __init__(self, model: UserModel, settings: Settings, progress: bool = True):
        self.model, self.settings, self.progress = model, settings, progress
        self.sets: dict[bytes | None, NoiseSet] = {}

    def get(self, save_ts) -> NoiseSet:
        if save_ts is None and self.sets:
            return next(iter(self.sets.values()))
        key = None if save_ts is None else np.asarray(save_ts).tobytes()
        if key not in self.sets:
            n = self.settings.n_train
            log(f"ground truth of {n} training samples" + ("" if key is None else " with paths"))
            self.sets[key] = noise_set(
                self.model, n, TRAIN, self.settings, save_ts, progress=self.progress
            )
        return self.sets[key]

    @property
    def model_calls(self) -> int:
        """Sample-forwards the ground truth of the training sets cost."""
        return sum(s.data.nfe * len(s.x0) for s in self.sets.values())


def sample(family, params, model: UserModel, x0, args) -> np.ndarray:
    """A learned solver's samples ``(N, *shape)`` from noise ``x0 (N, *shape)``."""
    run = jax.jit(lambda params, x0, args: family.sample(params, model.velocity, x0, args))
    return np.asarray(run(params, x0, args))


def baseline_samples(
    model: UserModel, test: NoiseSet, nfe: int, names: Sequence[str] = solvers.NAMES
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
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


def psnr_against(x1: np.ndarray, model: UserModel, noise: NoiseSet) -> float:
    """PSNR [dB] of samples ``x1`` of ``noise`` against its ground truth."""
    return float(psnr(x1, noise.data.x1, model.data_range))


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained solver: ``bj.train``'s result, the settings it ran with and its wall time.

    Attributes:
      family: the learned solver family.
      result: ``bj.train``'s ``TrainResult`` (params, history, best step, model calls).
      steps, batch_size: the optimisation settings used.
      wall_s: training wall time (compilation included).
      path: where the solver was saved (``None``: not saved).
    """

    family: object
    result: TrainResult
    steps: int
    batch_size: int
    wall_s: float
    path: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.family.name}-{self.family.nfe}"


def fit(
    model: UserModel,
    family,
    sets: TrainingSets,
    val: NoiseSet,
    *,
    progress=True,
    checkpoint_dir=None,
) -> Trained:
    """Train ``family`` on the shared ground truth of ``model`` (``bj.train``), resumable from
    the checkpoints in ``checkpoint_dir`` (``None``: none kept)."""
    settings = sets.settings
    train_set = sets.get(family.save_ts)
    steps = settings.steps or default_steps(family)
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
        checkpoint_dir=checkpoint_dir,
    )
    trained = Trained(family, result, steps, batch_size, time.perf_counter() - start)
    log(
        f"{trained.label}: validation PSNR {result.history['val_psnr'][0]:.2f} -> "
        f"{result.best_val_psnr:.2f} dB (best step {result.best_step}/{steps}, "
        f"{trained.wall_s:.0f} s)"
    )
    return trained


def metadata(model: UserModel, trained: Trained, **extra) -> dict:
    """What a saved solver records of its model and its training."""
    return {
        "model": model.name,
        "model_id": model.identity,
        "guidance": model.guidance,
        "data_range": model.data_range,
        "scheduler": model.scheduler,
        "val_psnr": trained.result.best_val_psnr,
        "best_step": trained.result.best_step,
        "steps": trained.steps,
        "train_wall_s": trained.wall_s,
        "train_model_calls": trained.result.model_calls,
        **extra,
    }


def validation_set(model: UserModel, settings: Settings, progress: bool = True) -> NoiseSet:
    """The validation noise of ``settings`` and its ground truth."""
    log(f"ground truth of {settings.n_val} validation samples")
    return noise_set(model, settings.n_val, VAL, settings, progress=progress)


def auto_sigma0(model: UserModel, nfe: int, init, val: NoiseSet) -> Sigma0Choice:
    """``bj.choose_sigma0`` for BNS from ``init`` (default midpoint) on the validation set."""
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


def claim_solver_out(out, *, overwrite=False, resume=False) -> Path:
    """Check the solver directory ``out`` before any work (``bj.io.outputs.claim_dir``): new,
    empty, a saved solver or its training's checkpoints, or (``overwrite``) a folder of the
    user's, whose files are kept. ``resume`` requires checkpoints there.

    Returns:
      Its checkpoint directory.
    """
    names = ("solver.json", "params", CHECKPOINTS_DIR)
    path = check_writable(claim_dir(out, names, solver_dir_is_ours, overwrite=overwrite), "--out")
    checkpoints = path / CHECKPOINTS_DIR
    if resume and not checkpoints.is_dir():
        raise ValueError(
            f"--resume: {path} holds no training checkpoints; drop --resume to start a run."
        )
    return checkpoints


def train_solver(
    model: UserModel,
    family,
    out,
    settings: Settings | None = None,
    *,
    progress=True,
    val: NoiseSet | None = None,
    overwrite=False,
    resume=False,
) -> Trained:
    """Train ``family`` on ``model`` and save it to the directory ``out``.

    ``settings`` default to ``Settings()``; ``val`` is the validation set when already solved
    (``validation_set``). The training keeps checkpoints in ``out/checkpoints``: the same call
    after an interruption continues where it stopped and ends with the same parameters
    (``resume``: require that there is one to continue).

    Returns:
      The trained solver, with ``path`` the directory written.
    """
    checkpoints = claim_solver_out(out, overwrite=overwrite, resume=resume)
    settings = Settings() if settings is None else settings
    check_train_settings(settings.steps, settings.learning_rate, model.data_range)
    sets = TrainingSets(model, settings, progress)
    sets.get(family.save_ts)
    val = validation_set(model, settings, progress) if val is None else val
    trained = fit(model, family, sets, val, progress=progress, checkpoint_dir=checkpoints)
    record = metadata(model, trained)
    path = save_solver(out, family, trained.result.params, record, overwrite=overwrite)
    log(f"saved {trained.label} to {path}")
    return dataclasses.replace(trained, path=path)


def solver_model(
    path, model: str | None = None, guidance: float | None = None, *, trust_model=False, force=False
):
    """A saved solver and its model: the one it records unless ``model`` is given.

    A recorded entry point (code) is run only when named again or with ``trust_model``;
    another model than the recorded one only with ``force`` (``trust.chosen_model``).

    Returns:
      ``(family, params, UserModel)``.
    """
    family, params, record = load_solver(path)
    recorded = record.get("model")
    name = chosen_model(path, recorded, model, trust_model=trust_model, force=force)
    served = getattr(family, "guidance", None)
    if served is not None:
        if guidance is None:
            raise ValueError(
                f"{path} serves guidance scales in [{served[0]:g}, {served[1]:g}]: pass "
                f"--guidance w."
            )
        family.check_guidance(guidance)
    guidance = record.get("guidance") if guidance is None else guidance
    return family, params, load_model(name, guidance=guidance)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """PSNR of a saved solver next to the baselines at its NFE.

    Attributes:
      nfe: model calls per sample.
      n: test samples.
      data_range: R of the PSNR.
      ground_truth_nfe: the most model calls the adaptive ground truth spent on a sample.
      psnr: ``{solver: dB}``, the saved solver (``"bns-8 (saved)"``) first.
      skipped: ``{baseline: why it was not run}``.
    """

    nfe: int
    n: int
    data_range: float
    ground_truth_nfe: int
    psnr: dict[str, float]
    skipped: dict[str, str]


def evaluate_solver(
    path,
    *,
    model=None,
    guidance=None,
    n: int = 256,
    seed: int = 0,
    cache_dir=None,
    trust_model=False,
    force=False,
) -> Evaluation:
    """PSNR of a saved solver and of every baseline at its NFE against fresh ground truth of
    test noise set ``TEST`` of ``seed``; ``trust_model``, ``force`` as in ``solver_model``."""
    family, params, user = solver_model(path, model, guidance, trust_model=trust_model, force=force)
    log(f"ground truth of {n} test samples of {user.name}")
    test = noise_set(user, n, TEST, Settings(seed=seed, cache_dir=cache_dir))
    x1 = sample(family, params, user, test.x0, test.args)
    table = {f"{family.name}-{family.nfe} (saved)": psnr_against(x1, user, test)}
    samples, skipped = baseline_samples(user, test, family.nfe)
    table.update({name: psnr_against(x, user, test) for name, x in samples.items()})
    return Evaluation(family.nfe, n, user.data_range, test.data.nfe, table, skipped)


def save_npy(path, array) -> Path:
    """``np.save`` into ``path`` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return atomic_write(path, buffer.getvalue())


def sample_solver(
    path,
    out_dir,
    *,
    n: int = 64,
    seed: int = 0,
    model=None,
    guidance=None,
    trust_model=False,
    force=False,
    overwrite=False,
) -> list[Path]:
    """Samples of a saved solver: ``samples.npy`` ``(n, *shape)`` and, for images or 2-D
    points, ``samples.png``, into ``out_dir`` (new, empty, earlier samples, or with
    ``overwrite`` a folder of the user's, whose other files are kept). Returns the paths
    written; ``trust_model``, ``force`` as in ``solver_model``."""
    names = ("samples.npy", "samples.png")
    claim_run_dir(out_dir, "samples", names, overwrite=overwrite)
    family, params, user = solver_model(path, model, guidance, trust_model=trust_model, force=force)
    key_x, key_args = jax.random.split(jax.random.key(seed))
    x1 = sample(family, params, user, user.noise(key_x, n), user.make_args(key_args, n))
    out_dir = Path(out_dir)
    written = [save_npy(out_dir / "samples.npy", x1)]
    try:
        title = f"{family.name}, {family.nfe} NFE"
        figure = figures.samples({title: x1}, max_samples=16)
    except ValueError as err:
        log(f"no samples.png: {err}")
    else:
        written.append(save_figure(figure, out_dir / "samples.png"))
    return written


def export_json(path, out, *, overwrite=False) -> Path:
    """The plain-JSON coefficients of a saved solver (``bj.export_solver``), written to ``out``
    (new, an earlier export, or any file with ``overwrite``)."""
    family, params, record = load_solver(path)
    return export_solver(out, family, params, record, overwrite=overwrite)
