"""Cost curves of the training engine: ground truth, training steps, memory and model forwards.

1. Ground truth against the sample dimension d (64 to 3x64x64 = 12288): a 32-component mixture
   (std 0.05, CondOT) in dimension d, 64 noise samples, then the shipped ``digits`` network at
   guidance 2. The adaptive solve (``bj.ground_truth``, per-sample Dopri5, rtol = atol = 1e-5)
   against the same number of batched model calls in a ``lax.scan`` (its "raw calls": the solve
   calls the field ``nfe`` times on the whole batch), and the engine's sharded, chunked solve
   (``bj.sharded_training_data``). Steady-state times: compiled first, then the median of 9
   calls of each, taking turns. Dopri5's own vector arithmetic per step (stage sums, error
   norm, and under ``vmap`` the selects of finished samples) is a fixed number of passes over
   the state: next to the closed-form field, whose call is a few passes too, it shows; next to
   a network it does not.
2. Training-step time (BNS, batch 40, Adam) against d at NFE 8 and against NFE at d = 64.
3. Memory of BNS backpropagation at NFE 16, batch 40: XLA's compiled temporary bytes of the
   gradient with and without rematerialisation (``train(..., remat=True)``: ``jax.checkpoint``
   on every model call, whose activations are then recomputed in the backward pass).
4. Model forwards (sample-forwards, ground truth included) that training a BNS solver at NFE 16
   spends: the paper's setting (520 training pairs, 1024 validation pairs; the family's 3000
   default steps, batch 40, validation every 100 steps) and a budget setting under 1M forwards,
   on the 64-d mixture and the shipped ``digits`` model, as a fraction of that model's own
   training forwards (``bj.pretrained("digits").training_cost``). The paper spent 9.7M.

Run ``python -m experiments.bench_costs`` (``--quick`` for a shrunken smoke run); the tables are
printed and written to ``runs/bench_costs.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bespoke_jax as bj
from bespoke_jax.app.report import records_table
from bespoke_jax.io.files import atomic_write
from bespoke_jax.training.config import resolve
from bespoke_jax.training.steps import make_update_step
from experiments._common import mixture_field

ROOT = Path(__file__).resolve().parents[1]
DIMS = (64, 256, 1024, 3072, 12288)
NFES = (4, 8, 12, 16, 20)
PAPER_FORWARDS = 9.7e6
FORWARD_BUDGET = 1e6


def noise(seed: int, n: int, dim: int) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (n, dim))


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _interleaved_medians(calls: dict, repeats: int) -> dict:
    """Median seconds of each zero-argument call, the calls taking turns ``repeats`` times, so
    that a slow spell of the shared machine hits them all alike."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(_seconds(call))
    return {name: float(np.median(ts)) for name, ts in times.items()}


def raw_calls(u, x, nfe: int, args=None):
    """``nfe`` calls of ``u`` on the batch ``x`` in a ``lax.scan``: Euler steps of size 1 / nfe."""

    def call(x, t):
        return x + u(t, x, args) / nfe, None

    return jax.lax.scan(call, x, jnp.linspace(0.0, 1.0, nfe, endpoint=False))[0]


def ground_truth_problems(dims=DIMS, n: int = 64):
    """``(field, d, u, x0, args)``: the mixture in each dimension, then the shipped ``digits``
    network (8x8, guidance 2: two network passes per call) on the same number of samples."""
    problems = [("mixture", d, mixture_field(d), noise(2, n, d), None) for d in dims]
    digits = bj.pretrained("digits")
    args = digits.args(np.arange(n) % digits.num_classes, guidance=2.0)
    x0 = jax.random.normal(jax.random.key(2), (n, *digits.shape))
    return problems + [("digits network", x0[0].size, digits.velocity, x0, args)]


def ground_truth_rows(problems, repeats: int = 9) -> list[dict]:
    """One row per problem: adaptive and sharded ground-truth times over their raw calls
    (medians of ``repeats`` interleaved calls)."""
    rows = []
    for field, dim, u, x0, args in problems:
        gt = bj.ground_truth(u, x0, args=args)  # compiles; its NFE sets the raw calls
        bj.sharded_training_data(u, x0, args=args)
        scan = jax.jit(lambda x, a, u=u, nfe=gt.nfe: raw_calls(u, x, nfe, a))
        scan(x0, args)
        seconds = _interleaved_medians(
            {
                "GT s": lambda u=u, x0=x0, a=args: bj.ground_truth(u, x0, args=a).x1,
                "raw calls s": lambda scan=scan, x0=x0, a=args: scan(x0, a),
                "sharded GT s": lambda u=u, x0=x0, a=args: (
                    bj.sharded_training_data(u, x0, args=a).x1
                ),
            },
            repeats,
        )
        rows.append({"field": field, "d": dim, "GT NFE": gt.nfe, **seconds})
        rows[-1]["GT / raw"] = seconds["GT s"] / seconds["raw calls s"]
        rows[-1]["sharded / raw"] = seconds["sharded GT s"] / seconds["raw calls s"]
    return rows


def _update_step(family, u, batch: int, remat: bool):
    """The engine's training step (``make_update_step``, Adam at 1e-3) on one device, over a
    training set of ``batch`` rows, and its first inputs."""
    optimizer = resolve(family, batch, batch_size=batch, learning_rate=1e-3).optimizer
    update = make_update_step(
        family, u, optimizer, bj.data_mesh(jax.devices()[:1]), num_train=batch,
        batch_size=batch, remat=remat,
    )  # fmt: skip
    params = family.init()
    return update, (params, optimizer.init(params), jax.random.key_data(jax.random.key(0)))


def step_time(family, u, dim: int, batch: int = 40, remat: bool = False, budget_s: float = 2.0):
    """Seconds per training step (minibatch draw, loss gradient and Adam update) on a batch of
    pairs, averaged over as many steps (2 to 20) as fit in about ``budget_s``."""
    x0 = noise(3, batch, dim)
    data = bj.TrainingData(x0, x0)  # the step's cost does not depend on the targets' values
    update, state = _update_step(family, u, batch, remat)
    state = update(*state, data, None)[:3]
    jax.block_until_ready(state)
    repeats = int(np.clip(budget_s / _seconds(update, *state, data, None), 2, 20))
    start = time.perf_counter()
    for _ in range(repeats):
        state = update(*state, data, None)[:3]
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / repeats


def training_rows(dims=DIMS, nfes=NFES) -> list[dict]:
    """Training-step milliseconds against d (NFE 8) and against NFE (d = 64)."""
    rows = [
        {"d": d, "NFE": 8, "step ms": 1e3 * step_time(bj.bns(8), mixture_field(d), d)} for d in dims
    ]
    u = mixture_field(64)
    rows += [{"d": 64, "NFE": nfe, "step ms": 1e3 * step_time(bj.bns(nfe), u, 64)} for nfe in nfes]
    return rows


def temp_bytes(family, u, dim: int, batch: int = 40, remat: bool = False) -> int:
    """XLA's temporary bytes of the training step (compiled, not run)."""
    update, state = _update_step(family, u, batch, remat)
    x0 = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    compiled = update.lower(*state, bj.TrainingData(x0, x0), None).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def memory_rows(dims=(3072, 12288), nfe: int = 16) -> list[dict]:
    """BNS backpropagation memory with and without rematerialisation, and step times."""
    rows = []
    for dim in dims:
        u, family = mixture_field(dim), bj.bns(nfe)
        plain, remat = (temp_bytes(family, u, dim, remat=r) for r in (False, True))
        rows.append(
            {
                "d": dim,
                "NFE": nfe,
                "temp MB": plain / 2**20,
                "temp MB (remat)": remat / 2**20,
                "memory ratio": remat / plain,
                "step ms": 1e3 * step_time(family, u, dim),
                "step ms (remat)": 1e3 * step_time(family, u, dim, remat=True),
            }
        )
    return rows


@dataclasses.dataclass(frozen=True)
class Setting:
    """How a BNS solver is trained: set sizes, steps, batch, validation interval."""

    name: str
    n_train: int
    n_val: int
    steps: int
    batch_size: int = 40
    eval_every: int = 100


PAPER = Setting("paper (520 / 1024, 3000 steps)", 520, 1024, 3000)
BUDGET = Setting("budget (520 / 128, 1000 steps)", 520, 128, 1000, eval_every=250)


def forwards_row(model: str, setting: Setting, nfe: int = 16) -> dict:
    """Forwards (``TrainResult.model_calls``) and best validation PSNR of a BNS training; for a
    shipped model also the fraction of its own training forwards."""
    if model == "mixture":
        u, shape, cost, pre = mixture_field(64), (64,), None, None
    else:
        pre = bj.pretrained(model)
        u, shape, cost = pre.velocity, pre.shape, pre.training_cost["model_forwards"]

    def make_args(n):
        return None if pre is None else pre.args(np.arange(n) % pre.num_classes)

    keys = jax.random.split(jax.random.key(5), 2)
    x_train = jax.random.normal(keys[0], (setting.n_train, *shape))
    x_val = jax.random.normal(keys[1], (setting.n_val, *shape))
    result = bj.train(
        bj.bns(nfe),
        u,
        x_train,
        x_val,
        args=make_args(setting.n_train),
        val_args=make_args(setting.n_val),
        steps=setting.steps,
        batch_size=setting.batch_size,
        eval_every=setting.eval_every,
        progress=False,
    )
    ground = result.train_data.nfe * setting.n_train + result.val_data.nfe * setting.n_val
    return {
        "model": model,
        "setting": setting.name,
        "GT forwards": ground,
        "forwards": result.model_calls,
        "of paper's 9.7M": result.model_calls / PAPER_FORWARDS,
        "of model's training": None if cost is None else result.model_calls / cost,
        "PSNR at init": result.history["val_psnr"][0],
        "best val PSNR": result.best_val_psnr,
    }


def forwards_rows(quick: bool = False) -> list[dict]:
    settings = (
        (Setting("quick", 80, 40, 100, eval_every=50),) if quick else (PAPER, BUDGET)
    )  # fmt: skip
    return [forwards_row(model, s) for model in ("mixture", "digits") for s in settings]


def cell(value) -> str:
    """Floats with 3 significant digits (thousands separated when large), ints separated."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(rows: list[dict], columns=None) -> str:
    return records_table(rows, columns, cell)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small dimensions, few steps")
    quick = parser.parse_args(argv).quick
    dims = (64, 256) if quick else DIMS
    start = time.perf_counter()
    forwards = forwards_rows(quick)
    text = "\n\n".join(
        [
            "## Costs of the training engine",
            "### Ground truth over its raw model calls (64 samples; target GT / raw <= 1.2)",
            markdown(ground_truth_rows(ground_truth_problems(dims))),
            "### Training step (BNS, batch 40) against dimension and NFE",
            markdown(training_rows(dims, (4, 8) if quick else NFES)),
            "### BNS backpropagation memory, with and without rematerialisation (batch 40)",
            markdown(memory_rows((256,) if quick else (3072, 12288))),
            f"### Model forwards of a BNS solver at NFE 16 (target <= {FORWARD_BUDGET:,.0f})",
            markdown(forwards),
            f"Total time: {time.perf_counter() - start:.0f} s on "
            f"{jax.device_count()} {jax.devices()[0].platform.upper()} device(s).",
        ]
    )
    print(text)
    atomic_write(ROOT / "runs" / "bench_costs.md", text + "\n")


if __name__ == "__main__":
    main()
