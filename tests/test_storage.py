"""Saved solvers: exact round trips, refusal of damaged or foreign artifacts, plain-JSON export."""

import json
import shutil
from pathlib import Path

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import bespoke_jax as bj

FAMILIES = {
    "bst-rk2": bj.bst(4),
    "bst-rk1": bj.bst(3, base="rk1"),
    "bns": bj.bns(4),
    "bns-preconditioned": bj.bns(4, init="ddim", sigma0=2.0, scheduler=bj.cond_ot()),
    "grid": bj.learned_grid(4, solver="dpm_solver_pp", scheduler=bj.cond_ot(), order=3),
}


def _perturbed(family, seed=0):
    """Parameters away from ``init()`` (a saved solver is a trained one)."""
    leaves, treedef = jax.tree.flatten(family.init())
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            leaf + 0.1 * jax.random.normal(k, leaf.shape)
            for leaf, k in zip(leaves, keys, strict=True)
        ],
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved artifact per family: ``{name: (path, family, params)}``."""
    root = tmp_path_factory.mktemp("solvers")
    out = {}
    for name, family in FAMILIES.items():
        params = _perturbed(family)
        meta = {"model": "mixture", "guidance": 0.0, "val_psnr": 31.5, "scheduler": bj.cond_ot()}
        out[name] = (bj.save_solver(root / name, family, params, meta), family, params)
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_round_trip_is_exact(saved, name):
    path, family, params = saved[name]
    loaded, loaded_params, meta = bj.load_solver(path)
    assert loaded == family
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert meta["model"] == "mixture" and meta["val_psnr"] == 31.5
    assert meta["scheduler"] == bj.cond_ot().to_config()
    assert meta["nfe"] == family.nfe and meta["family"]["name"] == family.name
    assert meta["format_version"] == 2 and meta["package_version"] == bj.__version__


def test_family_registry_rebuilds_every_family():
    for family in FAMILIES.values():
        assert bj.family_from_config({"name": family.name, **family.config()}) == family
    with pytest.raises(ValueError, match="Unknown solver family 'dpm'"):
        bj.family_from_config({"name": "dpm", "nfe": 4})


# Family records as solver.json files of version 0.1.0 wrote them (the base solver was "base"
# for BST and "init" for BNS), by the saved solver whose record each replaces.
OLD_RECORDS = {
    "bst-rk1": {
        "name": "bst", "nfe": 3, "base": "rk1", "l_tau": 1.0, "loss_kind": "bound",
        "path_points": 65,
    },
    "bns-preconditioned": {
        "name": "bns", "nfe": 4, "init": "ddim", "sigma0": 2.0, "scheduler": {"name": "cond_ot"},
    },
}  # fmt: skip


@pytest.mark.parametrize("name", OLD_RECORDS)
def test_solvers_saved_with_the_old_keys_load(saved, tmp_path, name):
    path = _copy(saved, name, tmp_path)
    meta = json.loads((path / "solver.json").read_text())
    meta = {k: v for k, v in meta.items() if k != "record_sha256"}  # as version 1 wrote it
    old = {**meta, "family": OLD_RECORDS[name], "format_version": 1}
    (path / "solver.json").write_text(json.dumps(old))
    family, params, _ = bj.load_solver(path, FAMILIES[name])
    assert family == FAMILIES[name]
    chex.assert_trees_all_equal(params, saved[name][2])


def test_save_replaces_and_leaves_no_temporary(tmp_path):
    family = FAMILIES["bns"]
    bj.save_solver(tmp_path / "s", family, family.init())
    params = _perturbed(family, seed=1)
    bj.save_solver(tmp_path / "s", family, params)
    _, loaded, _ = bj.load_solver(tmp_path / "s")
    np.testing.assert_array_equal(np.asarray(loaded["b"]), np.asarray(params["b"]))
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def _copy(saved, name, tmp_path) -> Path:
    path = tmp_path / name
    shutil.copytree(saved[name][0], path)
    return path


def test_damaged_parameters_are_refused(saved, tmp_path):
    path = _copy(saved, "bns", tmp_path)
    # Flip one byte in every stored chunk: a checksum, never a silently different solver.
    for chunk in (path / "params").rglob("*"):
        if chunk.is_file() and chunk.parent.name == "d":
            data = bytearray(chunk.read_bytes())
            data[len(data) // 2] ^= 0xFF
            chunk.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        bj.load_solver(path)


def test_parameters_that_read_but_differ_are_refused(saved, tmp_path):
    """Other parameters of the right shapes, written by Orbax itself: they read, and only the
    checksum tells them from the saved ones."""
    path = _copy(saved, "bns", tmp_path)
    _, family, params = saved["bns"]
    other = jax.tree.map(np.asarray, _perturbed(family, seed=2))
    shutil.rmtree(path / "params")
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(path / "params", args=ocp.args.StandardSave(other))
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        read = checkpointer.restore(path / "params")
    np.testing.assert_array_equal(read["b"], other["b"])
    assert not np.array_equal(read["b"], np.asarray(params["b"]))
    with pytest.raises(ValueError, match="fail their sha256 checksum"):
        bj.load_solver(path)


def test_edited_checksum_or_shapes_are_refused(saved, tmp_path):
    path = _copy(saved, "bst-rk2", tmp_path)
    record = json.loads((path / "solver.json").read_text())
    (path / "solver.json").write_text(json.dumps({**record, "params_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="checksum"):
        bj.load_solver(path)
    (path / "solver.json").write_text(json.dumps({**record, "params_shapes": {}}))
    with pytest.raises(ValueError, match="shapes"):
        bj.load_solver(path)
    (path / "solver.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        bj.load_solver(path)


def test_other_format_version_is_refused(saved, tmp_path):
    path = _copy(saved, "bns", tmp_path)
    record = json.loads((path / "solver.json").read_text())
    (path / "solver.json").write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        bj.load_solver(path)


def test_other_family_is_refused(saved, tmp_path):
    path, family, _ = saved["bst-rk2"]
    with pytest.raises(ValueError, match="holds a bst solver, not a bns one"):
        bj.load_solver(path, family="bns")
    with pytest.raises(ValueError, match="not .* as asked for"):
        bj.load_solver(path, family=bj.bst(6))
    assert bj.load_solver(path, family=family)[0] == family
    with pytest.raises(ValueError, match="not a saved solver"):
        bj.load_solver(tmp_path)


def test_save_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        bj.save_solver(tmp_path / "s", bj.bst(4), bj.bst(6).init())
    with pytest.raises(ValueError, match="reserved"):
        bj.save_solver(tmp_path / "s", bj.bst(4), bj.bst(4).init(), {"nfe": 3})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        bj.save_solver(tmp_path / "s", bj.bst(4), bj.bst(4).init(), {"f": print})
    assert not (tmp_path / "s").exists()


def _export(saved, name, tmp_path, **kwargs):
    path, family, params = saved[name]
    _, _, meta = bj.load_solver(path)
    out = bj.export_solver(tmp_path / f"{name}.json", family, params, meta, **kwargs)
    return family, json.loads(out.read_text())


def test_export_bst_grid_in_diffusers_conventions(saved, tmp_path):
    family, record = _export(saved, "bst-rk2", tmp_path)
    t = np.asarray(record["times"])
    assert record["format_version"] == 2
    assert len(t) == family.nfe + 1 and t[0] == 0.0 and t[-1] == 1.0
    assert np.all(np.diff(t) > 0)
    np.testing.assert_allclose(record["t"], t, rtol=1e-6)
    assert len(record["dt"]) == len(record["ds"]) == family.nfe
    assert record["s"][0] == 1.0
    # CondOT (from the metadata): flow sigmas 1 - t; sigma / alpha = (1 - t) / t, infinite at
    # t = 0 and truncated to its value at t = 1e-3 t_1 for k-diffusion.
    np.testing.assert_allclose(record["comfyui_flow_sigmas"], 1 - t, rtol=1e-12)
    assert record["diffusers_flow_sigmas"] == record["comfyui_flow_sigmas"][:-1]
    levels = np.asarray(record["k_diffusion_sigmas"])
    np.testing.assert_allclose(levels[1:], (1 - t[1:]) / t[1:], rtol=1e-6)
    np.testing.assert_allclose(levels[0], (1 - 1e-3 * t[1]) / (1e-3 * t[1]), rtol=1e-6)
    assert np.all(np.diff(levels) < 0) and "diffusers_sigmas" not in record


def test_export_bns_folds_the_preconditioning(saved, tmp_path):
    family, record = _export(saved, "bns-preconditioned", tmp_path, scheduler=bj.vp())
    n = family.nfe
    assert len(record["grid"]) == n and len(record["a"]) == n + 1 and record["sigma0"] == 2.0
    assert np.asarray(record["b"]).shape == (n, n)
    assert np.all(np.triu(np.asarray(record["b"]), 1) == 0)
    # CondOT preconditioned by sigma0: the field is called at t_r = r / (sigma0 (1 - r) + r).
    r = np.append(record["grid"], 1.0)
    np.testing.assert_allclose(record["times"], r / (2.0 * (1 - r) + r), rtol=1e-5, atol=1e-7)
    # The scheduler argument wins over the metadata's; VP has alpha_0 > 0: sigmas as they are.
    assert record["scheduler"]["name"] == "vp" and "diffusers_flow_sigmas" not in record
    t = np.asarray(record["schedule"])
    vp = bj.vp()
    np.testing.assert_allclose(
        record["diffusers_sigmas"], vp.sigma(t) / vp.alpha(t), rtol=1e-5, atol=1e-7
    )
    assert record["diffusers_sigmas"] == record["k_diffusion_sigmas"]
    np.testing.assert_allclose(record["diffusers_timesteps"], 1000 * (1 - t[:-1]), rtol=1e-12)


def test_export_grid_gives_its_steps(saved, tmp_path):
    family, record = _export(saved, "grid", tmp_path)
    grid = np.asarray(family.coefficients(saved["grid"][2])["grid"])
    np.testing.assert_allclose(record["grid"], grid, rtol=1e-7)
    assert record["schedule"] == record["grid"] and record["solver_options"] == {"order": 3}
    # One call a step, never at t = 1: the NS times are the grid's.
    np.testing.assert_allclose(record["times"], grid, rtol=1e-6)
