"""Pre-trained flow-matching models shipped with the package, loaded offline.

Each model ``NAME`` is two files in ``weights/``: ``NAME.msgpack`` (the network parameters, a
pure dict serialised by ``flax.serialization``) and ``NAME.json`` (architecture, training
config, training cost and sample-quality metrics measured at training time).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization

from bespoke_jax.core.outputs import broadcast_scale, to_velocity
from bespoke_jax.core.schedulers import Scheduler, scheduler_from_config
from bespoke_jax.models.networks import build_model
from bespoke_jax.models.unet import build_unet

WEIGHTS_DIR = Path(__file__).parent / "weights"
NAMES = ("checkerboard", "digits", "patches16")


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
    """A pre-trained velocity field and what is known about it.

    Attributes:
        name: the model's name.
        velocity: ``u(t, x, args) -> dx/dt`` with ``t`` a scalar, ``x`` of shape ``(B, *shape)``
            and ``args`` from ``.args`` (``None`` for an unconditional model). Pure; closes
            over the weights.
        shape: one sample's shape.
        scheduler: the Gaussian path the model was trained on.
        prediction: what the network predicts (``"velocity"``).
        num_classes: number of classes of a class-conditional model, else ``None``.
        identity: sha256 of the weights file (a key for caches of solutions).
        training_cost: ``wall_seconds``, ``model_forwards`` (sample-forwards, steps x batch)
            and ``num_params`` of the training run.
        quality: sample-quality metrics measured after training.
    """

    name: str
    velocity: Callable
    shape: tuple[int, ...]
    scheduler: Scheduler
    prediction: str
    num_classes: int | None
    identity: str
    training_cost: Mapping
    quality: Mapping

    @property
    def null_label(self) -> int | None:
        """The label of the unconditional field (``num_classes``), or ``None``."""
        return self.num_classes

    def args(self, labels=None, guidance=0.0):
        """The ``args`` of ``.velocity``.

        Args:
            labels: class-conditional models only: ints ``(B,)`` in ``[0, num_classes]``, where
                ``num_classes`` (``.null_label``) asks for the unconditional field.
            guidance: classifier-free guidance scale ``w``, a scalar or one per sample
                ``(B,)``, giving ``u = (1 + w) u_cond - w u_uncond``.

        Returns:
            ``None`` for an unconditional model, else ``{"labels": int32 (B,),
            "guidance": float32 () or (B,)}``.
        """
        if self.num_classes is None:
            if labels is not None or _concrete_nonzero(guidance):
                raise ValueError(
                    f"{self.name!r} is unconditional: call .args() without labels or guidance."
                )
            return None
        if labels is None:
            raise ValueError(
                f"{self.name!r} is class-conditional: pass labels, ints of shape (B,) in "
                f"[0, {self.num_classes}) (or {self.null_label} for the unconditional field)."
            )
        if not isinstance(labels, jax.core.Tracer):
            values = np.asarray(labels)
            if values.dtype.kind not in "iu" or values.ndim != 1:
                raise ValueError(
                    f"labels must be ints of shape (B,), got dtype {values.dtype} and shape "
                    f"{values.shape}."
                )
            if values.size and (values.min() < 0 or values.max() > self.num_classes):
                raise ValueError(
                    f"labels must lie in [0, {self.num_classes}] ({self.null_label} is the null "
                    f"label), got values from {values.min()} to {values.max()}."
                )
        guidance = jnp.asarray(guidance, jnp.float32)
        if guidance.ndim != 0 and guidance.shape != np.shape(labels):
            raise ValueError(
                f"guidance must be a scalar or one scale per label, shape {np.shape(labels)}, "
                f"got shape {guidance.shape}."
            )
        return {"labels": jnp.asarray(labels, jnp.int32), "guidance": guidance}


def _concrete_nonzero(value) -> bool:
    return not isinstance(value, jax.core.Tracer) and bool(np.any(np.asarray(value) != 0))


def _guided(forward: Callable, shape: tuple[int, ...], null_label: int | None, dtype) -> Callable:
    """``f(t, x, args)`` from ``forward(t, x, labels)`` with classifier-free guidance.

    ``f = (1 + w) forward(., labels) - w forward(., null_label)``, ``w = args["guidance"]`` (a
    scalar or one per sample); an unconditional network (``null_label`` ``None``) takes
    ``args = None``. ``x`` is cast to ``dtype``, the network's, when given.
    """

    def field(t, x, args):
        if x.shape[1:] != shape:
            raise ValueError(f"x must have shape (B, *{shape}), got {x.shape}.")
        t = jnp.asarray(t, x.dtype)  # the time embedding is computed at the solver's precision
        x = x if dtype is None else x.astype(dtype)
        if null_label is None:
            return forward(t, x, None)
        labels, w = args["labels"], args["guidance"]
        if labels.shape != x.shape[:1]:
            raise ValueError(
                f"args['labels'] must have shape (B,) = {x.shape[:1]}, got {labels.shape}."
            )

        def guided(_):
            # One forward pass of the doubled batch: conditional, then unconditional.
            both = forward(
                t,
                jnp.concatenate([x, x]),
                jnp.concatenate([labels, jnp.full_like(labels, null_label)]),
            )
            cond, uncond = jnp.split(both, 2)
            scale = broadcast_scale(w, x).astype(cond.dtype)
            return (1.0 + scale) * cond - scale * uncond

        # w = 0 (every sample's) needs only the conditional pass (d u / d w is not traced
        # through that branch).
        return jax.lax.cond(jnp.all(w == 0), lambda _: forward(t, x, labels), guided, None)

    return field


def _velocity(graphdef, state, metadata: Mapping, scheduler: Scheduler, dtype) -> Callable:
    """The velocity field ``u(t, x, args)`` of a shipped network, run in ``dtype`` when given.

    An MLP (``VelocityMLP``) is a velocity field on flattened samples. A UNet is a diffusion
    network ``net(x, timestep, labels)`` whose prediction (``metadata["prediction"]``, after
    guidance) ``to_velocity`` converts, with ``timestep = scheduler.timestep(t)``.
    """
    shape, null_label = tuple(metadata["shape"]), metadata["num_classes"]

    def network(*inputs):
        # Flax's layers mix a cast network's dtype with float32 statistics internally.
        promotion = "standard" if dtype is not None else jax.config.jax_numpy_dtype_promotion
        with jax.numpy_dtype_promotion(promotion):
            return nnx.merge(graphdef, state)(*inputs)

    if metadata["architecture"].get("network", "mlp") == "unet":

        def diffusion(t, x, labels):
            return network(x, jnp.broadcast_to(scheduler.timestep(t), x.shape[:1]), labels)

        field = _guided(diffusion, shape, null_label, dtype)
        return to_velocity(field, scheduler, metadata["prediction"])

    def flat(t, x, labels):
        out = network(jnp.broadcast_to(t, x.shape[:1]), x.reshape(x.shape[0], -1), labels)
        return out.reshape(x.shape)

    return _guided(flat, shape, null_label, dtype)


def _build(architecture: Mapping) -> nnx.Module:
    """An initialised network from its architecture config (``"network"``: mlp or unet)."""
    architecture = dict(architecture)
    network = architecture.pop("network", "mlp")
    builders = {"mlp": build_model, "unet": build_unet}
    if network not in builders:
        raise ValueError(f"Unknown network {network!r}; valid: {sorted(builders)}.")
    return builders[network](architecture)


def from_model(model: nnx.Module, metadata: Mapping, identity: str = "", dtype=None) -> Pretrained:
    """A record around an in-memory network and its metadata (the ``NAME.json`` content), its
    floating-point parameters and inputs cast to ``dtype`` when given."""
    graphdef, state = nnx.split(model)
    if dtype is not None:
        state = jax.tree.map(
            lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, state
        )
    scheduler = scheduler_from_config(metadata["scheduler"])
    return Pretrained(
        name=metadata["name"],
        velocity=_velocity(graphdef, state, metadata, scheduler, dtype),
        shape=tuple(metadata["shape"]),
        scheduler=scheduler,
        prediction=metadata["prediction"],
        num_classes=metadata["num_classes"],
        identity=identity,
        training_cost=types.MappingProxyType(dict(metadata.get("training_cost", {}))),
        quality=types.MappingProxyType(dict(metadata.get("quality", {}))),
    )


def save(directory, model: nnx.Module, metadata: Mapping) -> Path:
    """Write ``NAME.msgpack`` and ``NAME.json`` into ``directory``; returns the weights path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pure = nnx.to_pure_dict(nnx.state(model))
    path = directory / f"{metadata['name']}.msgpack"
    path.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, pure)))
    (directory / f"{metadata['name']}.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def load(name: str, directory=WEIGHTS_DIR, dtype=None) -> Pretrained:
    """Load model ``name`` from ``directory`` (no network access, no training), the network run
    in ``dtype`` when given (e.g. ``jnp.bfloat16``)."""
    directory = Path(directory)
    weights, meta_path = directory / f"{name}.msgpack", directory / f"{name}.json"
    if not (weights.is_file() and meta_path.is_file()):
        raise ValueError(f"No model {name!r} in {directory}: expected {weights.name} and .json.")
    metadata = json.loads(meta_path.read_text())
    raw = weights.read_bytes()
    graphdef, state = nnx.split(nnx.eval_shape(lambda: _build(metadata["architecture"])))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, serialization.msgpack_restore(raw)))
    model = nnx.merge(graphdef, state)
    return from_model(model, metadata, identity=hashlib.sha256(raw).hexdigest(), dtype=dtype)


@functools.cache
def pretrained(name: str, dtype=None) -> Pretrained:
    """A pre-trained model shipped with the package: ``"checkerboard"``, ``"digits"`` or
    ``"patches16"``.

    ``"checkerboard"``: unconditional 2-D points (shape ``(2,)``) on the dark squares of a 4x4
    board on ``[-2, 2]^2``. ``"digits"``: 8x8 handwritten digits (shape ``(8, 8)``, pixels in
    [-1, 1]), class-conditional with classifier-free guidance (10 classes, null label 10).
    Both are CondOT flow-matching velocity fields. ``"patches16"``: 16x16 RGB patches of seven
    photographs (shape ``(16, 16, 3)``, pixels in [-1, 1], one class per photograph, null label
    7), a conv UNet noise predictor (``prediction == "eps"``) on ``bj.ddpm("linear")``, its
    ``.velocity`` converted by ``bj.to_velocity``. The record is cached: one object per name
    and ``dtype``.

    ``dtype`` (e.g. ``jnp.bfloat16``) runs the network in that dtype: parameters and inputs are
    cast and ``.velocity`` returns it; solvers keep float32 state and return float32.
    """
    if name not in NAMES:
        raise ValueError(f"Unknown pre-trained model {name!r}; valid names: {list(NAMES)}.")
    return load(name, dtype=dtype)
