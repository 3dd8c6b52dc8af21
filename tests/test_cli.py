"""The ``bespoke-jax`` command on tiny settings: demo, the train/eval/sample/export round trip,
and one-line errors for bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from click.testing import CliRunner

import bespoke_jax as bj
from bespoke_jax import solvers
from bespoke_jax.app import cli, jobs
from bespoke_jax.app.cli import main
from bespoke_jax.app.defaults import optimizer_name
from bespoke_jax.app.user_model import load_model
from bespoke_jax.families.bst import BASES

TINY = f"{Path(__file__).parent / 'tiny_model.py'}:mixture"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_clean_error(result, *fragments):
    """A non-zero exit with a one-line ``Error:`` and no traceback."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.output
    for fragment in fragments:
        assert fragment in error[0], error[0]


def test_console_script_help():
    executable = shutil.which("bespoke-jax")
    assert executable, "bespoke-jax is not installed: python -m pip install -e ."
    out = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "train", "eval", "sample", "export"):
        assert command in out.stdout


def test_help_does_not_import_jax():
    """Every --help is answered by click alone (its start-up time: experiments/bench_cli.py)."""
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from bespoke_jax.app.cli import main\n"
        "for command in ([], ['demo'], ['train'], ['eval'], ['sample'], ['export']):\n"
        "    result = CliRunner().invoke(main, [*command, '--help'])\n"
        "    assert result.exit_code == 0 and 'Usage:' in result.output, result.output\n"
        "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('jax.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_texts_spell_the_package_choices():
    """The names the help spells out without JAX are the package's own."""
    assert set(cli.FAMILY_NAMES) == set(bj.FAMILIES)
    assert cli.BNS_INITS == solvers.NAMES and cli.BST_BASES == BASES
    for name in cli.FAMILY_NAMES:
        family = jobs.make_family(name, 4, scheduler=bj.cond_ot())
        assert cli.OPTIMIZERS[name] == optimizer_name(family)
        assert optimizer_name(family, learning_rate=1e-3) == "Adam"  # what --lr selects
    help_text = " ".join(invoke("train", "--help").output.split())
    assert all(name in help_text for name in cli.BNS_INITS + cli.BST_BASES)
    assert all(f"{family}: {name}" in help_text for family, name in cli.OPTIMIZERS.items())


def test_demo_quick_writes_report_and_figures(tmp_path):
    result = invoke("demo", "--quick", "--nfe", 4, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    assert "data range R = 2" in report
    for name in ("psnr_vs_nfe.png", "samples_nfe4.png", "time_grids.png", "training.png"):
        assert f"({name})" in report
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "| BNS |" in report and "| BST |" in report
    assert "| bns-4 | Prodigy |" in report and "| bst-4 | Adam |" in report
    saved = sorted(p.name for p in (tmp_path / "solvers").iterdir())
    assert saved == ["bns-4", "bns-4.json", "bst-4", "bst-4.json"]


@pytest.fixture(scope="module")
def solver(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "bns4"
    result = invoke("train", "--model", TINY, "--family", "bns", "--nfe", 4, "--quick")
    assert result.exit_code != 0  # --out is required
    result = invoke(
        "train", "--model", TINY, "--family", "bns", "--nfe", 4, "--quick", "--out", out
    )
    assert result.exit_code == 0, result.output
    assert "validation PSNR" in result.output and "2 steps of Prodigy" in result.output
    return out


def test_eval_prints_learned_and_baselines(solver):
    result = invoke("eval", solver, "--n", 8)
    assert result.exit_code == 0, result.output
    rows = {line.split("|")[1].strip() for line in result.output.splitlines() if "|" in line}
    assert {"bns-4 (saved)", "euler", "midpoint", "dpm_solver_pp"} <= rows
    assert "data range 2" in result.output


def test_sample_writes_npy_and_grid(solver, tmp_path):
    result = invoke("sample", solver, "--n", 6, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    samples = np.load(tmp_path / "samples.npy")
    assert samples.shape == (6, 2) and np.all(np.isfinite(samples))
    assert (tmp_path / "samples.png").read_bytes()[:8] == PNG_SIGNATURE


def test_export_writes_plain_json(solver, tmp_path):
    out = tmp_path / "bns4.json"
    result = invoke("export", solver, "--out", out)
    assert result.exit_code == 0, result.output
    exported = json.loads(out.read_text())
    assert isinstance(exported, dict) and exported


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--model", "nonexistent"], ["Unknown model 'nonexistent'"]),
        (["--model", "no_such_module_xyz:f"], ["cannot import"]),
        (["--model", TINY.replace(":mixture", ":missing")], ["has no function 'missing'"]),
        (["--model", TINY.replace(":mixture", ":no_shape")], ["'shape'"]),
        (["--model", TINY, "--guidance", "2"], ["takes no guidance"]),
        (["--model", TINY, "--family", "bst", "--sigma0", "2"], ["--sigma0"]),
        (["--model", TINY, "--family", "bst", "--nfe", "3"], ["--nfe 2 or 4", "--init rk1"]),
        (["--model", TINY, "--init", "rk4", "--nfe", "6"], ["rk4", "--nfe 6"]),
        (["--model", TINY, "--family", "bst", "--init", "euler"], ["--init rk1 | rk2", "euler"]),
    ],
)
def test_bad_input_is_a_one_line_error(args, fragments, tmp_path):
    options = {"--nfe": "4", "--quick": None, "--out": str(tmp_path / "x")}
    for name, value in options.items():
        if name not in args:
            args = [*args, name] + ([value] if value is not None else [])
    assert_clean_error(invoke("train", *args), *fragments)


def test_eval_of_a_missing_solver_is_a_clean_error(tmp_path):
    result = invoke("eval", tmp_path / "nothing")
    assert result.exit_code != 0 and "does not exist" in result.output


def test_entry_point_contract(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    model = load_model("tiny_model:mixture")
    assert model.shape == (2,) and model.data_range == 2.0 and model.make_args(None, 3) is None
    assert model.velocity(0.5, model.noise(jax.random.key(0), 3), None).shape == (3, 2)
    digits = load_model("digits", guidance=1.5)
    args = digits.make_args(None, 12)
    assert args["labels"].tolist() == [*range(10), 0, 1] and float(args["guidance"]) == 1.5
    assert (
        digits.forwards_per_call == 2 and load_model("digits", guidance=0.0).forwards_per_call == 1
    )
