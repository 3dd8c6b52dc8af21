"""Start-up time of the command line's help: ``bespoke-jax --help`` and ``COMMAND --help``.

Each row runs a fresh interpreter ``--runs`` times and reports the median wall time, in seconds
and as a ratio to ``python -c pass`` (the interpreter's own start-up); ``import jax`` is shown for
scale. The command line runs as its console script does: ``main()`` of ``bespoke_jax.app.cli``.

    python -m experiments.bench_cli --runs 5   # also writes runs/bench_cli.md
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bespoke_jax.app.report import records_table
from bespoke_jax.io.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]

_CLI = "import sys; from bespoke_jax.app.cli import main; sys.argv[0] = 'bespoke-jax'; main()"
COMMANDS = ((), ("demo",), ("train",), ("eval",), ("sample",), ("export",))


def median_seconds(argv: list[str], runs: int) -> float:
    """The median wall time of ``runs`` runs of ``argv`` (each must succeed)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per row (the median is shown)")
    runs = parser.parse_args(argv).runs
    python = sys.executable
    measured = {"python -c pass": [python, "-c", "pass"]}
    for command in COMMANDS:
        name = " ".join(("bespoke-jax", *command, "--help"))
        measured[name] = [python, "-c", _CLI, *command, "--help"]
    measured["python -c 'import jax'"] = [python, "-c", "import jax"]
    seconds = {name: median_seconds(argv, runs) for name, argv in measured.items()}
    baseline = seconds["python -c pass"]
    rows = [{"command": k, "seconds": v, "x python": v / baseline} for k, v in seconds.items()]
    text = (
        "## Command-line start-up (`--help`, seconds)\n\n"
        f"{records_table(rows)}\n\nMedian of {runs} runs each; the package imports JAX only "
        "when a command runs."
    )
    print(text)
    atomic_write(ROOT / "runs" / "bench_cli.md", text + "\n")


if __name__ == "__main__":
    main()
