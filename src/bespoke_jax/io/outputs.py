"""Where the package writes: never over what a user owns, and checked before any work.

The rules every writer follows:

- A location the package did not write is never deleted or overwritten. A directory is ours
  when it is new, empty, or holds our record (a saved solver's ``solver.json``, a run's
  ``MARKER``); a file is ours when it is new or one of our records (an export's JSON).
- A non-empty directory that is not ours is refused unless ``overwrite`` is given, and even
  then only the entries we write (``names``, glob patterns) may appear in it: the user's other
  files stay byte-identical, and one of theirs under a name we write is refused by name.
- An existing file is never turned into a directory, nor a directory into a file.
- What we create gets the permissions of the user's umask (``tempfile`` would give 0700/0600).
- Every output and cache location is checked writable (created, a probe file written and
  removed) before any model call; a cache that is not writable is dropped with a warning.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

MARKER = ".bespoke_jax.json"
_RECORD_BYTES = 1 << 24  # a larger file is no record of ours: not read


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_mode(path, directory: bool) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would (0o666 or 0o777 minus umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def make_temp_dir(parent: Path, name: str) -> Path:
    """A fresh directory in ``parent`` (hidden, named after ``name``) with the user's mode."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-"))
    user_mode(tmp, directory=True)
    return tmp


def read_record(path) -> dict | None:
    """The JSON object in the file ``path``, or ``None`` (missing, unreadable, not an object)."""
    try:
        if Path(path).stat().st_size > _RECORD_BYTES:
            return None
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_writable(path, what: str) -> Path:
    """Create the directory ``path`` if needed and prove it writable with a probe file.

    Raises:
      ValueError: ``path`` is a file, or cannot be created or written (names ``what``).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a directory: give a directory path.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(
            f"{what} {path} is not writable ({err.strerror or err}): choose another location."
        ) from None
    return path


def usable_cache(cache_dir):
    """``cache_dir`` when it is writable, else ``None`` with a warning (solve without it)."""
    if cache_dir is None:
        return None
    try:
        check_writable(cache_dir, "cache_dir")
    except ValueError as err:
        warnings.warn(f"{err} Solving the ground truth without the cache.", stacklevel=3)
        return None
    return cache_dir


def _matches(name: str, names: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in names)


def claim_dir(
    path,
    names: Iterable[str],
    ours: Callable[[Path], bool],
    *,
    overwrite: bool = False,
    option: str | None = "overwrite=True",
    what: str = "output directory",
) -> Path:
    """Check that writing the entries ``names`` into the directory ``path`` destroys nothing.

    Args:
      path: the directory (created later by the writer when missing).
      names: glob patterns of the entries the writer creates or replaces in it.
      ours: whether an existing directory holds our record (then its ``names`` are ours).
      overwrite: allow a non-empty directory that is not ours (its other entries are kept).
      option: how the user passes ``overwrite`` (``--overwrite`` on the command line);
        ``None`` where the caller offers none.
      what: what ``path`` is, for messages.

    Returns:
      ``path`` as an absolute ``Path``.

    Raises:
      ValueError: ``path`` is a file; or it is a non-empty directory that is not ours and
        ``overwrite`` is not given; or one of the user's entries has a name we would write.
    """
    path = Path(path).absolute()
    names = tuple(names)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"The {what} {path} is an existing file; it is never replaced by a directory: "
            f"give a new or empty directory."
        )
    if not path.exists():
        return path
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries or ours(path):
        return path
    if not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        alternative = (
            ""
            if option is None
            else f", or pass {option} to write next to those files (they are kept)"
        )
        raise ValueError(
            f"The {what} {path} is not empty ({shown}) and was not written by bespoke_jax: "
            f"choose a new or empty directory{alternative}."
        )
    clash = [name for name in entries if _matches(name, names)]
    if clash:
        raise ValueError(
            f"The {what} {path} holds {', '.join(clash)}, which bespoke_jax did not write and "
            f"would replace: move them away or choose another directory ({option} replaces only "
            f"files bespoke_jax wrote)."
        )
    return path


def claim_file(
    path,
    ours: Callable[[Path], bool],
    *,
    overwrite: bool = False,
    option: str | None = "overwrite=True",
) -> Path:
    """Check that writing the file ``path`` destroys nothing: it is new, ours, or ``overwrite``
    (``option``: how the user passes it; ``None``: the caller offers none).

    Raises:
      ValueError: ``path`` is a directory, or an existing file that is not ours without
        ``overwrite``.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give the path of a file to write.")
    if path.exists() and not ours(path) and not overwrite:
        alternative = "" if option is None else f", or pass {option} to replace it"
        raise ValueError(
            f"{path} exists and was not written by bespoke_jax: choose another file "
            f"name{alternative}."
        )
    return path


def has_marker(kind: str) -> Callable[[Path], bool]:
    """``ours`` for a run directory: it holds our ``MARKER`` of this ``kind``."""
    return lambda path: (read_record(path / MARKER) or {}).get("kind") == kind


def claim_run_dir(path, kind: str, names: Iterable[str], *, overwrite: bool = False, **kwargs):
    """``claim_dir`` for a run's output directory, then write its marker and check it writable.

    Args:
      path: the run's directory.
      kind: what writes it (``"demo"``, ``"samples"``...), recorded in ``MARKER``.
      names: glob patterns of what the run writes there.
      overwrite, kwargs: as in ``claim_dir``.

    Returns:
      The directory, created, marked as ours and proven writable.
    """
    ours = kwargs.pop("ours", has_marker(kind))
    path = claim_dir(path, (*names, MARKER), ours, overwrite=overwrite, **kwargs)
    check_writable(path, kwargs.get("what", "output directory"))
    marker = path / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"kind": kind, "writes": list(names)}) + "\n")
    return path


@contextlib.contextmanager
def replacing_entries(path: Path, names: Iterable[str]):
    """Build entries in a temporary directory, then move them into ``path`` by name.

    Yields the temporary directory; on success each of ``names`` found in it replaces the entry
    of that name in ``path`` (the last one last, so a reader sees the old or the new record,
    or a mixture its checksum refuses), and nothing else in ``path`` is touched. A new ``path``
    is moved into place whole (atomically).
    """
    names = tuple(names)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists()
    tmp = make_temp_dir(path.parent if fresh else path, path.name)
    try:
        yield tmp
        if fresh:
            os.replace(tmp, path)
            return
        trash = make_temp_dir(tmp, "old")
        for name in names:
            if not (tmp / name).exists():
                continue
            if (path / name).is_dir():
                os.replace(path / name, trash / name)
            os.replace(tmp / name, path / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
