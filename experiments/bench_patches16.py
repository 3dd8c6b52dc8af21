"""Learned solvers on the shipped ``patches16`` UNet beyond the demo: what the demo's cheap CPU
setting costs in PSNR, and the host memory of BNS training at NFE 16.

1. BNS at NFE 8 (midpoint init, sigma0 = 1, guidance 2) trained as ``bespoke-jax demo --model
   patches16`` does (300 steps of batch 16) and with four times the samples (600 steps of batch
   32), on the demo's training, validation and test sets and their ground truth (read from the
   demo's cache in ``runs/demo-patches16`` when it is there): held-out PSNR and wall time.
2. The peak resident memory (``ru_maxrss``) of a fresh process that trains BNS at NFE 16 with
   batch 16 for 3 steps, with and without rematerialisation (``bj.train(..., remat=True)``),
   next to the same process's peak before training (its ground truth: 32 samples at rtol = atol
   = 1e-3, enough to train on; the sample values do not change the memory).

Run ``python -m experiments.bench_patches16``; the tables are printed and written to
``runs/bench_patches16.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import bespoke_jax as bj
from bespoke_jax.app import jobs
from bespoke_jax.app.defaults import DEMO_MODELS
from bespoke_jax.app.report import markdown_table
from bespoke_jax.app.user_model import load_model
from bespoke_jax.core.args import take
from bespoke_jax.io.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
MODEL = "patches16"
LONGER = {"steps": 600, "batch_size": 32}
MEMORY_NFE, MEMORY_BATCH = 16, 16


def budget_rows(cache_dir: Path) -> list[list]:
    """BNS at NFE 8 with the demo's setting and the longer one: held-out PSNR and cost."""
    preset = DEMO_MODELS[MODEL]
    model = load_model(MODEL, guidance=2.0)
    cheap = dataclasses.replace(preset.settings, cache_dir=str(cache_dir))
    sets = jobs.TrainingSets(model, cheap, progress=False)
    # The demo's training set, solved with BST's paths: its cache entry serves BNS too.
    sets.get(jobs.make_family("bst", 8).save_ts)
    val = jobs.noise_set(model, cheap.n_val, jobs.VAL, cheap, progress=False)
    test = jobs.noise_set(model, cheap.n_test, jobs.TEST, cheap, progress=False)
    rows = []
    for label, settings in (("demo", cheap), ("longer", dataclasses.replace(cheap, **LONGER))):
        sets.settings = settings
        family = jobs.make_family("bns", 8, sigma0=preset.sigma0, scheduler=model.scheduler)
        trained = jobs.fit(model, family, sets, val, progress=False)
        x1 = jobs.sample(family, trained.result.params, model, test.x0, test.args)
        value = jobs.psnr_against(x1, model, test)
        samples = settings.steps * settings.batch_size
        rows.append([label, settings.steps, settings.batch_size, samples, value, trained.wall_s])
        print(f"{label}: {value:.2f} dB in {trained.wall_s:.0f} s", flush=True)
    return rows


def memory_child(remat: bool) -> None:
    """Train BNS at NFE 16 for 3 steps; print the peak RSS [MiB] before and after, as JSON."""
    model = bj.pretrained(MODEL)
    x0 = jax.random.normal(jax.random.key(0), (2 * MEMORY_BATCH, *model.shape))
    args = model.args(jnp.arange(len(x0)) % model.num_classes, 2.0)
    data = bj.ground_truth(model.velocity, x0, args=args, rtol=1e-3, atol=1e-3, progress=False)
    before = _peak_mib()
    family = bj.bns(MEMORY_NFE, scheduler=model.scheduler)
    bj.train(
        family, model.velocity, x0, x0[:4], args=args,
        val_args=take(args, jnp.arange(4), len(x0)), steps=3,
        batch_size=MEMORY_BATCH, eval_every=3, remat=remat, progress=False,
        train_data=bj.TrainingData(x0, data.x1), val_data=bj.TrainingData(x0[:4], data.x1[:4]),
    )  # fmt: skip
    print(json.dumps({"before": before, "peak": _peak_mib()}))


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_rows() -> list[list]:
    """Peak host memory of BNS training at NFE 16, each setting in a fresh process."""
    rows = []
    for remat in (False, True):
        command = [sys.executable, "-m", "experiments.bench_patches16", "--memory-child"]
        command += ["--remat"] * remat
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        record = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(["yes" if remat else "no", record["before"], record["peak"]])
        print(f"remat {remat}: {record}", flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--remat", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.memory_child:
        return memory_child(options.remat)
    start = time.perf_counter()
    memory = memory_rows()
    budget = budget_rows(ROOT / "runs" / f"demo-{MODEL}" / "ground_truth")
    loss = budget[1][4] - budget[0][4]
    text = "\n\n".join(
        [
            "## Learned solvers on patches16: the CPU budget and memory",
            "### PSNR the demo's setting loses (BNS, NFE 8, guidance 2, held-out PSNR, dB, R = 2)",
            markdown_table(
                ["run", "steps", "batch", "samples seen", "PSNR", "wall s"], budget
            ).rstrip(),
            f"The demo's setting is {loss:.2f} dB below the run with four times the samples "
            "(same noise sets and ground truth).",
            f"### Peak host memory of BNS training at NFE {MEMORY_NFE} (batch {MEMORY_BATCH}, MiB)",
            markdown_table(["remat", "peak before training", "peak"], memory).rstrip(),
            "Each row is a fresh process (`ru_maxrss`); the budget is 8 GB (8192 MiB).",
            f"Total time: {time.perf_counter() - start:.0f} s.",
        ]
    )
    print(text)
    atomic_write(ROOT / "runs" / "bench_patches16.md", text + "\n")


if __name__ == "__main__":
    main()
