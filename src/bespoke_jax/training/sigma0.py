"""Choosing the BNS preconditioning scale sigma0 before training (BNS eq. 14).

``sigma0`` changes the scheduler the source solver runs on (``sigmabar = sigma0 sigma``), and
with it where its steps fall; training starts from that solver and its accuracy there predicts
which scale trains best. ``choose_sigma0`` runs the untrained BNS solver (the source solver on
the preconditioned field) for a handful of candidates on validation ground truth and keeps the
best: one ground-truth solve and ``len(candidates)`` samples of ``nfe`` calls. With ``steps > 0``
it trains each candidate briefly (``bj.train``, shared ground truth) and keeps the best trained
validation PSNR instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from bespoke_jax.core.metrics import psnr
from bespoke_jax.core.schedulers import Scheduler
from bespoke_jax.families.bns import bns
from bespoke_jax.training.loop import train
from bespoke_jax.truth.adaptive import ground_truth
from bespoke_jax.truth.data import TrainingData

SIGMA0_CANDIDATES = (0.25, 0.5, 1.0, 2.0, 4.0)


class Sigma0Choice(NamedTuple):
    """Result of ``choose_sigma0``.

    Attributes:
      sigma0: the candidate of the highest validation PSNR.
      psnr: ``{candidate: validation PSNR [dB]}``: of the untrained BNS solver, or its best
        over ``steps`` training steps.
    """

    sigma0: float
    psnr: dict


def choose_sigma0(
    u: Callable,
    x0_val,
    *,
    nfe: int,
    init: str = "midpoint",
    scheduler: Scheduler,
    args=None,
    x1_val=None,
    candidates: Sequence[float] = SIGMA0_CANDIDATES,
    data_range: float = 2.0,
    steps: int = 0,
    x0_train=None,
    train_args=None,
    train_data: TrainingData | None = None,
) -> Sigma0Choice:
    """The preconditioning scale of ``bj.bns(nfe, init=init, sigma0=...)`` for field ``u``.

    Args:
      u: the velocity field ``u(t, x, args)``.
      x0_val: validation noise ``(B, *shape)``.
      nfe: model calls per sample.
      init: the BNS source solver (a name of ``bj.solvers.NAMES`` that can spend ``nfe``).
      scheduler: the model's scheduler.
      args: the field's args for ``x0_val``.
      x1_val: the ground truth of ``x0_val`` (``None``: solved here, ``bj.ground_truth``).
      candidates: positive scales to try.
      data_range: the PSNR's data range.
      steps: training steps per candidate (0: untrained).
      x0_train, train_args: training noise and its args (needed when ``steps > 0``).
      train_data: the ground truth of ``x0_train`` (``None``: solved once here, for every
        candidate).

    Returns:
      ``Sigma0Choice``: the best candidate and every candidate's validation PSNR.

    Raises:
      ValueError: no candidates, a non-positive one, options ``bj.bns`` refuses, or
        ``steps > 0`` without ``x0_train``.
    """
    candidates = [float(c) for c in candidates]
    if not candidates or not all(0.0 < c < np.inf for c in candidates):
        raise ValueError(f"candidates must be positive finite scales, got {candidates}.")
    families = {c: bns(nfe, init=init, sigma0=c, scheduler=scheduler) for c in candidates}
    if x1_val is None:
        x1_val = ground_truth(u, x0_val, args=args).x1
    if steps and x0_train is None:
        raise ValueError("steps > 0 trains each candidate briefly: pass x0_train.")
    scores, val_data = {}, TrainingData(x0_val, x1_val)
    for c, family in families.items():
        if steps:
            result = train(
                family,
                u,
                x0_train,
                x0_val,
                args=train_args,
                val_args=args,
                steps=steps,
                eval_every=max(1, steps // 5),
                train_data=train_data,
                val_data=val_data,
                data_range=data_range,
                progress=False,
            )
            train_data, scores[c] = result.train_data, result.best_val_psnr
            continue
        x1 = jax.jit(lambda x0, args, f=family: f.sample(f.init(), u, x0, args))(x0_val, args)
        scores[c] = float(psnr(x1, x1_val, data_range))
    best = max(scores, key=lambda c: np.nan_to_num(scores[c], nan=-np.inf))
    return Sigma0Choice(best, scores)
