"""Benchmark of bespoke scale-time (BST) solvers on the closed-form Gaussian mixture.

The data: ``GaussianMixture.random(key(0))`` (64-d, 32 components, std 0.05) under CondOT. RK1-
and RK2-BST (bound loss, the family's default training) are trained at each NFE on one noise
set, selected on a second and evaluated on a third, held-out one, next to Euler, midpoint and
the best baseline solver at the same NFE (PSNR with R = 2); RK2-BST is also trained with the
direct loss. A second table measures the cached path's interpolation error (``_paths.py``).

Run ``python -m experiments.bench_bst``; the tables are printed and written to
``runs/bench_bst.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bespoke_jax as bj
from bespoke_jax.app.report import records_table
from bespoke_jax.io.files import atomic_write
from bespoke_jax.training.config import resolve
from bespoke_jax.truth.paths import hermite
from experiments._common import baseline_psnrs, mixture_field, noise_sets

ROOT = Path(__file__).resolve().parents[1]
DIM = 64
NFES = (4, 6, 8, 10, 12, 16)
DIRECT_NFES = (4, 8, 16)


def psnr_rows(nfes=NFES, direct_nfes=DIRECT_NFES, sizes=(520, 512, 1024), steps=None) -> list:
    """Train and evaluate BST at each NFE; one row (a dict) per NFE.

    Each row holds the held-out PSNR of the baselines and of each trained family, and under
    ``"cost"`` the ``(family, training wall seconds, TrainResult.model_calls)`` of each.
    """
    u = mixture_field(DIM)
    x_train, x_val, x_test = noise_sets((DIM,), sizes)
    save_ts = bj.bst(4).save_ts
    train_data = bj.make_training_data(u, x_train, save_ts=save_ts)
    val_data = bj.make_training_data(u, x_val)
    test = bj.make_training_data(u, x_test)

    def fit(family):
        config = resolve(family, len(x_train), steps=steps)
        start = time.perf_counter()
        result = bj.train(
            family,
            u,
            x_train,
            x_val,
            steps=config.steps,
            batch_size=config.batch_size,
            optimizer=config.optimizer,
            train_data=train_data,
            val_data=val_data,
            progress=False,
        )
        wall = time.perf_counter() - start
        value = float(bj.psnr(family.sample(result.params, u, test.x0), test.x1))
        return value, wall, result.model_calls

    rows = []
    for nfe in nfes:
        base = baseline_psnrs(u, test.x0, test.x1, nfe, bj.cond_ot())
        best = max(base, key=base.get)
        row = {
            "NFE": nfe,
            "euler": base["euler"],
            "midpoint": base.get("midpoint", float("nan")),
            "best baseline": f"{base[best]:.2f} ({best})",
            "cost": [],
        }
        families = {"RK1-BST": bj.bst(nfe, base="rk1")}
        if nfe % 2 == 0:
            families["RK2-BST"] = bj.bst(nfe)
        if nfe in direct_nfes and nfe % 2 == 0:
            families["RK2-BST direct"] = bj.bst(nfe, loss_kind="direct")
        for label, family in families.items():
            value, wall, calls = fit(family)
            row[label] = value
            row["cost"].append((label, wall, calls))
        row["RK1-BST - euler"] = row["RK1-BST"] - row["euler"]
        row["RK2-BST - midpoint"] = row.get("RK2-BST", np.nan) - row["midpoint"]
        rows.append(row)
        print(f"NFE {nfe}: done", flush=True)
    return rows


def interpolation_rows(
    num_points=(33, 65, 129), powers=(1.0, 2.0), num_samples=256, num_queries=512
) -> list:
    """Error of the cached path's Hermite interpolant against a direct solve at random times.

    Saved times ``1 - (1 - k / (S - 1))^p`` (p = 1: uniform, the default of ``_paths``); both
    solves at rtol = atol = 1e-7. One row per (S, p): relative RMS error over everything and
    the worst per-sample RMS error.
    """
    u = mixture_field(DIM)
    x0 = jax.random.normal(jax.random.key(2), (num_samples, DIM))
    query = np.sort(np.asarray(jax.random.uniform(jax.random.key(3), (num_queries,))))
    exact = bj.ground_truth(u, x0, save_ts=query, rtol=1e-7, atol=1e-7).xs
    exact = jnp.swapaxes(exact, 0, 1)
    rows = []
    for s in num_points:
        for p in powers:
            ts = 1.0 - (1.0 - np.linspace(0.0, 1.0, s)) ** p
            data = bj.make_training_data(u, x0, save_ts=ts, rtol=1e-7, atol=1e-7)
            x, _ = hermite(data.path_ts, data.path_xs, data.path_us, jnp.asarray(query))
            sq = jnp.square(x - exact)
            rows.append(
                {
                    "S": s,
                    "p": p,
                    "relative RMS": float(jnp.sqrt(jnp.mean(sq) / jnp.mean(jnp.square(exact)))),
                    "worst per-sample RMS": float(jnp.sqrt(jnp.max(jnp.mean(sq, axis=-1)))),
                }
            )
    return rows


def cell(value) -> str:
    """Floats with 2 decimals, or 2 significant digits when small; missing cells empty."""
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-2 else f"{value:.2f}"
    return "" if value is None else str(value)


def markdown(rows: list, columns=None) -> str:
    return records_table(rows, columns, cell)


def main():
    start = time.perf_counter()
    rows = psnr_rows()
    quality = [
        "NFE",
        "euler",
        "midpoint",
        "best baseline",
        "RK1-BST",
        "RK2-BST",
        "RK2-BST direct",
        "RK1-BST - euler",
        "RK2-BST - midpoint",
    ]
    cost = [
        {"solver": label, "NFE": row["NFE"], "train s": wall, "model calls": calls}
        for row in rows
        for label, wall, calls in row["cost"]
    ]
    text = "\n\n".join(
        [
            "## BST on the 64-d mixture (held-out PSNR, dB, R = 2)",
            markdown(rows, quality),
            "### Training cost (wall seconds, model calls)",
            markdown(sorted(cost, key=lambda c: c["solver"])),
            "### Cached path: Hermite interpolation error",
            markdown(interpolation_rows()),
            f"Total time: {time.perf_counter() - start:.0f} s.",
        ]
    )
    print(text)
    atomic_write(ROOT / "runs" / "bench_bst.md", text + "\n")


if __name__ == "__main__":
    main()
