"""The demo's results tables: ``bespoke-jax demo --model NAME`` for each shipped model of
``DEMO_MODELS`` (BNS and RK2-BST at guidance 2 at the preset's NFE values: digits 4, 8 and 16,
patches16 8), with the untrained BNS solver and every baseline.

README.md's Results table repeats rows of the digits table (``tests/test_docs.py`` checks that
each README row is a row here). Run ``python -m experiments.bench_demo`` (``--model NAME`` for
one): it runs each demo into ``runs/demo`` (digits) or ``runs/demo-NAME`` and writes its table
to ``runs/bench_demo.md`` or ``runs/bench_demo_NAME.md``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from bespoke_jax.app.defaults import DEMO_MODELS
from bespoke_jax.app.demo import run_demo
from bespoke_jax.app.report import markdown_table, psnr_table
from bespoke_jax.io.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def tables(model: str) -> tuple[str, str]:
    """The demo folder and table of ``model`` under ``runs/``."""
    if model == "digits":
        return "demo", "bench_demo"
    return f"demo-{model}", f"bench_demo_{model}"


def run(model: str) -> str:
    """Run the demo of ``model``; its BENCHMARKS.md section."""
    folder, table = tables(model)
    preset = DEMO_MODELS[model]
    result = run_demo(ROOT / "runs" / folder, model=model, progress=False, overwrite=True)
    nfes = sorted({nfe for values in result.psnr.values() for nfe in values})
    shown = max(nfes, key=lambda n: (n <= 8, n))  # the sample grid at NFE 8 or below it
    figure = f"demo_{model}_samples_nfe{shown}.png"
    shutil.copyfile(ROOT / "runs" / folder / f"samples_nfe{shown}.png", ROOT / "docs" / figure)
    setup, settings = result.setup, preset.settings
    untrained = (
        f"BNS preconditioned with sigma0 = {preset.sigma0:g} and, untrained, its midpoint "
        "source on the same preconditioned field"
        if preset.sigma0 != 1.0
        else "BNS preconditioned with sigma0 = 1 (none: its untrained start is the midpoint row)"
    )
    steps = (
        f"{settings.steps} steps of batch {settings.batch_size}"
        if settings.steps
        else "each family's default steps and batch"
    )
    text = "\n\n".join(
        [
            f"## The demo: {model} at guidance 2 (held-out PSNR, dB, R = 2)",
            f"`bespoke-jax demo --model {model}` (its `runs/{folder}/report.md`): "
            f"{settings.n_train} training, {settings.n_val} validation and {settings.n_test} "
            f"test noise samples, {steps}; {untrained}.",
            psnr_table(result.psnr, nfes).rstrip("\n"),
            f"![samples at NFE {shown}](docs/{figure})",
            "Training cost (calls: model calls summed over samples, the training set's ground "
            f"truth included; one call is {setup.forwards_per_call} network passes):",
            markdown_table(
                ["solver", "steps", "batch", "wall s", "calls"],
                [
                    [t.label, t.steps, t.batch_size, t.wall_s, t.result.model_calls]
                    for t in result.trained
                ],
            ).rstrip("\n"),
            f"Ground truth: {setup.ground_truth_calls:,} sample-forwards for the training set "
            f"(up to {setup.ground_truth_nfe} calls per sample), {setup.ground_truth_s:.0f} s "
            f"for all three sets. Total time: {result.wall_s:.0f} s.",
        ]
    )
    print(text)
    atomic_write(ROOT / "runs" / f"{table}.md", text + "\n")
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DEMO_MODELS), help="one model (default: all)")
    options = parser.parse_args(argv)
    for model in [options.model] if options.model else DEMO_MODELS:
        run(model)


if __name__ == "__main__":
    main()
