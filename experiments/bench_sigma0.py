"""``bj.choose_sigma0`` on each shipped model against a sweep of trained BNS solvers.

For each shipped model (checkerboard unguided; digits and patches16 at guidance 2), BNS at NFE 8
with the midpoint source: the validation PSNR of every candidate sigma0 untrained (what
``choose_sigma0`` scores by default) and after a brief training (``steps=BRIEF``), then the
held-out PSNR of a BNS solver trained at each candidate (the sweep) with its wall time. The
picks of both modes are compared with the sweep's best.

Run ``python -m experiments.bench_sigma0``; the table is printed and written to
``runs/bench_sigma0.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp

import bespoke_jax as bj
from bespoke_jax.app.report import markdown_table
from bespoke_jax.io.files import atomic_write
from bespoke_jax.training.sigma0 import SIGMA0_CANDIDATES
from experiments._common import noise_sets

ROOT = Path(__file__).resolve().parents[1]
NFE, BRIEF = 8, 25
# model: (guidance, data range, (train, val, test) sizes, sweep steps, batch)
MODELS = {
    "checkerboard": (None, 4.0, (256, 128, 256), 300, 40),
    "digits": (2.0, 2.0, (256, 128, 256), 300, 40),
    "patches16": (2.0, 2.0, (128, 32, 64), 100, 8),
}


def model_rows(name: str) -> list[list]:
    """One row per candidate: untrained and briefly trained validation PSNR, swept test PSNR."""
    guidance, data_range, sizes, steps, batch = MODELS[name]
    model = bj.pretrained(name)
    u, scheduler = model.velocity, model.scheduler
    x_train, x_val, x_test = noise_sets(model.shape, sizes, seed=7)
    if guidance is None:
        args = (None, None, None)
    else:
        args = tuple(model.args(jnp.arange(len(x)) % model.num_classes, guidance) for x in
                     (x_train, x_val, x_test))  # fmt: skip
    val = bj.ground_truth(u, x_val, args=args[1], progress=False).x1
    test = bj.ground_truth(u, x_test, args=args[2], progress=False).x1
    train_data = bj.TrainingData(
        x_train, bj.ground_truth(u, x_train, args=args[0], progress=False).x1
    )  # one solve for the brief picks and the sweep
    common = {"nfe": NFE, "scheduler": scheduler, "args": args[1], "x1_val": val}
    untrained = bj.choose_sigma0(u, x_val, data_range=data_range, **common)
    brief = bj.choose_sigma0(
        u, x_val, data_range=data_range, steps=BRIEF, x0_train=x_train, train_args=args[0],
        train_data=train_data, **common,
    )  # fmt: skip
    rows = []
    for sigma0 in SIGMA0_CANDIDATES:
        family = bj.bns(NFE, sigma0=sigma0, scheduler=scheduler)
        start = time.perf_counter()
        result = bj.train(
            family, u, x_train, x_val, args=args[0], val_args=args[1], steps=steps,
            batch_size=batch, eval_every=steps // 5, data_range=data_range,
            train_data=train_data, val_data=bj.TrainingData(x_val, val), progress=False,
        )  # fmt: skip
        wall = time.perf_counter() - start
        x1 = jax.jit(lambda p, x, a, f=family: f.sample(p, u, x, a))(result.params, x_test, args[2])
        swept = float(bj.psnr(x1, test, data_range))
        rows.append([name, sigma0, untrained.psnr[sigma0], brief.psnr[sigma0], swept, wall])
        print(rows[-1], flush=True)
    best = max(rows, key=lambda row: row[4])[1]
    picks = {"untrained": untrained.sigma0, f"{BRIEF} steps": brief.sigma0, "sweep": best}
    for row in rows:
        row.insert(2, ", ".join(k for k, v in picks.items() if v == row[1]) or "")
    return rows


def main() -> None:
    start = time.perf_counter()
    rows = [row for name in MODELS for row in model_rows(name)]
    header = ["model", "sigma0", "picked by", "untrained val", f"{BRIEF} steps val"]
    header += ["trained test", "train s"]
    sweep = ", ".join(f"{name} {m[3]} steps of batch {m[4]}" for name, m in MODELS.items())
    text = "\n\n".join(
        [
            f"## Choosing sigma0 (BNS, NFE {NFE}, midpoint source; PSNR, dB, at each model's R)",
            "`bj.choose_sigma0` scores each candidate on validation ground truth untrained "
            f"(default) or after {BRIEF} training steps; the sweep trains a BNS solver at every "
            f"candidate ({sweep}) and scores it on held-out noise. Guidance 2 for digits and "
            "patches16; checkerboard is unconditional (R = 4).",
            markdown_table(header, rows).rstrip(),
            f"Total time: {time.perf_counter() - start:.0f} s.",
        ]
    )
    print(text)
    atomic_write(ROOT / "runs" / "bench_sigma0.md", text + "\n")


if __name__ == "__main__":
    main()
