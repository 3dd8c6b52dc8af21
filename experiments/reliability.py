"""Reliability table: bad inputs and hostile outputs tried against the package.

Each case runs in a fresh temporary directory, some holding a user's files first. A case either
must be refused with a message naming the problem (the fragment given), or must work. After
each case the user's files are compared byte for byte: any change or loss counts as data lost.

Run ``python experiments/reliability.py`` to print the table, ``--write`` to also write
``RELIABILITY.md`` at the repository root.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bespoke_jax as bj

ROOT = Path(__file__).resolve().parents[1]
X0 = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
NOTES = {"notes.txt": b"my notes\n", "results/table.csv": b"a,b\n1,2\n"}


def linear(t, x, args):
    return -x


def squeezed(t, x, args):
    return -x[:, :1]


class Counted:
    """A field counting its calls (traces included): 0 after a refusal means no model work was
    lost."""

    def __init__(self):
        self.calls = 0

    def __call__(self, t, x, args):
        self.calls += 1
        return -x


@dataclasses.dataclass(frozen=True)
class Case:
    """One input tried.

    Attributes:
      area: what it exercises.
      name: the input, in words.
      run: ``run(tmp) -> anything``; raises when it refuses.
      expect: a fragment the refusal's message must contain (``None``: it must work).
      files: the user's files placed under ``tmp`` first, checked byte for byte after.
    """

    area: str
    name: str
    run: Callable[[Path], object]
    expect: str | None
    files: dict = dataclasses.field(default_factory=dict)


def _saved(tmp: Path, name="s", **metadata) -> Path:
    family = bj.bst(2)
    return bj.save_solver(tmp / name, family, family.init(), metadata or None)


def _edit_record(tmp: Path, edit) -> Path:
    path = _saved(tmp)
    record = json.loads((path / "solver.json").read_text())
    (path / "solver.json").write_text(json.dumps(edit(record)))
    return path


def _train(tmp: Path, field=linear, **options):
    options = {"steps": 2, "batch_size": 2, "eval_every": 1, "progress": False, **options}
    return bj.train(bj.bns(2, init="euler"), field, jnp.ones((4, 3)), X0, **options)


def _no_model_call(tmp: Path, **options):
    field = Counted()
    try:
        _train(tmp, field, **options)
    finally:
        assert field.calls == 0, f"{field.calls} model calls before the refusal"


def _export(tmp: Path, target: str, **kwargs):
    family = bj.bst(2)
    return bj.export_solver(tmp / target, family, family.init(), **kwargs)


def _half(dtype):
    def run(tmp):
        out = bj.solvers.euler(linear, X0.astype(dtype), nfe=2)
        assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))

    return run


def _interrupted_train(tmp: Path):
    def stop(step, metrics):  # a real SIGINT, as Ctrl-C sends it
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    run = {"checkpoint_dir": str(tmp / "ckpt"), "steps": 4}
    try:
        _train(tmp, on_eval=stop, **run)
    except KeyboardInterrupt:
        pass
    resumed, reference = _train(tmp, **run), _train(tmp, steps=4)
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), resumed.params, reference.params)
    assert all(jax.tree.leaves(same)), "the resumed run ended elsewhere"


def _unwritable_cache(tmp: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bj.cached_training_data(linear, X0, cache_dir=tmp / "notes.txt" / "cache")
    assert any("without the cache" in str(w.message) for w in caught), "no warning"


def python_cases() -> list[Case]:
    """The Python API's cases."""
    gt, euler = bj.ground_truth, bj.solvers.euler
    return [
        # outputs
        Case(
            "outputs",
            "save_solver into a user's folder",
            lambda t: _saved(t, "."),
            "overwrite=True",
            NOTES,
        ),
        Case(
            "outputs",
            "save_solver overwrite=True next to user files",
            lambda t: bj.save_solver(t, bj.bst(2), bj.bst(2).init(), overwrite=True),
            None,
            NOTES,
        ),
        Case(
            "outputs",
            "save_solver over a user's solver.json",
            lambda t: bj.save_solver(t, bj.bst(2), bj.bst(2).init(), overwrite=True),
            "holds solver.json",
            {"solver.json": b"{}"},
        ),
        Case(
            "outputs",
            "save_solver onto an existing file",
            lambda t: _saved(t, "notes.txt"),
            "never replaced by a directory",
            NOTES,
        ),
        Case("outputs", "save_solver over our own solver", lambda t: (_saved(t), _saved(t)), None),
        Case(
            "outputs",
            "export_solver over a user's file",
            lambda t: _export(t, "notes.txt"),
            "overwrite=True",
            NOTES,
        ),
        Case(
            "outputs",
            "export_solver onto a folder",
            lambda t: _export(t, "results"),
            "is a directory",
            NOTES,
        ),
        Case(
            "outputs",
            "train checkpoint_dir = a user's folder",
            lambda t: _no_model_call(t, checkpoint_dir=str(t / "results")),
            "choose a new or empty",
            NOTES,
        ),
        Case(
            "outputs",
            "train checkpoint_dir under a file",
            lambda t: _no_model_call(t, checkpoint_dir=str(t / "notes.txt" / "c")),
            "not writable",
            NOTES,
        ),
        Case(
            "outputs",
            "train log_path under a file",
            lambda t: _no_model_call(t, log_path=str(t / "notes.txt" / "log")),
            "is a file",
            NOTES,
        ),
        Case(
            "outputs",
            "train log_path = a user's file",
            lambda t: _no_model_call(t, log_path=str(t / "notes.txt")),
            "was not written by bespoke_jax",
            NOTES,
        ),
        Case(
            "outputs",
            "unwritable cache_dir falls back with a warning",
            _unwritable_cache,
            None,
            NOTES,
        ),
        # saved files
        Case(
            "saved files",
            "solver.json is a list",
            lambda t: bj.load_solver(_edit_record(t, lambda r: [r])),
            "JSON list",
        ),
        Case(
            "saved files",
            "solver.json lacks 'family'",
            lambda t: bj.load_solver(
                _edit_record(t, lambda r: {k: v for k, v in r.items() if k != "family"})
            ),
            "lacks family",
        ),
        Case(
            "saved files",
            "edited model reference",
            lambda t: bj.load_solver(_edit_record(t, lambda r: {**r, "model": "x.py:f"})),
            "record_sha256",
        ),
        Case(
            "saved files",
            "unknown format version",
            lambda t: bj.load_solver(_edit_record(t, lambda r: {**r, "format_version": 9})),
            "version 9",
        ),
        Case(
            "saved files",
            "damaged JSON",
            lambda t: (_saved(t) / "solver.json").write_text("{") and bj.load_solver(t / "s"),
            "damaged",
        ),
        Case(
            "saved files", "not a solver folder", lambda t: bj.load_solver(t), "not a saved solver"
        ),
        # numbers
        Case(
            "numbers",
            "ground_truth rtol=-1, atol=-1",
            lambda t: gt(linear, X0, rtol=-1, atol=-1),
            "rtol must be",
        ),
        Case(
            "numbers",
            "ground_truth rtol=0, atol=0",
            lambda t: gt(linear, X0, rtol=0, atol=0),
            "rtol must be",
        ),
        Case(
            "numbers",
            "ground_truth NaN atol",
            lambda t: gt(linear, X0, atol=float("nan")),
            "atol must be",
        ),
        Case(
            "numbers",
            "ground_truth max_steps=0",
            lambda t: gt(linear, X0, max_steps=0),
            "max_steps",
        ),
        Case(
            "numbers",
            "NaN in x0 (baseline)",
            lambda t: euler(linear, X0.at[0, 0].set(jnp.nan), nfe=2),
            "NaN or inf",
        ),
        Case(
            "numbers",
            "inf in x0 (BNS)",
            lambda t: bj.bns(2).sample(bj.bns(2).init(), linear, X0.at[0, 0].set(jnp.inf)),
            "NaN or inf",
        ),
        Case(
            "numbers",
            "complex x0",
            lambda t: euler(linear, X0.astype(jnp.complex64), nfe=2),
            "complex",
        ),
        Case(
            "numbers",
            "int32 x0",
            lambda t: euler(linear, jnp.ones((2, 3), jnp.int32), nfe=2),
            "astype(jnp.float32)",
        ),
        Case(
            "numbers", "empty batch", lambda t: euler(linear, jnp.ones((0, 3)), nfe=2), "is empty"
        ),
        Case("numbers", "bfloat16 x0 runs in float32", _half(jnp.bfloat16), None),
        Case("numbers", "float16 x0 runs in float32", _half(jnp.float16), None),
        Case(
            "numbers",
            "NaN guidance",
            lambda t: euler(linear, X0, nfe=2, args={"guidance": float("nan")}),
            "guidance must be",
        ),
        Case(
            "numbers",
            "guidance 1e30",
            lambda t: euler(linear, X0, nfe=2, args={"guidance": 1e30}),
            "guidance must be",
        ),
        Case(
            "numbers",
            "NaN in an explicit grid",
            lambda t: euler(linear, X0, nfe=2, grid=[0.0, float("nan"), 1.0]),
            "finite",
        ),
        Case(
            "numbers",
            "psnr data_range=0",
            lambda t: bj.psnr(X0, X0 + 1, data_range=0.0),
            "data_range",
        ),
        Case(
            "numbers", "train data_range=0", lambda t: _no_model_call(t, data_range=0), "data_range"
        ),
        Case(
            "numbers",
            "train learning_rate=NaN",
            lambda t: _no_model_call(t, learning_rate=float("nan")),
            "learning_rate",
        ),
        Case("numbers", "train steps=0", lambda t: _no_model_call(t, steps=0), "steps must be"),
        # sizes and shapes
        Case("sizes", "bns(10000)", lambda t: bj.bns(10000), "[1, 256]"),
        Case("sizes", "euler nfe=10**6", lambda t: euler(linear, X0, nfe=10**6), "bound of 100000"),
        Case(
            "shapes",
            "(B, 1) field in euler",
            lambda t: euler(squeezed, X0, nfe=2),
            "returned shape",
        ),
        Case(
            "shapes", "(B, 1) field in ground_truth", lambda t: gt(squeezed, X0), "returned shape"
        ),
        Case(
            "shapes",
            "(B, 1) field in BNS",
            lambda t: bj.bns(2).sample(bj.bns(2).init(), squeezed, X0),
            "returned shape",
        ),
        Case(
            "shapes",
            "(B, 1) field in BST",
            lambda t: bj.bst(2).sample(bj.bst(2).init(), squeezed, X0),
            "returned shape",
        ),
        # interrupts
        Case("interrupts", "Ctrl-C in train, then the same call", _interrupted_train, None),
    ]


ENTRY = """import bespoke_jax as bj


def mixture():
    field = bj.GaussianMixture([[-1.0, -1.0], [1.0, 1.0]], [0.2] * 2, [1.0] * 2)
    return {"velocity": field.velocity(bj.cond_ot()), "shape": (2,), "scheduler": bj.cond_ot()}
"""


class CommandFailed(Exception):
    """A command's non-zero exit: its one ``Error:`` line (or what it printed instead)."""


def _cli(*args) -> str:
    from click.testing import CliRunner

    from bespoke_jax.app.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code == 0:
        return result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    if len(errors) != 1 or result.exit_code != 2 or "Traceback" in result.output:
        raise AssertionError(f"not one Error line with exit 2: {result.output[-300:]!r}")
    raise CommandFailed(errors[0])


def _entry(tmp: Path, source: str = ENTRY) -> str:
    (tmp / "model.py").write_text(source)
    return f"{tmp / 'model.py'}:mixture"


def _train_args(tmp: Path, out, *more):
    return (
        "train",
        "--model",
        _entry(tmp),
        "--nfe",
        2,
        "--init",
        "euler",
        "--quick",
        "--out",
        out,
        *more,
    )


def _trained(tmp: Path) -> Path:
    _cli(*_train_args(tmp, tmp / "solver"))
    return tmp / "solver"


def _edited_solver(tmp: Path, edit) -> Path:
    path = _trained(tmp)
    record = json.loads((path / "solver.json").read_text())
    (path / "solver.json").write_text(json.dumps(edit(record)))
    return path


def cli_cases() -> list[Case]:
    """The command line's cases."""
    return [
        Case(
            "command line",
            "train --out a user's folder",
            lambda t: _cli(*_train_args(t, t)),
            "--overwrite",
            NOTES,
        ),
        Case(
            "command line",
            "train --out an existing file",
            lambda t: _cli(*_train_args(t, t / "notes.txt")),
            "never replaced",
            NOTES,
        ),
        Case(
            "command line",
            "train --overwrite next to a user's files",
            lambda t: _cli(*_train_args(t, t, "--overwrite")),
            None,
            NOTES,
        ),
        Case(
            "command line",
            "train twice, the second --resume",
            lambda t: (_trained(t), _cli(*_train_args(t, t / "solver", "--resume"))),
            None,
        ),
        Case(
            "command line",
            "train --resume with nothing to resume",
            lambda t: _cli(*_train_args(t, t / "new", "--resume")),
            "--resume",
        ),
        Case(
            "command line",
            "train --lr nan",
            lambda t: _cli(*_train_args(t, t / "new", "--lr", "nan")),
            "learning_rate",
        ),
        Case(
            "command line",
            "train --nfe 10000",
            lambda t: _cli("train", "--model", "checkerboard", "--nfe", 10000, "--out", t / "new"),
            "[1, 256]",
        ),
        Case(
            "command line",
            "demo --out a user's folder",
            lambda t: _cli("demo", "--quick", "--nfe", 2, "--out", t),
            "--overwrite",
            NOTES,
        ),
        Case(
            "command line",
            "demo --overwrite over a user's report.md",
            lambda t: _cli("demo", "--quick", "--nfe", 2, "--overwrite", "--out", t),
            "report.md",
            {**NOTES, "report.md": b"# mine"},
        ),
        Case(
            "command line",
            "sample --out a user's folder",
            lambda t: _cli("sample", _trained(t), "--trust-model", "--out", t / "results"),
            "--overwrite",
            NOTES,
        ),
        Case(
            "command line",
            "export --out a user's file",
            lambda t: _cli("export", _trained(t), "--out", t / "notes.txt"),
            "--overwrite",
            NOTES,
        ),
        Case(
            "command line",
            "eval of a recorded entry point",
            lambda t: _cli("eval", _trained(t), "--n", 2),
            "--trust-model",
        ),
        Case(
            "command line",
            "sample with another model",
            lambda t: _cli("sample", _trained(t), "--model", "checkerboard", "--out", t / "s"),
            "--force",
        ),
        Case(
            "command line",
            "entry point raising KeyError",
            lambda t: _cli(
                "train",
                "--model",
                _entry(t, "def mixture():\n    return {}['x']\n"),
                "--nfe",
                2,
                "--out",
                t / "o",
            ),
            "KeyError",
        ),
        Case(
            "command line",
            "entry point with a SyntaxError",
            lambda t: _cli(
                "train", "--model", _entry(t, "def mixture(:\n"), "--nfe", 2, "--out", t / "o"
            ),
            "SyntaxError",
        ),
        Case(
            "command line",
            "solver.json is a list",
            lambda t: _cli("export", _edited_solver(t, lambda r: [r]), "--out", t / "x.json"),
            "JSON list",
        ),
        Case(
            "command line",
            "solver.json lacks 'family'",
            lambda t: _cli(
                "export",
                _edited_solver(t, lambda r: {k: v for k, v in r.items() if k != "family"}),
                "--out",
                t / "x.json",
            ),
            "lacks family",
        ),
    ]


def run_case(case: Case) -> dict:
    """``{"refused", "worked", "lost", "message"}`` of one case."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, data in case.files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        message, raised = "", False
        try:
            case.run(tmp)
        except (ValueError, RuntimeError, OSError, CommandFailed) as err:
            message, raised = str(err).splitlines()[0] if str(err) else repr(err), True
        except AssertionError as err:
            message = f"wrong result: {err}"
        message = message.replace(str(tmp), "<tmp>")
        lost = sum(
            not (tmp / name).is_file() or (tmp / name).read_bytes() != data
            for name, data in case.files.items()
        )
    refused = raised and case.expect is not None and case.expect in message
    worked = case.expect is None and not raised and not message
    return {"refused": refused, "worked": worked, "lost": lost, "message": message}


def table(cases: list[Case], results: list[dict]) -> str:
    """The Markdown summary by area, then every case."""
    areas = list(dict.fromkeys(case.area for case in cases))
    lines = [
        "| area | cases tried | refused clearly | worked as documented | failed | user files lost"
        " |",
        "|---|---|---|---|---|---|",
    ]
    total = np.zeros(5, int)
    for area in areas:
        rows = [r for c, r in zip(cases, results, strict=True) if c.area == area]
        counts = np.array([
            len(rows),
            sum(r["refused"] for r in rows),
            sum(r["worked"] for r in rows),
            sum(not (r["refused"] or r["worked"]) for r in rows),
            sum(r["lost"] for r in rows),
        ])  # fmt: skip
        total += counts
        lines.append(f"| {area} | " + " | ".join(str(n) for n in counts) + " |")
    lines.append("| **all** | " + " | ".join(f"**{n}**" for n in total) + " |")
    lines += ["", "| area | case | outcome |", "|---|---|---|"]
    for case, result in zip(cases, results, strict=True):
        if result["refused"]:
            outcome = f"refused: {result['message']}"
        elif result["worked"]:
            outcome = "worked"
        else:
            outcome = f"**FAILED**: {result['message'] or 'ran without a word'}"
        outcome = outcome.replace("|", "\\|")
        lost = f" ({result['lost']} user files lost)" if result["lost"] else ""
        lines.append(f"| {case.area} | {case.name} | {outcome}{lost} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="also write RELIABILITY.md")
    options = parser.parse_args()
    cases = python_cases() + cli_cases()
    results = [run_case(case) for case in cases]
    text = table(cases, results)
    print(text)
    if options.write:
        doc = (__doc__ or "").split("\n\n")
        header = (
            "# Reliability\n\n"
            + doc[1]
            + "\n\nProduced by `python experiments/reliability.py --write`.\n\n"
        )
        (ROOT / "RELIABILITY.md").write_text(header + text + "\n")
    failed = sum(not (r["refused"] or r["worked"]) or r["lost"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
