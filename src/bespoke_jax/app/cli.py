"""The ``bespoke-jax`` command: a thin click layer over the jobs in ``_demo.py``."""

from __future__ import annotations

import contextlib
import dataclasses

import click

from bespoke_jax.app import demo as _demo
from bespoke_jax.app import report as _report
from bespoke_jax.app.user_model import load_model

_MODEL_HELP = (
    "A shipped model ('digits', 'checkerboard') or an entry point 'module:function' "
    "(or 'path/to/file.py:function') returning {'velocity', 'shape', ...}; see README."
)


@contextlib.contextmanager
def _clear_errors():
    """Turn the package's input and runtime errors into one-line click errors."""
    try:
        yield
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    except (RuntimeError, OSError) as err:
        raise click.ClickException(str(err)) from None


def _model_option(required: bool):
    return click.option("--model", required=required, help=_MODEL_HELP)


_guidance_option = click.option(
    "--guidance",
    type=float,
    help="Classifier-free guidance w (digits: 2 by default; an entry point gets guidance=w).",
)
_cache_option = click.option(
    "--cache-dir", help="Keep ground-truth solves here and reuse them across runs."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bespoke-jax")
def main():
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
    "--nfe", "nfes", type=int, multiple=True, help="Even NFE values (repeatable) [4, 8, 16]."
)
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--quick", is_flag=True, help="Tiny settings for smoke tests (meaningless numbers).")
@click.option("--guidance", default=2.0, show_default=True, help="Classifier-free guidance w.")
@click.option("--sigma0", default=0.5, show_default=True, help="BNS preconditioning sigma0.")
def demo(out, nfes, steps, quick, guidance, sigma0):
    """Train BNS and RK2-BST solvers for the shipped digits model and write a report.

    Solves the ground truth once, trains one solver per family and NFE, runs every baseline
    at the same NFE, saves the solvers and writes report.md with plots into --out.

    \b
    Examples:
      bespoke-jax demo
      bespoke-jax demo --nfe 4 --nfe 8 --steps 300 --out runs/demo-small
      bespoke-jax demo --quick --out /tmp/smoke
    """
    with _clear_errors():
        result = _demo.run_demo(
            out,
            nfes=nfes or (4, 8, 16),
            steps=steps,
            quick=quick,
            guidance=guidance,
            sigma0=sigma0,
        )
    click.echo(f"Report: {result.report} ({result.wall_s:.0f} s)")


@main.command(name="train")
@_model_option(required=True)
@click.option("--family", type=click.Choice(_demo.FAMILY_NAMES), default="bns", show_default=True)
@click.option("--nfe", type=int, required=True, help="Model calls per sample.")
@click.option(
    "--init",
    help="BNS: the baseline to start from [midpoint]; BST: rk1 or rk2 [rk2]; grid: the "
    "baseline whose time grid is learned [dpm_solver_pp].",
)
@click.option(
    "--sigma0",
    help="BNS preconditioning, a number or 'auto' (the best of a few on validation, "
    "untrained) (digits at guidance 2: 0.5) [1].",
)
@_guidance_option
@click.option("--steps", type=click.IntRange(min=1), help="Optimisation steps [family default].")
@click.option("--n-train", type=click.IntRange(min=1), help="Training noise samples [520].")
@click.option("--n-val", type=click.IntRange(min=1), help="Validation noise samples [128].")
@click.option("--batch-size", type=click.IntRange(min=1), help="Minibatch [family default].")
@click.option("--lr", "learning_rate", type=float, help="Adam learning rate [family schedule].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise.")
@_cache_option
@click.option("--quick", is_flag=True, help="Tiny settings for smoke tests.")
@click.option("--out", required=True, help="The directory to save the solver in.")
def train_command(model, family, nfe, init, sigma0, guidance, quick, out, **options):
    """Train a learned solver for a model and save it.

    \b
    Examples:
      bespoke-jax train --model digits --family bns --nfe 8 --sigma0 0.5 --out runs/bns8
      bespoke-jax train --model digits --family bns --nfe 8 --sigma0 auto --out runs/bns8
      bespoke-jax train --model digits --family grid --init dpm_solver_pp --nfe 8 --out runs/g8
      bespoke-jax train --model digits --guidance 0 --family bst --nfe 8 --out runs/bst8
      bespoke-jax train --model my_model.py:make --nfe 6 --steps 500 --out runs/mine
    """
    with _clear_errors():
        user = load_model(model, guidance=guidance)
        given = {name: value for name, value in options.items() if value is not None}
        settings = dataclasses.replace(_demo.QUICK if quick else _demo.Settings(), **given)
        val = None
        if sigma0 == "auto":
            if family != "bns":
                raise ValueError("--sigma0 (preconditioning) applies to --family bns only.")
            val = _demo.validation_set(user, settings)
            sigma0 = _demo.auto_sigma0(user, nfe, init, val).sigma0
            click.echo(f"sigma0 auto: chose {sigma0:g}")
        elif sigma0 is not None:
            try:
                sigma0 = float(sigma0)
            except ValueError:
                raise ValueError(f"--sigma0 must be a number or 'auto', got {sigma0!r}.") from None
        solver = _demo.make_family(family, nfe, init=init, sigma0=sigma0, scheduler=user.scheduler)
        path, trained = _demo.train_solver(user, solver, out, settings, val=val)
    click.echo(
        f"Saved {trained.label} to {path}: validation PSNR {trained.val_psnr:.2f} dB "
        f"(data range {user.data_range:g}), {trained.wall_s:.0f} s, "
        f"{trained.model_calls} sample-forwards."
    )


@main.command(name="eval")
@click.argument("solver", type=click.Path(exists=True, file_okay=False))
@_model_option(required=False)
@_guidance_option
@click.option("--n", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test noise.")
@_cache_option
def eval_command(solver, model, guidance, n, seed, cache_dir):
    """PSNR of a saved solver next to every baseline at its NFE.

    Uses the model and guidance saved with the solver unless --model / --guidance are given.
    PSNR is against a fresh adaptive ground truth of --n noise samples (the test set of --seed,
    never used in training).

    \b
    Examples:
      bespoke-jax eval runs/bns8
      bespoke-jax eval runs/bns8 --guidance 3 --n 512
    """
    with _clear_errors():
        result = _demo.evaluate_solver(
            solver, model=model, guidance=guidance, n=n, seed=seed, cache_dir=cache_dir
        )
    click.echo(
        f"NFE {result['nfe']}, {n} samples, ground truth up to {result['ground_truth_nfe']} "
        f"model calls; PSNR [dB] with data range {result['data_range']:g}\n"
    )
    rows = [[name, value] for name, value in result["psnr"].items()]
    click.echo(_report.markdown_table(["solver", "PSNR"], rows))


@main.command(name="sample")
@click.argument("solver", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="Folder for samples.npy and samples.png.")
@click.option("--n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_model_option(required=False)
@_guidance_option
def sample_command(solver, out, n, seed, model, guidance):
    """Draw samples with a saved solver: samples.npy and a grid image.

    \b
    Examples:
      bespoke-jax sample runs/bns8 --out runs/bns8-samples
      bespoke-jax sample runs/bns8 --n 16 --guidance 4 --out runs/bns8-w4
    """
    with _clear_errors():
        written = _demo.sample_solver(solver, out, n=n, seed=seed, model=model, guidance=guidance)
    for path in written:
        click.echo(f"Wrote {path}")


@main.command(name="export")
@click.argument("solver", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="The JSON file to write.")
def export_command(solver, out):
    """Write a saved solver's learned time grid and coefficients as plain JSON.

    \b
    Examples:
      bespoke-jax export runs/bns8 --out runs/bns8.json
    """
    with _clear_errors():
        path = _demo.export_json(solver, out)
    click.echo(f"Wrote {path}")
