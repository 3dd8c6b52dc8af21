"""Benchmark of bespoke non-stationary (BNS) solvers against every baseline and RK2-BST.

1. The closed-form mixture ``GaussianMixture.random(key(0))`` (64-d, 32 components, std 0.05)
   under CondOT: BNS at NFE 4-20 with the family's default training (``default_optimizer``:
   Prodigy, 3000 steps), initialised from UniPC (the init that trained best on this mixture),
   trained on 520 noise samples, selected on 1024 and evaluated on 1024 held-out ones (PSNR,
   R = 2), next to every baseline and RK2-BST at the same NFE; the training wall time and model
   calls; BNS's sampling time over Euler's at the same NFE (median of repeated jitted calls,
   interleaved in one run).
2. The NFE each baseline needs to match BNS at NFE 8.
3. The shipped ``digits`` model at guidance 0 and 2, with and without preconditioning sigma0,
   next to the untrained BNS solver (its midpoint source on the preconditioned field: with
   sigma0 = 1, midpoint itself), so the share of the gain that training adds shows.

Run ``python -m experiments.bench_bns`` (``--quick`` for a shrunken smoke run); the tables are
printed and written to ``runs/bench_bns.md``.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bespoke_jax as bj
from bespoke_jax import solvers
from bespoke_jax.app.report import records_table
from bespoke_jax.io.files import atomic_write
from bespoke_jax.training.config import resolve
from experiments._common import DEFAULT_RUNS, baseline_psnrs, mixture_field, noise_sets

ROOT = Path(__file__).resolve().parents[1]
NFES = tuple(range(4, 21, 2))
DEDICATED = ("dpm_solver_pp", "unipc")
LOGSNR = tuple(f"{name} (logsnr)" for name in DEDICATED)
# (label, solver, grid): every baseline on its default grid, the dedicated ones on log-SNR too.
RUNS = [*DEFAULT_RUNS] + [
    (label, name, "logsnr") for label, name in zip(LOGSNR, DEDICATED, strict=True)
]
SIZES = (520, 1024, 1024)
SPEED_NOTE = (
    "Each BNS step reads all n + 1 stored vectors (the noise and the velocities so far) once, "
    "(n + 1) B d floats, next to the model call's own passes over the batch. The closed-form "
    "mixture's call is only a few such passes, so there the combine shows and grows with NFE; "
    "next to a network call it does not (time / Euler in the digits table below)."
)


def time_ratio(family, params, u, x0, args=None, repeats: int = 21) -> float:
    """Median time of ``family.sample`` over Euler's at the same NFE, jitted, interleaved."""
    learned = jax.jit(lambda p, x, a: family.sample(p, u, x, a))
    euler = jax.jit(lambda x, a: solvers.euler(u, x, nfe=family.nfe, args=a))
    learned(params, x0, args).block_until_ready()
    euler(x0, args).block_until_ready()
    times = {"learned": [], "euler": []}
    for _ in range(repeats):
        for name, call in (
            ("learned", lambda: learned(params, x0, args)),
            ("euler", lambda: euler(x0, args)),
        ):
            start = time.perf_counter()
            call().block_until_ready()
            times[name].append(time.perf_counter() - start)
    return float(np.median(times["learned"]) / np.median(times["euler"]))


def fit(family, u, x_train, x_val, x_test, x1_test, data, args=(None, None, None), steps=None):
    """Train ``family`` with its defaults; held-out PSNR, wall seconds, model calls, params.

    ``data`` maps a ``save_ts`` key to ``(train_data, val_data)``, reused across NFE values.
    """
    key = None if family.save_ts is None else tuple(np.asarray(family.save_ts).tolist())
    train_data, val_data = data.get(key, (None, None))
    config = resolve(family, len(x_train), steps=steps)  # BNS: Prodigy; BST: Adam
    start = time.perf_counter()
    result = bj.train(
        family,
        u,
        x_train,
        x_val,
        args=args[0],
        val_args=args[1],
        steps=config.steps,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        train_data=train_data,
        val_data=val_data,
        progress=False,
    )
    wall = time.perf_counter() - start
    data[key] = (result.train_data, result.val_data)
    value = held_out_psnr(family, result.params, u, x_test, args[2], x1_test)
    return value, wall, result.model_calls, result.params


def held_out_psnr(family, params, u, x_test, args, x1_test) -> float:
    """PSNR [dB] of ``family.sample`` at ``params`` against the held-out ground truth."""
    x1 = jax.jit(lambda p, x, a: family.sample(p, u, x, a))(params, x_test, args)
    return float(bj.psnr(x1, x1_test))


@functools.cache
def mixture_problem(sizes=SIZES):
    """The 64-d mixture field, its noise sets and the held-out ground truth (rtol 1e-7)."""
    u = mixture_field(64)
    x_train, x_val, x_test = noise_sets((64,), sizes)
    x1_test = bj.ground_truth(u, x_test, rtol=1e-7, atol=1e-7).x1
    return u, x_train, x_val, x_test, x1_test


def mixture_rows(nfes=NFES, init: str = "unipc", sizes=SIZES, steps=None, bst=True) -> list:
    """One row per NFE: held-out PSNR of BNS, RK2-BST and every baseline, cost and speed."""
    scheduler = bj.cond_ot()
    u, x_train, x_val, x_test, x1_test = mixture_problem(sizes)
    data = {}
    rows = []
    for nfe in nfes:
        row = {"NFE": nfe}
        family = bj.bns(nfe, init=init, scheduler=scheduler)
        row["BNS"], row["train s"], row["model calls"], params = fit(
            family, u, x_train, x_val, x_test, x1_test, data, steps=steps
        )
        row["time / Euler"] = time_ratio(family, params, u, x_test)
        if bst and nfe % 2 == 0:
            row["RK2-BST"] = fit(bj.bst(nfe), u, x_train, x_val, x_test, x1_test, data)[0]
        base = baseline_psnrs(u, x_test, x1_test, nfe, scheduler, runs=RUNS)
        row.update(base)
        row["BNS - best dedicated"] = row["BNS"] - max(base[name] for name in (*DEDICATED, *LOGSNR))
        row["BNS - best baseline"] = row["BNS"] - max(base.values())
        rows.append(row)
        print(f"mixture NFE {nfe}: BNS {row['BNS']:.2f} dB", flush=True)
    return rows


def smallest_nfe(psnr_at, name: str, target: float, max_nfe: int) -> int | None:
    """The smallest NFE solver ``name`` spends with ``psnr_at(nfe) >= target`` (PSNR grows
    with NFE: doubling, then bisection over its spendable NFE values); ``None`` past max_nfe."""
    rule = solvers.SPECS[name].rule
    steps, hi = 1, None
    while rule.nfe(steps) <= max_nfe:
        if psnr_at(rule.nfe(steps)) >= target:
            hi = steps
            break
        steps *= 2
    if hi is None:
        return None
    lo = hi // 2  # fails (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if psnr_at(rule.nfe(mid)) >= target else (mid, hi)
    return rule.nfe(hi)


def matching_rows(target: float, sizes=SIZES, max_nfe: int = 2048) -> list:
    """The NFE each run of ``RUNS`` needs to reach ``target`` dB (BNS at NFE 8), held out."""
    scheduler = bj.cond_ot()
    u, _, _, x_test, x1_test = mixture_problem(sizes)
    rows = []
    for label, name, grid in RUNS:
        solver = solvers.SOLVERS[name]

        def psnr_at(nfe, solver=solver, grid=grid):
            sample = jax.jit(lambda x: solver(u, x, nfe=nfe, scheduler=scheduler, grid=grid))
            return float(bj.psnr(sample(x_test), x1_test))

        found = smallest_nfe(psnr_at, name, target, max_nfe)
        rows.append({"solver": label, "NFE to match BNS@8": found or f"> {max_nfe}"})
    return rows


def digits_rows(
    nfes=(8, 16), settings=((0.0, 1.0), (2.0, 1.0), (2.0, 5.0)), sizes=SIZES, steps=None
):
    """BNS (default init and training) on the shipped digits model, one row per setting.

    ``settings`` are ``(guidance, sigma0)`` pairs; labels cycle through the ten classes.
    """
    model = bj.pretrained("digits")
    u = model.velocity
    noise = noise_sets(model.shape, sizes, seed=2)
    rows = []
    for guidance in sorted({g for g, _ in settings}):
        guided = [model.args(jnp.arange(x.shape[0]) % 10, guidance) for x in noise]
        x1_test = bj.ground_truth(u, noise[2], args=guided[2], rtol=1e-7, atol=1e-7).x1
        data = {}
        for nfe in nfes:
            base = baseline_psnrs(u, noise[2], x1_test, nfe, model.scheduler, guided[2], RUNS)
            for g, sigma0 in settings:
                if g != guidance:
                    continue
                family = bj.bns(nfe, sigma0=sigma0, scheduler=model.scheduler)
                value, wall, calls, params = fit(family, u, *noise, x1_test, data, guided, steps)
                rows.append(
                    {
                        "guidance": guidance,
                        "sigma0": sigma0,
                        "NFE": nfe,
                        "BNS": value,
                        "untrained": held_out_psnr(
                            family, family.init(), u, noise[2], guided[2], x1_test
                        ),
                        **base,
                        "BNS - best baseline": value - max(base.values()),
                        "train s": wall,
                        "model calls": calls,
                        "time / Euler": time_ratio(family, params, u, noise[2], guided[2]),
                    }
                )
                print(f"digits w={guidance} sigma0={sigma0} NFE {nfe}: {value:.2f} dB", flush=True)
    return rows


def cell(value) -> str:
    """Floats with 2 decimals, missing cells as "-"."""
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def markdown(rows: list, columns=None) -> str:
    return records_table(rows, columns, cell)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="NFE 4 and 8, 200 steps, small sets")
    quick = parser.parse_args(argv).quick
    sizes = (80, 80, 80) if quick else SIZES
    nfes = (4, 8) if quick else NFES
    steps = 200 if quick else None
    start = time.perf_counter()
    mixture = mixture_rows(nfes, sizes=sizes, steps=steps, bst=not quick)
    at8 = next(row["BNS"] for row in mixture if row["NFE"] == 8)
    columns = ["NFE", "BNS", "RK2-BST", *solvers.NAMES, *LOGSNR]
    text = "\n\n".join(
        [
            "## BNS on the 64-d mixture (held-out PSNR, dB, R = 2)",
            markdown(mixture, [*columns, "BNS - best dedicated", "BNS - best baseline"]),
            "### Training cost and sampling speed",
            markdown(mixture, ["NFE", "train s", "model calls", "time / Euler"]),
            SPEED_NOTE,
            f"### NFE each baseline needs to match BNS at NFE 8 ({at8:.2f} dB)",
            markdown(matching_rows(at8, sizes, max_nfe=64 if quick else 2048)),
            "## BNS on the digits model (held-out PSNR, dB, R = 2)",
            markdown(digits_rows(nfes=(8,) if quick else (8, 16), sizes=sizes, steps=steps)),
            f"Total time: {time.perf_counter() - start:.0f} s.",
        ]
    )
    print(text)
    atomic_write(ROOT / "runs" / "bench_bns.md", text + "\n")


if __name__ == "__main__":
    main()
