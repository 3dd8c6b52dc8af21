"""Choosing the BNS preconditioning scale sigma0 before training (BNS eq. 14).

``sigma0`` changes the scheduler the source solver runs on (``sigmabar = sigma0 sigma``), and
with it where its steps fall; training starts from that solver and its accuracy there predicts
which scale trains best. ``choose_sigma0`` runs the untrained BNS solver (the source solver on
the preconditioned field) for a handful of candidates on validation ground truth and keeps the
best: one ground-truth solve and ``len(candidates)`` samples of ``nfe`` calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from bespoke_jax.core.metrics import psnr
from bespoke_jax.core.schedulers import Scheduler
from bespoke_jax.families.bns import bns
from bespoke_jax.truth.adaptive import ground_truth

SIGMA0_CANDIDATES = (0.25, 0.5, 1.0, 2.0, 4.0)


class Sigma0Choice(NamedTuple):
    """Result of ``choose_sigma0``.

    Attributes:
      sigma0: the candidate of the highest validation PSNR.
      psnr: ``{candidate: validation PSNR [dB]}`` of the untrained BNS solver.
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

    Returns:
      ``Sigma0Choice``: the best candidate and every candidate's validation PSNR.

    Raises:
      ValueError: no candidates, a non-positive one, or options ``bj.bns`` refuses.
    """
    candidates = [float(c) for c in candidates]
    if not candidates or not all(0.0 < c < np.inf for c in candidates):
        raise ValueError(f"candidates must be positive finite scales, got {candidates}.")
    families = {c: bns(nfe, init=init, sigma0=c, scheduler=scheduler) for c in candidates}
    if x1_val is None:
        x1_val = ground_truth(u, x0_val, args=args).x1
    scores = {}
    for c, family in families.items():
        x1 = jax.jit(lambda x0, args, f=family: f.sample(f.init(), u, x0, args))(x0_val, args)
        scores[c] = float(psnr(x1, x1_val, data_range))
    best = max(scores, key=lambda c: np.nan_to_num(scores[c], nan=-np.inf))
    return Sigma0Choice(best, scores)
