"""Where the commands write their files (`results --csv`, `leaderboard --out`): only regular
files, never over the store, over nothing but the same command's earlier output unless told
`--force`, each file whole or not at all, and one writer of a folder at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from regbench.errors import RegbenchError
from regbench.paths import not_a_file, not_a_folder, os_problem


def check_targets(paths: Iterable[Path], store: Path | None, earlier: Callable[[Path], bool],
                  force: bool) -> None:
    """An error unless each of `paths` may be written: nothing there, or a regular file that is
    not the store (`store`, its SQLite file, if any) and that `earlier` recognises as this
    command's own output, or any regular file with `force`."""
    for path in paths:
        problem = not_a_file(path)
        if problem:
            raise RegbenchError(f"Cannot write {path}: it {problem}. Name another file.")
        problem = not_a_folder(path.parent)
        if problem:
            raise RegbenchError(f"Cannot write {path}: its folder {path.parent} {problem}.")
        if not path.exists():
            continue
        if store is not None and store.exists() and os.path.samefile(path, store):
            raise RegbenchError(f"{path} is the run store itself: writing there would destroy "
                                "every stored run. Name another file.")
        if not force and not earlier(path):
            raise RegbenchError(f"{path} exists and is not an earlier output of this command; "
                                "name another file, or pass --force to replace it.")


def write_whole(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write every file beside its final name, then rename them all into place, in order: a
    kill leaves each file old or new and whole, never cut short, and the old files untouched
    unless every new file had been written. A full disk or a folder that cannot be written is
    an error naming it."""
    written: dict[str, str] = {}
    name = next(iter(files), "")
    try:
        for name, data in files.items():
            handle, temporary = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            written[name] = temporary
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a published file
        for name, temporary in written.items():
            os.replace(temporary, out_dir / name)
    except OSError as err:
        raise RegbenchError(f"{out_dir / name} {os_problem(err)}; nothing was replaced that was "
                            "not written whole.") from None
    finally:
        for temporary in written.values():
            Path(temporary).unlink(missing_ok=True)


def make_folder(out_dir: Path, flag: str) -> None:
    problem = not_a_folder(out_dir)
    if problem:
        raise RegbenchError(f"{flag} {out_dir} {problem}; name a folder.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RegbenchError(f"{flag} {out_dir} cannot be made: {err.filename or out_dir} "
                            f"{os_problem(err)}.") from None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's exclusive lock (an advisory lock on the folder itself, so no lock file
    is left behind): writers that read what is there before replacing it take turns."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)
