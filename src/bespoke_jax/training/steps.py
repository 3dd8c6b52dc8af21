"""Pure factories of the data-parallel training and validation steps.

``make_update_step`` draws a minibatch of ``batch_size`` row indices from the RNG key (on the
replicated training set, so the draw does not depend on the device count), splits it over the
mesh's ``"batch"`` axis, and applies the optimizer to the gradient of the mean loss, whose
device shares one all-reduce (``pmean``) combines. ``make_validate_step`` samples the
validation noise, each device its rows, and returns the mean per-sample PSNR with padding rows
masked out. Both are jitted; parameters and optimizer state are replicated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bespoke_jax.core.args import take
from bespoke_jax.core.metrics import psnr
from bespoke_jax.families.base import Family
from bespoke_jax.truth.data import TrainingData
from bespoke_jax.truth.sharded import AXIS, pad_rows, row_specs, shard_rows


def rows(data: TrainingData, index) -> TrainingData:
    """The samples of ``data`` at ``index`` (an integer array); ``path_ts`` is shared."""
    x0, x1, ts, xs, us, nfe = data
    return TrainingData(
        x0[index],
        x1[index],
        ts,
        None if xs is None else xs[index],
        None if us is None else us[index],
        nfe,
    )


def make_update_step(
    family: Family,
    u: Callable,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    num_train: int,
    batch_size: int,
    loss: Callable | None = None,
    remat: bool = False,
    key_impl=None,
) -> Callable:
    """The jitted step ``update(params, opt_state, key_data, data, args)``.

    Args:
      family: the learned solver family.
      u: the frozen model's field ``u(t, x, args)``.
      optimizer: the Optax transformation.
      mesh: the devices (axis ``"batch"``); ``batch_size`` a multiple of ``mesh.size``.
      num_train: N, the rows of the training set the step draws from.
      batch_size: the minibatch size.
      loss: ``loss(params, u, batch, args) -> scalar``; default ``family.loss``.
      remat: ``jax.checkpoint`` on every model call (recompute activations backwards).
      key_impl: the PRNG implementation of ``key_data`` (default: JAX's default).

    Returns:
      ``update(params, opt_state, key_data, data, args) -> (params, opt_state, key_data,
      loss)`` with ``data`` the ``TrainingData`` of all N rows and ``args`` their args, all
      replicated; outputs replicated.
    """
    loss = family.loss if loss is None else loss
    field = jax.checkpoint(u) if remat else u
    per_device = batch_size // mesh.size
    impl = jax.random.key_impl(jax.random.key(0)) if key_impl is None else key_impl

    def local_gradient(params, key_data, data, field_args):
        key, sub = jax.random.split(jax.random.wrap_key_data(key_data, impl=impl))
        index = jax.random.choice(sub, num_train, (batch_size,), replace=False)
        mine = jax.lax.dynamic_slice_in_dim(
            index, jax.lax.axis_index(AXIS) * per_device, per_device
        )
        value, grads = jax.value_and_grad(loss)(
            params, field, rows(data, mine), take(field_args, mine, num_train)
        )
        return jax.lax.pmean((value, grads), AXIS), jax.random.key_data(key)

    gradient = jax.shard_map(
        local_gradient, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False
    )

    def update(params, opt_state, key_data, data, field_args):
        (value, grads), key_data = gradient(params, key_data, data, field_args)
        # Optax raises step counts (int32) to float powers: its promotions are its own.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, key_data, value

    return jax.jit(update, out_shardings=NamedSharding(mesh, P()))


def padded_size(num_rows: int, mesh: Mesh) -> int:
    """``num_rows`` rounded up to a multiple of the mesh's device count."""
    return math.ceil(num_rows / mesh.size) * mesh.size


def place_validation(x0, x1, args, mesh: Mesh) -> tuple:
    """``(x0, x1, args)`` of M validation rows, padded to ``padded_size(M)`` and split over the
    mesh (per-sample args leaves with their rows, other leaves replicated)."""
    m = np.shape(x0)[0]
    size = padded_size(m, mesh)
    return shard_rows(pad_rows((x0, x1, args), m, size), mesh, size)


def make_validate_step(
    family: Family, u: Callable, mesh: Mesh, *, num_val: int, data_range: float = 2.0
) -> Callable:
    """The jitted ``validate(params, x0, x1, args) -> mean PSNR`` of ``num_val`` rows.

    ``x0, x1, args`` come from ``place_validation``; the PSNR is the mean over the ``num_val``
    real rows of ``psnr(family.sample(params, u, x0_b), x1_b, data_range)``.
    """
    size = padded_size(num_val, mesh)
    per_device = size // mesh.size

    def local_psnr(params, x0, x1, field_args):
        x = family.sample(params, u, x0, field_args)
        values = jax.vmap(lambda a, b: psnr(a[None], b[None], data_range))(x, x1)
        index = jax.lax.axis_index(AXIS) * per_device + jnp.arange(per_device)
        return jax.lax.psum(jnp.sum(jnp.where(index < num_val, values, 0.0)), AXIS) / num_val

    @jax.jit
    def validate(params, x0, x1, field_args):
        specs = row_specs((x0, x1, field_args), size)
        return jax.shard_map(
            local_psnr, mesh=mesh, in_specs=(P(), *specs), out_specs=P(), check_vma=False
        )(params, x0, x1, field_args)

    return validate
