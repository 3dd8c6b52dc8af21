"""Benchmark of the baseline solvers on the closed-form Gaussian mixture.

The data: ``GaussianMixture.random(key(0), 32, 64, std=0.05)`` (64-d, 32 narrow components, in
[-1, 1]) under CondOT; 1024 noise samples. Each baseline, on its default grid and on the grids
worth comparing, is scored by PSNR (data range R = 2) against the adaptive Dopri5 ground truth
(rtol = atol = 1e-5) at NFE 4, 6, 8, 10, 12 and 16; '—' where a solver cannot spend that NFE.
EDM spends only odd NFE (2N - 1): its row is measured at one NFE less than its column's.

Run ``python -m experiments.bench_baselines``; the table is printed and written to
``runs/bench_baselines.md``.
"""

from __future__ import annotations

from pathlib import Path

import jax

import bespoke_jax as bj
from bespoke_jax import solvers
from bespoke_jax.io.files import atomic_write
from experiments._common import mixture_field

ROOT = Path(__file__).resolve().parents[1]
NFES = (4, 6, 8, 10, 12, 16)
# (solver name, keyword arguments, NFE offset from the column's NFE, <= 0)
VARIANTS = (
    ("euler", {}, 0),
    ("midpoint", {}, 0),
    ("heun", {}, 0),
    ("rk4", {}, 0),
    ("ipndm", {}, 0),
    ("ddim", {}, 0),
    ("dpm_solver_pp", {}, 0),
    ("dpm_solver_pp", {"grid": "logsnr"}, 0),
    ("dpm_solver_pp", {"grid": "edm"}, 0),
    ("dpm_solver_pp", {"order": 3}, 0),
    ("dpm_solver_pp", {"order": 3, "grid": "logsnr"}, 0),
    ("unipc", {}, 0),
    ("unipc", {"grid": "logsnr"}, 0),
    ("unipc", {"grid": "edm"}, 0),
    ("edm", {}, -1),
)


def label(name: str, kwargs: dict, offset: int) -> str:
    """``name (order, grid)`` with the solver's default grid spelled out."""
    default_grid = "edm" if name == "edm" else "uniform"
    parts = [f"{kwargs.get('order', 2)}M"] if name == "dpm_solver_pp" else []
    parts.append(kwargs.get("grid", default_grid))
    text = f"{name} ({', '.join(parts)})"
    return f"{text}, at NFE − {-offset}" if offset else text


def psnr_table(num_samples: int = 1024, nfes=NFES, variants=VARIANTS):
    """PSNR of each variant at each NFE (``None`` where it cannot spend it) and the GT's NFE."""
    u = mixture_field(64)
    x0 = jax.random.normal(jax.random.key(1), (num_samples, 64))
    truth = bj.ground_truth(u, x0)
    rows = {}
    for name, kwargs, offset in variants:
        row = []
        for nfe in (n + offset for n in nfes):
            try:
                solvers.steps_for(name, nfe)
            except ValueError:
                row.append(None)
                continue
            solve = jax.jit(
                lambda x, name=name, nfe=nfe, kwargs=kwargs: solvers.SOLVERS[name](
                    u, x, nfe=nfe, scheduler=bj.cond_ot(), **kwargs
                )
            )
            row.append(float(bj.psnr(solve(x0), truth.x1)))
        rows[label(name, kwargs, offset)] = row
    return rows, truth.nfe


def to_markdown(rows: dict, truth_nfe: int, nfes=NFES, num_samples: int = 1024) -> str:
    """The table in Markdown, best value of each NFE column in bold."""
    best = [
        max((r[j] for r in rows.values() if r[j] is not None), default=None)
        for j in range(len(nfes))
    ]
    lines = [
        f"PSNR (dB, data range 2) against the Dopri5 ground truth (rtol = atol = 1e-5, "
        f"{truth_nfe} NFE), {num_samples} samples of the 64-d, 32-component mixture "
        "(std 0.05) under CondOT. Grids: uniform in t; logsnr uniform in log-SNR between "
        "t = 1e-3 and 1 - 1e-3, ends moved to 0 and 1; edm the Karras levels (rho = 7, sigma in "
        "[0.002, 80]) mapped by t = 1 / (1 + sigma). Best of each column in bold.",
        "",
        "| solver (grid) | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|" + "---:|" * len(nfes),
    ]
    for name, row in rows.items():
        cells = [
            "—" if v is None else (f"**{v:.2f}**" if v == best[j] else f"{v:.2f}")
            for j, v in enumerate(row)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    rows, truth_nfe = psnr_table()
    text = to_markdown(rows, truth_nfe)
    atomic_write(ROOT / "runs" / "bench_baselines.md", text)
    print(text)


if __name__ == "__main__":
    main()
