"""The ``bespoke-jax`` command: a thin click layer over the jobs (``jobs.py``) and the demo.

Options and help texts need only click: JAX and the package's internals are imported inside the
command bodies, so ``bespoke-jax --help`` and ``bespoke-jax COMMAND --help`` start fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

import click

from bespoke_jax.app.defaults import (
    DEFAULT_GUIDANCE,
    DEMO_MODELS,
    DEMO_SIGMA0,
    FAMILY_NAMES,
    QUICK,
    Settings,
    optimizer_name,
)

# Spelled out here so that help needs no JAX; tests/test_cli.py keeps each equal to its source.
# bj.solvers.NAMES: the baselines a BNS solver can start from.
BNS_INITS = ("euler", "midpoint", "heun", "rk4", "ipndm", "ddim", "dpm_solver_pp", "unipc", "edm")
BST_BASES = ("rk1", "rk2")  # the base Runge-Kutta methods of bj.bst
OPTIMIZERS = {
    "bns": "Prodigy",
    "bst": "Adam",
    "grid": "Adam",
}  # defaults.optimizer_name of each family

_MODEL_HELP = (
    "A shipped model ('digits', 'checkerboard') or an entry point 'module:function' "
    "(or 'path/to/file.py:function') returning {'velocity', 'shape', ...}; see README."
)
_OPTIMIZER_TEXT = ", ".join(f"{family}: {name}" for family, name in OPTIMIZERS.items())

# Python keyword spellings in the package's messages, and the flags that set them here.
_FLAGS = {"nfe": "--nfe", "base": "--init", "init": "--init", "sigma0": "--sigma0"}
_KEYWORD = re.compile(r"\b(" + "|".join(_FLAGS) + r")=(['\"]?)([\w.+-]+)\2")


def cli_spelling(message: str) -> str:
    """``message`` with Python keywords written as this command's flags (``base='rk1'`` ->
    ``--init rk1``, ``overwrite=True`` -> ``--overwrite``)."""
    message = message.replace("overwrite=True", "--overwrite")
    return _KEYWORD.sub(lambda match: f"{_FLAGS[match[1]]} {match[3]}", message)


class Failure(click.ClickException):
    """A failed command: one ``Error: ...`` line, exit status 2."""

    exit_code = 2


INTERRUPTED = 130  # the shell's status of a command ended by Ctrl-C (128 + SIGINT)


@contextlib.contextmanager
def _clear_errors(interrupted: str = "Interrupted."):
    """Turn every error into one ``Error:`` line naming the problem (exit 2), and Ctrl-C into
    the ``interrupted`` line (exit 130); ``bespoke-jax --debug`` shows tracebacks instead."""
    try:
        yield
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        click.echo(interrupted, err=True)
        raise SystemExit(INTERRUPTED) from None
    except Exception as err:
        if click.get_current_context().find_root().params.get("debug"):
            raise
        text = (str(err).strip().splitlines() or [""])[0]
        if not isinstance(err, ValueError | RuntimeError | OSError):
            text = f"{type(err).__name__}: {text} (bespoke-jax --debug ... shows where)"
        raise Failure(cli_spelling(text)) from None


def _model_option(required: bool):
    return click.option("--model", required=required, help=_MODEL_HELP)


_guidance_option = click.option(
    "--guidance",
    type=float,
    help=f"Classifier-free guidance w (digits: {DEFAULT_GUIDANCE:g} by default; an entry point "
    "gets guidance=w).",
)
_cache_option = click.option(
    "--cache-dir", help="Keep ground-truth solves here and reuse them across runs."
)
_steps_option = click.option(
    "--steps",
    type=click.IntRange(min=1),
    help="Optimisation steps per solver [the family's default, as in bj.train].",
)


_overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Write into an existing folder that bespoke-jax did not write; its files are kept "
    "(one under a name the command writes is refused).",
)
_trust_model_option = click.option(
    "--trust-model",
    is_flag=True,
    help="Run the model entry point the solver records: this imports and runs that Python file. "
    "Without it (or --model naming it), a recorded entry point is refused.",
)
_force_option = click.option(
    "--force", is_flag=True, help="Use --model although the solver was trained for another."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bespoke-jax")
@click.option("--debug", is_flag=True, help="Show the traceback of an error, not one line.")
def main(debug):
    """Learn fast few-step ODE samplers (bespoke solvers) for pre-trained flow models.

    \b
    Examples:
      bespoke-jax demo                      # the digits model, report in runs/demo/
      bespoke-jax train --model digits --family bns --nfe 8 --out runs/bns8
      bespoke-jax eval runs/bns8            # PSNR next to every baseline at NFE 8
      bespoke-jax sample runs/bns8 --n 64 --out runs/bns8-samples
      bespoke-jax export runs/bns8 --out runs/bns8.json
    """


@main.command()
@click.option("--out", default="runs/demo", show_default=True, help="Report folder.")
@click.option(
    "--model",
    type=click.Choice(sorted(DEMO_MODELS)),
    default="digits",
    show_default=True,
    help="The shipped model.",
)
@click.option(
    "--nfe",
    "nfes",
    type=int,
    multiple=True,
    help="Even NFE values (repeatable) [digits: 4, 8, 16; patches16: 8].",
)
@_steps_option
@click.option("--quick", is_flag=True, help="Tiny settings for smoke tests (meaningless numbers).")
@click.option(
    "--guidance", default=DEFAULT_GUIDANCE, show_default=True, help="Classifier-free guidance w."
)
@click.option(
    "--sigma0",
    type=float,
    help=f"BNS preconditioning sigma0 [digits: {DEMO_SIGMA0:g}; patches16: "
    f"{DEMO_MODELS['patches16'].sigma0:g}].",
)
@_overwrite_option
def demo(out, model, nfes, steps, quick, guidance, sigma0, overwrite):
    """Train BNS and RK2-BST solvers for a shipped model and write a report.

    Solves the ground truth once, trains one solver per family and NFE, runs every baseline
    at the same NFE, saves the solvers and writes report.md with plots into --out.

    \b
    Examples:
      bespoke-jax demo
      bespoke-jax demo --nfe 4 --nfe 8 --steps 300 --out runs/demo-small
      bespoke-jax demo --model patches16 --out runs/demo-patches16
      bespoke-jax demo --quick --out runs/smoke
    """
    with _clear_errors():
        from bespoke_jax.app.demo import run_demo

        result = run_demo(
            out,
            model=model,
            nfes=nfes or None,
            steps=steps,
            quick=quick,
            guidance=guidance,
            sigma0=sigma0,
            overwrite=overwrite,
        )
    click.echo(f"Report: {result.report} ({result.wall_s:.0f} s)")


def _sigma0(sigma0, family, user, nfe, init, settings):
    """``--sigma0`` as a number, or chosen on the validation set (then also returned) for
    ``auto``; ``(sigma0, validation set or None)``."""
    if sigma0 is None or sigma0 != "auto":
        try:
            return (None if sigma0 is None else float(sigma0)), None
        except ValueError:
            raise ValueError(f"--sigma0 must be a number or 'auto', got {sigma0!r}.") from None
    if family != "bns":
        raise ValueError("--sigma0 (preconditioning) applies to --family bns only.")
    from bespoke_jax.app import jobs

    val = jobs.validation_set(user, settings)
    choice = jobs.auto_sigma0(user, nfe, init, val)
    click.echo(f"sigma0 auto: chose {choice.sigma0:g}")
    return choice.sigma0, val


@main.command(name="train")
@_model_option(required=True)
@click.option("--family", type=click.Choice(FAMILY_NAMES), default="bns", show_default=True)
@click.option("--nfe", type=int, required=True, help="Model calls per sample.")
@click.option(
    "--init",
    type=click.Choice(BNS_INITS + BST_BASES),
    metavar="NAME",
    help=f"BNS: the baseline it starts from, one of {', '.join(BNS_INITS)} [midpoint]; "
    f"BST: its base, {' or '.join(BST_BASES)} [rk2]; grid: the baseline whose time grid is "
    "learned [dpm_solver_pp].",
)
@click.option(
    "--sigma0",
    help=f"BNS preconditioning: a number, or 'auto' for the best untrained validation PSNR "
    f"among a few (bj.choose_sigma0) (digits at guidance {DEFAULT_GUIDANCE:g}: "
    f"{DEMO_SIGMA0:g}) [1].",
)
@_guidance_option
@click.option(
    "--guidance-range",
    type=float,
    nargs=2,
    help="BNS: one solver for every guidance w in [W_MIN, W_MAX] (w per sample, arcsine law).",
)
@_steps_option
@click.option(
    "--n-train", type=click.IntRange(min=1), help=f"Training noise samples [{Settings.n_train}]."
)
@click.option(
    "--n-val", type=click.IntRange(min=1), help=f"Validation noise samples [{Settings.n_val}]."
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Minibatch [family default].")
@click.option(
    "--lr",
    "learning_rate",
    type=float,
    help=f"Train with Adam at this learning rate instead of the family's default optimizer "
    f"({_OPTIMIZER_TEXT}; each with a warm-up and cosine decay).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise.")
@_cache_option
@click.option("--quick", is_flag=True, help="Tiny settings for smoke tests.")
@click.option(
    "--out",
    required=True,
    help="The directory to save the solver in; it also keeps the training's checkpoints.",
)
@_overwrite_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted training in --out (the same command does it by itself; "
    "this flag makes a missing checkpoint an error).",
)
def train_command(
    model,
    family,
    nfe,
    init,
    sigma0,
    guidance,
    guidance_range,
    quick,
    out,
    overwrite,
    resume,
    **options,
):
    """Train a learned solver for a model and save it.

    \b
    Examples:
      bespoke-jax train --model digits --family bns --nfe 8 --sigma0 0.5 --out runs/bns8
      bespoke-jax train --model digits --guidance 0 --family bst --nfe 8 --out runs/bst8
      bespoke-jax train --model my_model.py:make --nfe 6 --steps 500 --out runs/mine
      bespoke-jax train --model digits --nfe 8 --guidance-range 0 4 --out runs/bns8-range
    """
    stopped = (
        f"Interrupted: the last finished step is checkpointed in {out}; run the same command "
        f"(or add --resume) to continue."
    )
    with _clear_errors(stopped):
        from bespoke_jax.app import jobs
        from bespoke_jax.app.user_model import load_model

        jobs.claim_solver_out(out, overwrite=overwrite, resume=resume)
        if guidance_range and guidance is not None:
            raise ValueError("Give --guidance (one scale) or --guidance-range, not both.")
        user = load_model(model, guidance=guidance_range[1] if guidance_range else guidance)
        if guidance_range:  # training and validation draw one w per sample over the range
            ranged = jobs.make_family(
                family, nfe, init=init, scheduler=user.scheduler, guidance=guidance_range
            )
            user = jobs.with_guidance_draws(user, ranged)
        given = {name: value for name, value in options.items() if value is not None}
        settings = dataclasses.replace(QUICK if quick else Settings(), **given)
        sigma0, val = _sigma0(sigma0, family, user, nfe, init, settings)
        solver = jobs.make_family(
            family, nfe, init=init, sigma0=sigma0, scheduler=user.scheduler,
            guidance=guidance_range or None,
        )  # fmt: skip
        trained = jobs.train_solver(
            user, solver, out, settings, val=val, overwrite=overwrite, resume=resume
        )
    optimizer = optimizer_name(solver, settings.learning_rate)
    click.echo(
        f"Saved {trained.label} to {trained.path}: validation PSNR "
        f"{trained.result.best_val_psnr:.2f} dB (data range {user.data_range:g}) after "
        f"{trained.steps} steps of {optimizer}, {trained.wall_s:.0f} s, "
        f"{trained.result.model_calls} sample-forwards."
    )


@main.command(name="eval")
@click.argument("solver", type=click.Path(exists=True, file_okay=False))
@_model_option(required=False)
@_guidance_option
@click.option("--n", type=click.IntRange(min=1), default=Settings.n_test, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test noise.")
@_cache_option
@_trust_model_option
@_force_option
def eval_command(solver, model, guidance, n, seed, cache_dir, trust_model, force):
    """PSNR of a saved solver next to every baseline at its NFE.

    Uses the model and guidance saved with the solver unless --model / --guidance are given;
    a recorded entry point (a Python file) runs only with --model naming it or --trust-model.
    PSNR is against a fresh adaptive ground truth of --n noise samples (the test set of --seed,
    never used in training).

    \b
    Examples:
      bespoke-jax eval runs/bns8
      bespoke-jax eval runs/bns8 --guidance 3 --n 512
    """
    with _clear_errors():
        from bespoke_jax.app.jobs import evaluate_solver
        from bespoke_jax.app.report import markdown_table

        result = evaluate_solver(
            solver,
            model=model,
            guidance=guidance,
            n=n,
            seed=seed,
            cache_dir=cache_dir,
            trust_model=trust_model,
            force=force,
        )
    click.echo(
        f"NFE {result.nfe}, {result.n} samples, ground truth up to {result.ground_truth_nfe} "
        f"model calls; PSNR [dB] with data range {result.data_range:g}\n"
    )
    click.echo(markdown_table(["solver", "PSNR"], list(result.psnr.items())))


@main.command(name="sample")
@click.argument("solver", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out", required=True, help="Folder for samples.npy (and samples.png: images, 2-D points)."
)
@click.option("--n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_model_option(required=False)
@_guidance_option
@_trust_model_option
@_force_option
@_overwrite_option
def sample_command(solver, out, n, seed, model, guidance, trust_model, force, overwrite):
    """Draw samples with a saved solver: samples.npy, and a grid image samples.png for images
    and 2-D points.

    \b
    Examples:
      bespoke-jax sample runs/bns8 --out runs/bns8-samples
      bespoke-jax sample runs/bns8 --n 16 --guidance 4 --out runs/bns8-w4
    """
    with _clear_errors():
        from bespoke_jax.app.jobs import sample_solver

        written = sample_solver(
            solver,
            out,
            n=n,
            seed=seed,
            model=model,
            guidance=guidance,
            trust_model=trust_model,
            force=force,
            overwrite=overwrite,
        )
    for path in written:
        click.echo(f"Wrote {path}")


@main.command(name="export")
@click.argument("solver", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="The JSON file to write.")
@_overwrite_option
def export_command(solver, out, overwrite):
    """Write a saved solver's learned time grid and coefficients as plain JSON.

    \b
    Examples:
      bespoke-jax export runs/bns8 --out runs/bns8.json
    """
    with _clear_errors():
        from bespoke_jax.app.jobs import export_json

        path = export_json(solver, out, overwrite=overwrite)
    click.echo(f"Wrote {path}")
