"""The ``bespoke-jax`` command on tiny settings: demo, the train/eval/sample/export round trip,
and one-line errors for bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from click.testing import CliRunner

import bespoke_jax as bj
from bespoke_jax import solvers
from bespoke_jax.app import cli, jobs
from bespoke_jax.app.cli import main
from bespoke_jax.app.defaults import DEMO_MODELS, optimizer_name
from bespoke_jax.app.user_model import load_model
from bespoke_jax.families.bst import BASES
from bespoke_jax.io.files import params_sha256
from bespoke_jax.models.pretrained import NAMES

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
    assert "| midpoint, sigma0 = 0.5, untrained |" in report  # the BNS solver before training
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
    result = invoke("eval", solver, "--n", 8, "--model", TINY)
    assert result.exit_code == 0, result.output
    rows = {line.split("|")[1].strip() for line in result.output.splitlines() if "|" in line}
    assert {"bns-4 (saved)", "euler", "midpoint", "dpm_solver_pp"} <= rows
    assert "data range 2" in result.output


def test_sample_writes_npy_and_grid(solver, tmp_path):
    result = invoke("sample", solver, "--n", 6, "--out", tmp_path, "--trust-model")
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
        (["--model", TINY.replace(":mixture", ":two_args")], ["'velocity'", "u(t, x, args)"]),
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


@pytest.mark.parametrize("name", NAMES)
def test_every_shipped_model_runs_on_the_command_line(name):
    model = load_model(name)
    x = model.noise(jax.random.key(0), 3)
    v = model.velocity(0.5, x, model.make_args(jax.random.key(1), 3))
    assert v.shape == x.shape and np.all(np.isfinite(v)) and model.data_range > 0
    assert model.forwards_per_call == (1 if model.guidance is None else 2)


def test_demo_presets_name_shipped_models_and_spendable_nfes():
    assert set(DEMO_MODELS) <= set(NAMES)
    for preset in DEMO_MODELS.values():
        settings = preset.settings
        assert preset.nfes and all(n >= 2 and n % 2 == 0 for n in preset.nfes)  # RK2-BST
        assert (settings.batch_size or 1) <= settings.n_train and preset.sigma0 > 0
    assert_clean_error(invoke("demo", "--model", "nosuch"), "nosuch")


# What a user owns, what a saved solver may run, interrupts and one-line errors.

NOTES = {"notes.txt": b"my notes\n", "report.md": b"# mine\n"}


def user_files(root: Path, files: dict = NOTES) -> dict:
    """Write the user's ``files`` under ``root``; returns them as written."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return dict(files)


def unchanged(root: Path, before: dict) -> bool:
    return all((root / name).read_bytes() == data for name, data in before.items())


TRAIN = ("train", "--model", TINY, "--family", "bns", "--nfe", 4, "--quick")
DEMO = ("demo", "--quick", "--nfe", 2)


@pytest.mark.parametrize(
    "command, fragments",
    [
        (lambda out: [*TRAIN, "--out", out], ["is not empty (notes.txt", "--overwrite"]),
        (lambda out: [*DEMO, "--out", out], ["is not empty (notes.txt", "--overwrite"]),
        (lambda out: [*DEMO, "--overwrite", "--out", out], ["holds report.md"]),
        (lambda out: [*TRAIN, "--out", out / "notes.txt"], ["existing file", "never replaced"]),
        (lambda out: [*TRAIN, "--out", out / "new", "--resume"], ["--resume", "no training"]),
        (lambda out: [*TRAIN, "--lr", "nan", "--out", out / "new"], ["learning_rate", "nan"]),
        (lambda out: [*TRAIN, "--out", out / "notes.txt" / "x"], ["not writable"]),
    ],
)
def test_users_files_are_refused_and_kept(tmp_path, command, fragments):
    before = user_files(tmp_path)
    result = invoke(*command(tmp_path))
    assert_clean_error(result, *fragments)
    assert result.exit_code == 2 and unchanged(tmp_path, before)
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def test_sample_and_export_refuse_the_users_files(solver, tmp_path):
    before = user_files(tmp_path, {"samples.npy": b"mine", "out.json": b"{}"})
    trusted = ("--trust-model", "--n", 2, "--out", tmp_path)
    assert_clean_error(invoke("sample", solver, *trusted), "is not empty", "--overwrite")
    assert_clean_error(invoke("sample", solver, *trusted, "--overwrite"), "holds samples.npy")
    assert_clean_error(invoke("export", solver, "--out", tmp_path / "out.json"), "--overwrite")
    assert unchanged(tmp_path, before)


def test_train_with_overwrite_keeps_the_users_files_and_resumes(solver, tmp_path):
    before = user_files(tmp_path)
    first = invoke(*TRAIN, "--out", tmp_path, "--overwrite")
    assert first.exit_code == 0, first.output
    again = invoke(*TRAIN, "--out", tmp_path, "--resume")  # from its final checkpoint
    assert again.exit_code == 0, again.output
    assert unchanged(tmp_path, before)
    params = [bj.load_solver(path)[1] for path in (solver, tmp_path)]
    assert params_sha256(params[0]) == params_sha256(params[1])  # the fixture's same command


def test_a_recorded_entry_point_runs_only_when_named_or_trusted(solver, tmp_path):
    recorded = str(Path(TINY.partition(":")[0]).resolve()) + ":mixture"
    assert bj.load_solver(solver)[2]["model"] == recorded  # absolute, under the checksum
    result = invoke("eval", solver, "--n", 2)
    assert_clean_error(result, f"--model {recorded}", "--trust-model")
    assert "--trust-model" in invoke("eval", "--help").output and "runs that Python file" in (
        " ".join(invoke("eval", "--help").output.split())
    )
    result = invoke("sample", solver, "--model", "checkerboard", "--n", 2, "--out", tmp_path)
    assert_clean_error(result, "trained for the model", recorded, "'checkerboard'", "--force")


@pytest.mark.parametrize(
    "source, fragments",
    [
        ("def mixture():\n    return {}['velocity']\n", ["raised KeyError", "'velocity'"]),
        ("def mixture(:\n", ["raised SyntaxError"]),
        ("raise RuntimeError('no GPU here')\n", ["raised RuntimeError", "no GPU here"]),
    ],
)
def test_a_failing_entry_point_is_one_error_line(tmp_path, source, fragments):
    (tmp_path / "broken.py").write_text(source)
    result = invoke("train", "--model", f"{tmp_path / 'broken.py'}:mixture", "--nfe", 4,
                    "--out", tmp_path / "out")  # fmt: skip
    assert_clean_error(result, "broken.py", *fragments)
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda r: [r], "JSON list"),
        (lambda r: {k: v for k, v in r.items() if k != "family"}, "lacks family"),
    ],
)
def test_a_malformed_solver_json_is_one_error_line(solver, tmp_path, edit, fragment):
    path = shutil.copytree(solver, tmp_path / "copy", ignore=shutil.ignore_patterns("checkpoints"))
    record = json.loads((path / "solver.json").read_text())
    (path / "solver.json").write_text(json.dumps(edit(record)))
    result = invoke("eval", path, "--model", TINY)
    assert_clean_error(result, "solver.json", fragment)
    assert result.exit_code == 2


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "train", "--model", "nonexistent", "--nfe", "4",
                                       "--out", str(tmp_path / "x")])  # fmt: skip
    assert isinstance(result.exception, ValueError) and "Unknown model" in str(result.exception)


def test_ctrl_c_in_train_exits_130_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    sizes = ["--n-train", "8", "--n-val", "4", "--batch-size", "4"]
    command = [shutil.which("bespoke-jax"), *map(str, TRAIN[:-1]), "--steps", "1000000", *sizes]
    command += ["--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not any(p.name.isdigit() for p in (out / "checkpoints").glob("*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
        assert "Interrupted: the last finished step is checkpointed" in proc.stderr.read()
    finally:
        proc.kill()
        proc.stderr.close()
    steps = [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) < 1000000


def test_a_file_entry_point_imports_its_neighbours(tmp_path):
    # Run from another folder: the file's own folder is what puts its neighbour on the path.
    (tmp_path / "entry_point_neighbour.py").write_text("SHAPE = (2,)\n")
    (tmp_path / "entry_point_model.py").write_text(
        "import entry_point_neighbour\n\n\n"
        "def make():\n"
        "    return {'velocity': lambda t, x, args: -x, 'shape': entry_point_neighbour.SHAPE}\n"
    )
    model = load_model(f"{tmp_path / 'entry_point_model.py'}:make")
    assert model.shape == (2,) and model.name.endswith("entry_point_model.py:make")
