"""Exported solvers without JAX: read a ``bj.export_solver`` file and sample with NumPy.

Every export runs as the non-stationary (NS) solver on the model's own field ``u(t, x, args)``

    x_0 = a_0 x0,   u_i = u(times_i, x_i, args),   x_{i+1} = a_{i+1} x0 + sum_{j<=i} b_ij u_j,

``i = 0..n-1``, returning ``x_n``: BNS (preconditioning folded in), BST and learned grids alike.
``sample`` is that loop in NumPy, the reference for ports (docs/export.md has it in PyTorch).
This module imports NumPy only; reading a version-1 file of a BST solver or of a preconditioned
BNS solver converts it with the package (JAX).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

EXPORT_FORMAT = "bespoke_jax.solver_export"
EXPORT_VERSION = 2


def sample(solver, u: Callable, x0, args=None) -> np.ndarray:
    """Run an exported solver: ``x1`` from noise ``x0 (B, *shape)`` in ``n`` calls of ``u``.

    Args:
      solver: an export's record (``read_export``) or the path of its JSON file.
      u: the velocity field ``u(t, x, args) -> dx/dt`` on NumPy arrays (``t`` a float).
      x0: the noise, ``(B, *shape)``.
      args: passed to ``u``.

    Returns:
      ``x1``, shape and dtype of ``x0`` (accumulated in float64).
    """
    record = solver if isinstance(solver, dict) else read_export(solver)
    times, a, b = (np.asarray(record[k], np.float64) for k in ("times", "a", "b"))
    x0 = np.asarray(x0)
    x, velocities = a[0] * x0, []
    for i in range(len(times) - 1):
        velocities.append(np.asarray(u(times[i], x, args), np.float64))
        x = a[i + 1] * x0 + sum(b[i, j] * v for j, v in enumerate(velocities))
    return x.astype(x0.dtype)


def read_export(path) -> dict:
    """The record of an export file, in the current version's form.

    Version 1 records are converted: ``"times"``, ``"a"``, ``"b"`` become the NS form on the
    original field (BNS with ``sigma0 != 1`` and BST through the package, which needs JAX).

    Raises:
      ValueError: not an export, or one written by a newer version of the package.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not an exported solver: {err}.") from None
    version = record.get("format_version") if isinstance(record, dict) else None
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not an exported solver (format {EXPORT_FORMAT!r}).")
    if version not in range(1, EXPORT_VERSION + 1):
        raise ValueError(
            f"{path} has export format version {version!r}; this bespoke_jax reads versions "
            f"1 to {EXPORT_VERSION}: upgrade bespoke_jax."
        )
    if version == 1:
        record = {**record, **_ns_form_of_version_1(record), "format_version": EXPORT_VERSION}
    return record


def _ns_form_of_version_1(record: dict) -> dict:
    """``times, a, b`` of a version-1 record (BNS: ``grid, a, b, sigma0, s_start, s_end``;
    BST: its transform ``t, dt, s, ds`` on ``r_j = j / nfe``)."""
    family = record["family"]
    if family["name"] == "bns" and record["sigma0"] == 1.0:
        return {k: record[k] for k in ("times", "a", "b")}
    import jax.numpy as jnp

    from bespoke_jax.core.schedulers import scheduler_from_config
    from bespoke_jax.core.transforms import precondition
    from bespoke_jax.families.registry import family_from_config
    from bespoke_jax.solvers.ns_coefficients import linear_coefficients

    if family["name"] == "bns":  # the NS loop on the preconditioned field, read off on a basis
        scheduler = scheduler_from_config(family["scheduler"])
        a = [record["s_start"] * value for value in record["a"]]
        r = {"times": [*record["grid"], 1.0], "a": a, "b": record["b"]}

        def run(u, x0):
            ubar = precondition(u, scheduler, record["sigma0"])[0]
            x1 = sample(r, lambda t, x, args: ubar(t, jnp.asarray(x), args), x0)
            return x1 / record["s_end"]

    else:
        bst = family_from_config(family)
        c = {k: jnp.asarray(record[k]) for k in ("t", "dt", "s", "ds")}

        def run(u, x0):
            for i in range(bst.num_steps):
                x0 = bst._step(c, i, x0, u, None)
            return x0

    ns = linear_coefficients(run, record["nfe"], f"the version-1 {family['name']} export")
    return {"times": np.append(ns.ts, 1.0).tolist(), "a": ns.a.tolist(), "b": ns.b.tolist()}
