"""Learned solvers as durable artifacts: save, load (Orbax + JSON) and a plain-JSON export.

A saved solver is a directory holding ``params/`` (the parameter pytree, written by Orbax) and
``solver.json``: the format and package versions, the family (``{"name", **config()}``, from
which ``family_from_config`` rebuilds it), its NFE and number of parameters, the shapes and a
sha256 checksum of the parameters, and the user's metadata (conventionally ``model``,
``model_id``, ``guidance``, ``val_psnr``...). Loading refuses, with the reason, a directory of
another format version, of another family than asked for, or whose parameters do not fit the
family or fail the checksum: a damaged artifact never produces samples.

``export_solver`` writes the decoded coefficients as plain JSON for use outside JAX, with the
learned time grid in the diffusers conventions when a scheduler is known (see its docstring).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bespoke_jax.core.schedulers import Scheduler, scheduler_from_config
from bespoke_jax.export import EXPORT_FORMAT, EXPORT_VERSION
from bespoke_jax.families.base import Family, Params
from bespoke_jax.families.registry import family_from_config
from bespoke_jax.io.checkpoints import checkpoints_are_ours
from bespoke_jax.io.files import atomic_write, params_sha256, sha256
from bespoke_jax.io.outputs import claim_dir, claim_file, read_record, replacing_entries
from bespoke_jax.solvers.ns_coefficients import linear_coefficients

FORMAT = "bespoke_jax.solver"
FORMAT_VERSION = 2  # 2 adds record_sha256; every earlier version still loads
_META_FILE = "solver.json"
_PARAMS_DIR = "params"
CHECKPOINTS_DIR = "checkpoints"
RESERVED = (
    "format",
    "format_version",
    "package_version",
    "family",
    "nfe",
    "num_params",
    "params_shapes",
    "params_sha256",
    "record_sha256",
)
_REQUIRED = ("family", "params_shapes", "params_sha256")


def _package_version() -> str:
    from bespoke_jax import __version__

    return __version__


def _shapes(params: Params) -> dict:
    """``{path: [shape, dtype]}`` of arrays or of ``jax.ShapeDtypeStruct`` leaves."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {
        jax.tree_util.keystr(path): [list(np.shape(leaf)), str(np.dtype(leaf.dtype))]
        for path, leaf in flat
    }


def _json_default(value):
    if isinstance(value, Scheduler):
        return value.to_config()
    if isinstance(value, np.generic | np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(record: dict, what: str) -> str:
    try:
        return json.dumps(record, indent=1, default=_json_default, allow_nan=True)
    except TypeError as err:
        raise ValueError(f"{what} must be JSON-serialisable: {err}.") from None


def _family_record(family: Family) -> dict:
    return {"name": family.name, **family.config()}


def record_sha256(record: dict) -> str:
    """sha256 of a ``solver.json`` record's canonical JSON, without its ``record_sha256``."""
    body = {key: value for key, value in record.items() if key != "record_sha256"}
    return sha256(json.dumps(body, sort_keys=True).encode())


def is_saved_solver(path) -> bool:
    """Whether the directory ``path`` holds a ``solver.json`` of this format (any version)."""
    return (read_record(Path(path) / _META_FILE) or {}).get("format") == FORMAT


def solver_dir_is_ours(path) -> bool:
    """A saved solver, or a directory holding only the checkpoints of its training run."""
    path = Path(path)
    if is_saved_solver(path):
        return True
    entries = {entry.name for entry in path.iterdir()}
    return entries == {CHECKPOINTS_DIR} and checkpoints_are_ours(path / CHECKPOINTS_DIR)


def save_solver(
    path, family: Family, params: Params, metadata: dict | None = None, *, overwrite=False
) -> Path:
    """Save a learned solver to the directory ``path``.

    ``path`` must be new, empty or a saved solver (replaced); any other directory is refused
    unless ``overwrite=True``, and even then only ``solver.json`` and ``params/`` are written
    (the directory's other files are kept; one of them under those names is refused). An
    existing file is never replaced by a directory.

    Args:
      path: the solver's directory.
      family: its family (``bst``, ``bns``).
      params: parameters for ``family`` (e.g. ``train(...).params``).
      metadata: JSON-serialisable facts to keep with it (schedulers are written as their
        config); keys other than ``RESERVED``. ``model``: the model's reference (a shipped name
        or an entry point with the file's absolute path), kept as data (never run on load).
      overwrite: write into a non-empty directory that bespoke_jax did not write.

    Returns:
      The directory written (everything is written aside first, then moved in place).

    Raises:
      ValueError: params that do not fit ``family``, reserved or non-JSON metadata, or a
        ``path`` that holds what the user owns (see above).
    """
    path = claim_dir(path, (_META_FILE, _PARAMS_DIR), solver_dir_is_ours, overwrite=overwrite)
    metadata = dict(metadata or {})
    clash = sorted(set(metadata) & set(RESERVED))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved for the format; rename them.")
    expected = _shapes(jax.eval_shape(family.init))
    if _shapes(params) != expected:
        raise ValueError(
            f"params do not fit {family.name} with {family.config()}: shapes {_shapes(params)}, "
            f"expected {expected}."
        )
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "family": _family_record(family),
        "nfe": int(family.nfe),
        "num_params": int(family.num_params),
        "params_shapes": expected,
        "params_sha256": params_sha256(params),
        **metadata,
    }
    record = json.loads(_dumps(record, "metadata"))  # as it reads back
    record["record_sha256"] = record_sha256(record)
    text = _dumps(record, "metadata")
    with replacing_entries(path, (_PARAMS_DIR, _META_FILE)) as tmp:
        host = jax.tree.map(np.asarray, params)
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            checkpointer.save(tmp / _PARAMS_DIR, args=ocp.args.StandardSave(host))
        (tmp / _META_FILE).write_text(text)
    return path


def load_solver(path, family: Family | str | None = None) -> tuple[Family, Params, dict]:
    """Load a solver saved by ``save_solver``.

    Args:
      path: the solver's directory.
      family: optionally the family expected (a name, or a family that must match exactly).

    Returns:
      ``(family, params, metadata)``: the rebuilt family, its parameters and the whole
      ``solver.json`` record (the user's metadata and the format's keys).

    Raises:
      ValueError: not a saved solver, another format version or family, or parameters that
        fail their shapes or checksum (a damaged artifact).
    """
    path = Path(path).absolute()
    meta_file = path / _META_FILE
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a saved solver (no {_META_FILE}); save with save_solver.")
    try:
        record = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_file} is damaged: {err}.") from None
    if not isinstance(record, dict):
        raise ValueError(
            f"{meta_file} is damaged: it holds a JSON {type(record).__name__}, not an object."
        )
    version = record.get("format_version")
    if record.get("format") != FORMAT or version not in range(1, FORMAT_VERSION + 1):
        raise ValueError(
            f"{path} holds format {record.get('format')!r} version {version!r}; this "
            f"bespoke_jax ({_package_version()}) reads {FORMAT!r} versions 1 to {FORMAT_VERSION}."
        )
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ValueError(f"{meta_file} is damaged: it lacks {', '.join(missing)}.")
    if version >= 2 and record.get("record_sha256") != record_sha256(record):
        raise ValueError(
            f"{meta_file} is damaged or edited: it fails its record_sha256 checksum (which "
            f"covers the family, the metadata and the model reference)."
        )
    if not isinstance(record["family"], dict):
        raise ValueError(f"{meta_file} is damaged: its 'family' is not an object.")
    built = family_from_config(record["family"])
    if isinstance(family, str) and family != built.name:
        raise ValueError(f"{path} holds a {built.name} solver, not a {family} one.")
    if family is not None and not isinstance(family, str) and family != built:
        raise ValueError(
            f"{path} holds {record['family']}, not {_family_record(family)} as asked for."
        )
    abstract = jax.eval_shape(built.init)
    if _shapes(abstract) != record.get("params_shapes"):
        raise ValueError(
            f"{path} is damaged: its parameter shapes {record.get('params_shapes')} do not fit "
            f"{record['family']} (expected {_shapes(abstract)})."
        )
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            params = checkpointer.restore(
                path / _PARAMS_DIR, args=ocp.args.StandardRestore(abstract)
            )
    except Exception as err:  # Orbax / TensorStore errors have no common base class
        raise ValueError(f"{path} is damaged: its parameters cannot be read ({err}).") from None
    if params_sha256(params) != record.get("params_sha256"):
        raise ValueError(f"{path} is damaged: its parameters fail their sha256 checksum.")
    return built, jax.tree.map(jnp.asarray, params), record


def _ns_form(family: Family, params: Params, args=None) -> dict:
    """``times``, ``a``, ``b`` of ``family.sample(params, ...)`` on the original field.

    Every family's sample is linear in ``x0`` and the velocities it receives, so reading it off
    on a basis (``linear_coefficients``) is exact. For BNS with ``sigma0 != 1`` this folds the
    preconditioning: a step ``xbar_{i+1} = a_{i+1} s_0 x0 + sum_j b_ij ubar_j`` with
    ``xbar_j = s_j x_j`` and ``ubar_j = s'_j x_j + t'_j s_j u(t_j, x_j)`` gives
    ``x_{i+1} = (a_{i+1} s_0 x0 + sum_{j<=i} b_ij (s'_j x_j + t'_j s_j u_j)) / s_{i+1}``, again a
    combination of ``x0`` and ``u_0..u_i`` (``s_n = s(1)``: the output is ``xbar_n / s_1``).
    """
    with jax.enable_x64(True):  # the coefficients to float64 rounding, from float32 params
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        ns = linear_coefficients(
            lambda u, x0: family.sample(params, u, x0, args),
            family.nfe,
            f"the {family.name} solver",
        )
    return {"times": np.append(ns.ts, 1.0).tolist(), "a": ns.a.tolist(), "b": ns.b.tolist()}


def _finite_start(schedule: np.ndarray, scheduler: Scheduler) -> np.ndarray:
    """``sigma_t / alpha_t`` at ``schedule``; where ``alpha_0 = 0`` (CondOT, cosine) the infinite
    first level is truncated to its value at ``t = 1e-3 t_1``."""
    t = np.array(schedule, dtype=np.float64)
    if float(scheduler.alpha(t[0])) <= 0.0:
        t[0] = 1e-3 * t[1]
    return np.asarray(scheduler.sigma(t), np.float64) / np.asarray(scheduler.alpha(t), np.float64)


def noise_levels(schedule, scheduler: Scheduler) -> dict:
    """The learned schedule in other libraries' conventions (docs/export.md).

    Args:
      schedule: ``(N + 1,)`` increasing times from 0 to 1 (a solver's steps).
      scheduler: the model's scheduler.

    ``path`` must be new or an earlier export; another file is replaced only with
    ``overwrite=True``, a directory never.

    Returns:
      For CondOT: ``"diffusers_flow_sigmas"`` (``1 - t_i``, ``i < N``: diffusers' flow-matching
      schedulers append the final 0) and ``"comfyui_flow_sigmas"`` (``1 - t``, ``N + 1``). For
      other schedulers: ``"diffusers_sigmas"`` (``sigma / alpha``, ``N + 1``, ending at 0, as
      ``EulerDiscreteScheduler.set_timesteps(sigmas=...)`` takes them) and
      ``"diffusers_timesteps"`` (``N``: ``scheduler.timestep(t)`` where the scheduler has one,
      else ``1000 (1 - t)``). Always: ``"k_diffusion_sigmas"`` (``sigma / alpha``, ``N + 1``,
      ending at 0, finite: an infinite first level is truncated as in ``_finite_start``).
    """
    t = np.asarray(schedule, dtype=np.float64)
    levels = _finite_start(t, scheduler).tolist()
    if scheduler.name == "cond_ot":
        flow = (1.0 - t).tolist()
        record = {"diffusers_flow_sigmas": flow[:-1], "comfyui_flow_sigmas": flow}
    else:
        timestep = getattr(scheduler, "timestep", lambda t: 1000.0 * (1.0 - t))
        timesteps = np.asarray(timestep(t[:-1]), np.float64).tolist()
        record = {"diffusers_sigmas": levels, "diffusers_timesteps": timesteps}
    return {**record, "k_diffusion_sigmas": levels}


def export_record(
    family: Family, params: Params, metadata: dict | None = None, *, scheduler=None, guidance=None
) -> dict:
    """The record ``export_solver`` writes (format version ``EXPORT_VERSION``)."""
    if getattr(family, "guidance", None) is None:
        if guidance is not None:
            raise ValueError(
                f"guidance tabulates a guidance-range solver; {family.label} has none."
            )
        exported, ns = family.export(params), _ns_form(family, params)
    else:  # the NS form at each tabulated scale; the times are shared
        exported = family.export(params, guidance)
        tables = [_ns_form(family, params, {"guidance": w}) for w in exported["guidance"]]
        ns = {"times": tables[0]["times"], **{k: [t[k] for t in tables] for k in ("a", "b")}}
    record = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "package_version": _package_version(),
        "family": _family_record(family),
        "nfe": int(family.nfe),
        **exported,
        **ns,  # the solver itself, on the model's own field
    }
    schedule = np.asarray(record.pop("schedule", record["times"]), dtype=np.float64)
    metadata = dict(metadata or {})
    if scheduler is None:
        scheduler = getattr(family, "scheduler", None)
    if scheduler is None and isinstance(metadata.get("scheduler"), Scheduler):
        scheduler = metadata["scheduler"]
    if scheduler is None and isinstance(metadata.get("scheduler"), dict):
        scheduler = scheduler_from_config(metadata["scheduler"])
    if scheduler is not None:
        record.update(
            scheduler=scheduler.to_config(),
            schedule=schedule.tolist(),
            alpha=np.asarray(scheduler.alpha(schedule), dtype=np.float64).tolist(),
            sigma=np.asarray(scheduler.sigma(schedule), dtype=np.float64).tolist(),
            **noise_levels(schedule, scheduler),
        )
    record["metadata"] = metadata
    return record


def is_export(path) -> bool:
    """Whether the file ``path`` is a JSON export written by ``export_solver``."""
    return (read_record(path) or {}).get("format") == EXPORT_FORMAT


def export_solver(
    path,
    family: Family,
    params: Params,
    metadata: dict | None = None,
    *,
    scheduler=None,
    overwrite: bool = False,
    guidance=None,
) -> Path:
    """Write a solver as plain JSON for samplers outside JAX (``bespoke_jax.export.sample``).

    Every export (format version 2) runs as the NS solver ``x_0 = a_0 x0``,
    ``u_i = u(times_i, x_i)``, ``x_{i+1} = a_{i+1} x0 + sum_{j<=i} b_ij u_j`` on the model's own
    field: ``"times"`` (``nfe + 1``: where the field is evaluated, then 1), ``"a"`` (``nfe + 1``)
    and ``"b"`` (``nfe x nfe``, lower triangular), BNS preconditioning folded in. BST adds its
    transform on ``r_j = j / nfe``: ``"r", "t", "s"`` (``nfe + 1``) and ``"dt", "ds"`` (``nfe``);
    BNS its solver grid ``"grid"`` (``nfe`` times r) and ``"sigma0"``; a learned grid
    ``"solver"``, ``"solver_options"`` and ``"grid"`` (the ``N + 1`` step times). A
    guidance-range BNS solver (``bns(..., guidance=(lo, hi))``) shares its times over ``w``;
    its ``"a"`` and ``"b"`` are tabulated, one row per scale of ``"guidance"`` (``guidance``,
    default 9 evenly spaced over ``"guidance_range"``), with ``"a_series"``, ``"b_series"``: the
    Chebyshev series of its weights on the preconditioned field (``BNSRange.coefficients``).

    With a scheduler (``scheduler``, else the family's, else ``metadata["scheduler"]``) it adds
    the ``"schedule"`` (the learned grid's steps, else ``"times"``), ``"alpha"`` and ``"sigma"``
    there, and its noise levels in the conventions of diffusers, k-diffusion and ComfyUI
    (``noise_levels``). Version 1 files (BNS ``a, b`` on the preconditioned field with
    ``s_start, s_end``; ``"sigmas"``, ``"timesteps"``) are still read by
    ``bespoke_jax.export.read_export``.

    ``path`` must be new or an earlier export; another file is replaced only with
    ``overwrite=True``, a directory never.

    Returns:
      The file written (atomically).
    """
    path = claim_file(path, is_export, overwrite=overwrite)
    record = export_record(family, params, metadata, scheduler=scheduler, guidance=guidance)
    return atomic_write(path, _dumps(record, "metadata"))
