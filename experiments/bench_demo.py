"""The demo's results table: ``bespoke-jax demo`` (BNS and RK2-BST on the shipped digits model at
guidance 2, NFE 4, 8 and 16), with the untrained BNS solver and every baseline.

README.md's Results table repeats rows of this table (``tests/test_docs.py`` checks that each
README row is a row here). Run ``python -m experiments.bench_demo``: it runs the demo into
``runs/demo`` and writes the table to ``runs/bench_demo.md``.
"""

from __future__ import annotations

from pathlib import Path

from bespoke_jax.app.demo import run_demo
from bespoke_jax.app.report import psnr_table
from bespoke_jax.io.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## The demo: digits at guidance 2 (held-out PSNR, dB, R = 2)"


def main() -> None:
    result = run_demo(ROOT / "runs" / "demo", progress=False)
    nfes = sorted({nfe for values in result.psnr.values() for nfe in values})
    text = "\n\n".join(
        [
            HEADING,
            "`bespoke-jax demo` (its `runs/demo/report.md`): 520 training, 128 validation and "
            "256 test noise samples; BNS preconditioned with sigma0 = 0.5 and, untrained, its "
            "midpoint source on the same preconditioned field.",
            psnr_table(result.psnr, nfes).rstrip("\n"),
            f"Total time: {result.wall_s:.0f} s.",
        ]
    )
    print(text)
    atomic_write(ROOT / "runs" / "bench_demo.md", text + "\n")


if __name__ == "__main__":
    main()
