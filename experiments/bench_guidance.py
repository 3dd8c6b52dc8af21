"""Benchmark of one BNS solver for a range of guidance scales (``bj.bns(..., guidance=range)``).

1. The shipped ``digits`` model: a range solver trained over ``w in [0, 4]`` (each training
   pair with its own ``w``, i.i.d. uniform or Chebyshev (arcsine), ``family.draw_guidance``;
   validated on draws of the same law) at NFE 8 (and 16), evaluated at ``w = 0, 0.5, ..., 4``
   against each ``w``'s ground truth (rtol = atol = 1e-6), next to the best baseline at each
   ``w`` and a dedicated BNS solver trained at each of ``w = 0, 2, 4`` (noise, batch and
   optimizer shared; the range solver with one and three times their steps); the training cost
   in model calls; the sampling time of the range solver (one ``w`` per sample) over the
   dedicated one's.
2. The shared time grid: the cost of calling the network at one time per sample (what a
   ``w``-dependent grid needs with per-sample ``w``) over one time for the batch.
3. The degree ``K`` of the Chebyshev series in ``w``, on a guided 64-d mixture (conditional: 8
   of the 32 components; unconditional: all 32), NFE 8: held-out PSNR at each ``w``.

4. The patches16 UNet at NFE 8 (``--part patches16``; fewer samples and scales, one range
   solver): as 1.
5. The sampling time of a range solver with one ``w`` per sample over a dedicated solver
   (``--part timing``; digits, NFE 8 and 16, batches 64 and 256).

Run ``python -m experiments.bench_guidance`` (``--part`` for one part, ``--quick`` for a smoke
run; ``--steps``, ``--n-train`` to size it); each part's table is printed and written to
``runs/bench_guidance_PART.md``, the plots of PSNR against ``w`` to
``docs/guidance_psnr*.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

import bespoke_jax as bj
from bespoke_jax.app.defaults import DEMO_MODELS
from bespoke_jax.app.report import save_figure
from bespoke_jax.core.args import batch_axes
from bespoke_jax.families.bns import BNS
from bespoke_jax.families.bns_range import BNSRange
from bespoke_jax.io.files import atomic_write
from experiments._common import baseline_psnrs, noise_sets
from experiments.bench_bns import RUNS, markdown

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RANGE = (0.0, 4.0)
EVAL_WS = tuple(np.arange(0.0, 4.01, 0.5).tolist())
DEDICATED_WS = (0.0, 2.0, 4.0)
TOL = 1e-6
GRID_DEGREE = 2  # of the grid-in-w experiment


def train(family, u, x_train, x_val, train_args, val_args, steps, data=None, batch_size=None):
    """``bj.train`` with the family's default optimizer; ``(result, wall seconds)``."""
    start = time.perf_counter()
    data = data or {}
    result = bj.train(
        family,
        u,
        x_train,
        x_val,
        args=train_args,
        val_args=val_args,
        steps=steps,
        batch_size=batch_size,
        eval_every=max(steps // 4, 1),
        train_data=data.get("train"),
        val_data=data.get("val"),
        progress=False,
    )
    return result, time.perf_counter() - start


def median_ratio(first, second, repeats: int = 21) -> float:
    """Median time of ``fn(*inputs)`` for ``first = (fn, inputs)`` over ``second``'s, warmed
    up and interleaved."""
    calls = (first, second)
    for fn, inputs in calls:
        jax.block_until_ready(fn(*inputs))
    times = ([], [])
    for _ in range(repeats):
        for (fn, inputs), record in zip(calls, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn(*inputs))
            record.append(time.perf_counter() - start)
    return float(np.median(times[0]) / np.median(times[1]))


def evaluate_at(family, params, u, x_test, args_at, truth) -> dict:
    """Held-out PSNR of ``family`` at every ``w`` of ``truth`` (one jit, ``w`` as an input)."""
    sample = jax.jit(lambda p, x, a: family.sample(p, u, x, a))
    return {w: float(bj.psnr(sample(params, x_test, args_at(w)), x1)) for w, x1 in truth.items()}


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """What ``model_rows`` runs on one shipped model.

    Attributes:
      name: the shipped model; ``sigma0`` its BNS preconditioning (the demo's).
      sizes: training, validation and test noise samples.
      eval_ws: the scales of the evaluation.
      budgets: ``{label: (multiple of steps, distribution of w)}`` of the range solvers.
      batch_size: of every solver (``None``: the BNS default).
      tol: rtol = atol of the ground truth.
    """

    name: str
    sigma0: float
    sizes: tuple[int, int, int]
    eval_ws: tuple[float, ...] = EVAL_WS
    budgets: tuple = (
        ("range", 1, "uniform"),
        ("range, 3x steps", 3, "uniform"),
        ("range, 3x steps, chebyshev draws", 3, "chebyshev"),
    )
    batch_size: int | None = None
    tol: float = TOL


# A guided UNet step costs ~1 s at batch 16 on 2 CPU cores and its ground truth at 1e-6 did not
# finish in 20 minutes there: fewer samples and scales, the demo's tolerance, and one range
# solver, trained with the dedicated solvers' total budget and the default draws.
PATCHES16 = ModelRun(
    "patches16", DEMO_MODELS["patches16"].sigma0, (128, 32, 16), (0.0, 2.0, 4.0),
    (("range, 3x steps", 3, "chebyshev"),), 16, 1e-5,
)  # fmt: skip


def model_rows(run: ModelRun, nfes, steps: int, out: Path) -> tuple[list, list]:
    """Per-``w`` PSNR rows and per-solver cost rows on ``run.name``: range solvers with
    multiples of ``steps`` (one dedicated solver's budget) next to dedicated solvers."""
    model = bj.pretrained(run.name)
    u, scheduler = model.velocity, model.scheduler
    n_train, n_val, n_test = run.sizes
    eval_ws = run.eval_ws
    x_train, x_val, x_test = noise_sets(model.shape, run.sizes, seed=3)

    def labels(n):
        return jnp.arange(n) % model.num_classes

    def args_at(w, n=n_test):
        return model.args(labels(n), w)

    # Every w's ground truth in one solve: the test noise repeated, one w per sample.
    ws = np.repeat(np.asarray(eval_ws, np.float32), n_test)
    tiled = jnp.tile(x_test, (len(eval_ws),) + (1,) * (x_test.ndim - 1))
    tiled_args = model.args(jnp.tile(labels(n_test), len(eval_ws)), ws)
    x1 = bj.ground_truth(u, tiled, args=tiled_args, rtol=run.tol, atol=run.tol, progress=True).x1
    truth = {w: x1[i * n_test : (i + 1) * n_test] for i, w in enumerate(eval_ws)}
    print(f"ground truth at {len(eval_ws)} scales done", flush=True)

    rows, costs, found = [], [], {}
    key_train, key_val = jax.random.split(jax.random.key(4))
    shared_data = {w: {} for w in DEDICATED_WS}
    range_data: dict = {}  # ground truth by distribution of w
    budgets = {label: (scale * steps, kind) for label, scale, kind in run.budgets}
    for nfe in nfes:
        base = {
            w: baseline_psnrs(u, x_test, truth[w], nfe, scheduler, args_at(w), runs=RUNS)
            for w in eval_ws
        }
        family = bj.bns(nfe, sigma0=run.sigma0, scheduler=scheduler, guidance=RANGE)
        draws = {
            kind: tuple(
                model.args(labels(n), family.draw_guidance(key, n, kind))
                for key, n in ((key_train, n_train), (key_val, n_val))
            )
            for kind in ("uniform", "chebyshev")
        }
        per_sample = model.args(labels(n_test), jnp.linspace(*RANGE, n_test))
        ranged, dedicated, params = {}, {}, {}
        fixed = bj.bns(nfe, sigma0=run.sigma0, scheduler=scheduler)
        names = [*list(budgets)[:1], *DEDICATED_WS, *list(budgets)[1:]]  # the longest last
        solvers = [(name, fixed if name in DEDICATED_WS else family) for name in names]
        for name, solver in solvers:
            n, kind = budgets.get(name, (steps, None))
            if isinstance(name, str):
                data, fit_args = range_data.setdefault(kind, {}), draws[kind]
            else:
                data, fit_args = shared_data[name], (args_at(name, n_train), args_at(name, n_val))
            result, wall = train(solver, u, x_train, x_val, *fit_args, n, data, run.batch_size)
            data.update(train=result.train_data, val=result.val_data)
            values = evaluate_at(solver, result.params, u, x_test, args_at, truth)
            params[name] = result.params
            (ranged if isinstance(name, str) else dedicated)[name] = values
            label = name if isinstance(name, str) else f"dedicated w = {name:g}"
            costs.append(
                {"NFE": nfe, "solver": label, "steps": n, "train s": wall,
                 "model calls": result.model_calls}
            )  # fmt: skip
            print(f"{label} NFE {nfe}: {values}", flush=True)
            found[f"{label}, NFE {nfe}"] = {"psnr": values, **costs[-1]}
            atomic_write(out / "bench_guidance_partial.json", json.dumps({"base": base, **found}))
        ours = jax.jit(lambda p, x, a, f=family: f.sample(p, u, x, a))
        theirs = jax.jit(lambda p, x, a, f=fixed: f.sample(p, u, x, a))
        costs[-1]["time / dedicated"] = median_ratio(
            (ours, (params[list(budgets)[0]], x_test, per_sample)),
            (theirs, (params[DEDICATED_WS[-1]], x_test, args_at(DEDICATED_WS[-1]))),
        )
        for w in eval_ws:
            best_name = max(base[w], key=base[w].get)
            row = {"NFE": nfe, "w": w}
            row.update({name: values[w] for name, values in ranged.items()})
            row.update({"best baseline": base[w][best_name], "(which)": best_name})
            row["dedicated BNS"] = dedicated[w][w] if w in dedicated else None
            near = min(DEDICATED_WS, key=lambda d: abs(d - w))
            row["dedicated at nearest trained w"] = dedicated[near][w]
            for name, values in ranged.items():
                row[f"{name} - best baseline"] = values[w] - base[w][best_name]
                if w in dedicated:
                    row[f"{name} - dedicated"] = values[w] - dedicated[w][w]
            rows.append(row)
    return rows, costs


def timing_rows(nfes=(8, 16), batches=(64, 256), repeats: int = 41) -> list:
    """Sampling time of a range solver with one ``w`` per sample over a dedicated solver with
    one ``w`` for the batch, on digits (time does not depend on the parameters' values: both at
    ``init()``)."""
    model = bj.pretrained("digits")
    u, rows = model.velocity, []
    for nfe in nfes:
        sigma0 = DEMO_MODELS["digits"].sigma0
        ranged = bj.bns(nfe, sigma0=sigma0, scheduler=model.scheduler, guidance=RANGE)
        fixed = bj.bns(nfe, sigma0=sigma0, scheduler=model.scheduler)
        ours = jax.jit(lambda p, x, a, f=ranged: f.sample(p, u, x, a))
        theirs = jax.jit(lambda p, x, a, f=fixed: f.sample(p, u, x, a))
        for n in batches:
            x = jax.random.normal(jax.random.key(n), (n, *model.shape))
            labels = jnp.arange(n) % model.num_classes
            per_sample = model.args(labels, jnp.linspace(*RANGE, n))
            ratio = median_ratio(
                (ours, (ranged.init(), x, per_sample)),
                (theirs, (fixed.init(), x, model.args(labels, RANGE[1]))),
                repeats,
            )
            rows.append({"NFE": nfe, "batch": n, "time / dedicated": ratio})
            print(rows[-1], flush=True)
    return rows


def grid_cost(n: int = 64, repeats: int = 21) -> float:
    """Time of one digits call with a time per sample over one call with a shared time."""
    model = bj.pretrained("digits")
    u = model.velocity
    x = jax.random.normal(jax.random.key(0), (n, *model.shape))
    args = model.args(jnp.arange(n) % 10, jnp.linspace(*RANGE, n))
    t = jnp.full((n,), 0.3)
    shared = jax.jit(lambda t, x, a: u(t[0], x, a))
    per_sample = jax.jit(
        jax.vmap(lambda t, x, a: u(t, x[None], jax.tree.map(lambda v: v[None], a))[0])
    )
    return median_ratio((per_sample, (t, x, args)), (shared, (t, x, args)))


@dataclasses.dataclass(frozen=True)
class GridInW(BNSRange):
    """The experiment the package does not ship: the time grid, too, a Chebyshev series in
    ``w``; with one ``w`` per sample the field is called at one time per sample (vmap over
    single samples, as the ground truth does). Without preconditioning only."""

    @property
    def num_params(self) -> int:
        return super().num_params + self.degree * (self.nfe + 1)

    def init(self) -> dict:
        return {**super().init(), "grid": jnp.zeros((self.degree + 1, self.nfe + 1))}

    def _at(self, params, row):
        residuals = {k: jnp.tensordot(row, v, axes=1) for k, v in params.items()}
        return BNS.coefficients(self, residuals)

    def coefficients(self, params, guidance=None):
        basis = self.basis(guidance)
        if basis.ndim == 1:
            return self._at(params, basis)
        return jax.vmap(lambda row: self._at(params, row))(basis)

    def sample(self, params, u, x0, args=None):
        c = self.coefficients(params, self.guidance_of(args, x0.shape[0]))
        if c["grid"].ndim == 1:
            return self.integrate(c, u, x0, args)
        axes = batch_axes(args, x0.shape[0])

        def per_sample(t, x, args):
            one = jax.vmap(lambda t, x, a: u(t, x[None], a)[0], in_axes=(0, 0, axes))
            return one(t, x, args)

        return self.integrate({**c, "grid": c["grid"].T}, per_sample, x0, args)


def degree_rows(degrees, steps: int, sizes=(256, 128, 128), nfe: int = 8) -> list:
    """Held-out PSNR at each ``w`` of range solvers of each Chebyshev degree, guided mixture."""
    scheduler = bj.cond_ot()
    full = bj.GaussianMixture.random(jax.random.key(0), 32, 64, 0.05)
    part = bj.GaussianMixture(full.means[:8], full.stds[:8], full.weights[:8])
    u = bj.guided(part.velocity(scheduler), full.velocity(scheduler))
    x_train, x_val, x_test = noise_sets((64,), sizes, seed=5)
    ws = np.repeat(np.asarray(EVAL_WS), sizes[2])
    x1 = bj.ground_truth(
        u, jnp.tile(x_test, (len(EVAL_WS), 1)), args={"guidance": ws}, rtol=TOL, atol=TOL
    ).x1
    truth = {w: x1[i * sizes[2] : (i + 1) * sizes[2]] for i, w in enumerate(EVAL_WS)}
    keys = jax.random.split(jax.random.key(6))
    data, rows = {}, []
    grid_in_w = GridInW(nfe, "midpoint", 1.0, scheduler, guidance=RANGE, degree=GRID_DEGREE)
    families = [bj.bns(nfe, scheduler=scheduler, guidance=RANGE, degree=k) for k in degrees]
    for family in [*families, grid_in_w]:
        degree = family.degree if type(family) is BNSRange else f"{family.degree}, grid in w"
        train_args, val_args = (
            {"guidance": family.draw_guidance(k, len(x))}
            for k, x in zip(keys, (x_train, x_val), strict=True)
        )
        result, wall = train(family, u, x_train, x_val, train_args, val_args, steps, data)
        data.update(train=result.train_data, val=result.val_data)
        values = evaluate_at(family, result.params, u, x_test, lambda w: {"guidance": w}, truth)
        row = {"K": degree, "parameters": family.num_params}
        row.update({f"w = {w:g}": v for w, v in values.items()})
        row.update(min=min(values.values()), mean=float(np.mean(list(values.values()))))
        rows.append({**row, "train s": wall})
        print(f"degree {degree}: {rows[-1]}", flush=True)
    return rows


def plot(rows, model: str, path) -> Path:
    """PSNR against ``w``: the range solver, the best baseline and the dedicated solvers."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for nfe in sorted({row["NFE"] for row in rows}):
        mine = [row for row in rows if row["NFE"] == nfe]
        ws = [row["w"] for row in mine]
        (line,) = ax.plot(
            ws, [row["best baseline"] for row in mine], "--", label=f"best baseline, NFE {nfe}"
        )
        ranged = [k for k in mine[0] if k.startswith("range") and " - " not in k]
        for name, marker in zip(ranged, ("o-", "^-", "v-")[: len(ranged)], strict=True):
            ax.plot(
                ws,
                [row[name] for row in mine],
                marker,
                color=line.get_color(),
                label=f"{name} BNS, NFE {nfe}",
            )
        trained = [row for row in mine if row["dedicated BNS"] is not None]
        ax.plot(
            [row["w"] for row in trained],
            [row["dedicated BNS"] for row in trained],
            "s",
            color=line.get_color(),
            mfc="none",
            ms=9,
            label=f"dedicated BNS, NFE {nfe}",
        )
    ax.set_xlabel("guidance scale w")
    ax.set_ylabel("PSNR vs ground truth [dB], R = 2")
    ax.set_title(f"{model}: one BNS solver for w in [{RANGE[0]:g}, {RANGE[1]:g}]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def mixture_text(degrees, steps: int, ratio: float) -> str:
    return "\n\n".join(
        [
            "## One BNS solver for a range of guidance scales: the series in w",
            f"### Degree K of the series in w (guided 64-d mixture, NFE 8, {steps} steps)",
            "Held-out PSNR (dB, R = 2) at each w; 256 training pairs with w uniform on "
            "[0, 4], 128 validation, 128 test samples at each w. 'grid in w': the time grid, "
            "too, a series in w (one model time per sample, vmap).",
            markdown(degrees),
            "### Shared time grid",
            f"One digits call with a model time per sample (vmap over single samples; what a "
            f"w-dependent grid needs when w varies per sample) takes {ratio:.2f}x a call with "
            f"one time for the batch (64 samples, jitted, median of 21).",
        ]
    )


def model_text(run: ModelRun, rows, costs, steps: int, figure: Path) -> str:
    draws = "; ".join(f"{label}: w {kind}" for label, _, kind in run.budgets)
    return "\n\n".join(
        [
            f"## One BNS solver for guidance w in [0, 4] on the {run.name} model "
            "(held-out PSNR, dB, R = 2)",
            f"{steps} steps per dedicated solver, batch {run.batch_size or 'the BNS default'}; "
            f"range solvers: {draws} (one draw per training pair; 3x steps: the three "
            f"dedicated solvers' total); {run.sizes[0]} training pairs, {run.sizes[1]} "
            f"validation, {run.sizes[2]} test noise samples at each w (ground truth rtol = "
            f"atol = {run.tol:g}); sigma0 = "
            f"{run.sigma0:g}; Prodigy (the BNS default); dedicated solvers: same noise, steps "
            "and optimizer, at one w.",
            markdown(rows),
            "### Training cost and sampling time",
            markdown(costs),
            "model calls: sample-forwards of the guided field (ground truth, training, "
            "validation). time / dedicated: sampling the test batch with one w per sample "
            "over a dedicated solver with one w (median of 21 interleaved runs).",
            f"![PSNR against w](docs/{figure.name})",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, meaningless numbers")
    parser.add_argument(
        "--part", choices=("all", "mixture", "digits", "patches16", "timing"), default="all"
    )
    parser.add_argument("--nfe", type=int, action="append", help="NFE values [8, 16]")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--degrees", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--out", default=str(ROOT / "runs"))
    options = parser.parse_args(argv)
    quick = options.quick
    steps = 4 if quick else options.steps
    nfes = options.nfe or ([4] if quick else [8, 16])
    sizes = (8, 8, 8) if quick else (options.n_train, 64, 64)
    out = Path(options.out)
    parts = {}  # part: its BENCHMARKS.md section
    if options.part in ("all", "mixture"):
        degrees = degree_rows(options.degrees, steps, sizes=sizes if quick else (256, 128, 128))
        parts["mixture"] = mixture_text(degrees, steps, grid_cost())
        atomic_write(out / "bench_guidance_mixture.json", json.dumps(degrees, indent=1))
    runs = {
        "digits": ModelRun("digits", DEMO_MODELS["digits"].sigma0, sizes),
        "patches16": PATCHES16,
    }
    for name, run in runs.items():
        if options.part not in ("all", name):
            continue
        if quick:
            run = dataclasses.replace(run, sizes=sizes, eval_ws=(0.0, 4.0), batch_size=None)
        rows, costs = model_rows(run, nfes if name == "digits" else [8], steps, out)
        atomic_write(
            out / f"bench_guidance_{name}.json", json.dumps({"rows": rows, "costs": costs})
        )
        png = "guidance_psnr.png" if name == "digits" else f"guidance_psnr_{name}.png"
        figure = plot(rows, run.name, out / png if quick else ROOT / "docs" / png)
        parts[name] = model_text(run, rows, costs, steps, figure)
    if options.part in ("all", "timing"):
        timing = timing_rows(batches=(8,) if quick else (64, 256), repeats=3 if quick else 41)
        parts["timing"] = (
            "## Sampling with one guidance scale per sample (digits)\n\n"
            "A range solver given one `w` per sample over a dedicated BNS solver given one `w` "
            "for the batch (jitted, median of 41 interleaved runs each, at `init()`).\n\n"
            + markdown(timing)
        )
    for name, text in parts.items():
        print(text)
        atomic_write(out / f"bench_guidance_{name}.md", text + "\n")


if __name__ == "__main__":
    main()
