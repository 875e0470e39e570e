"""Never a half-written output: every file and folder layerwise writes goes to a temporary name
beside it and is renamed into place, so a reader (or a killed run) sees the old one or the new one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_folder(out: Path, fill: Callable[[Path], None], *, force: bool,
                   is_ours: Callable[[Path], bool], marker: str) -> Path:
    """Write a folder atomically: `fill` writes it beside `out`, then it is swapped in. An existing
    `out` is replaced only when it is empty, ours (`is_ours`) or `force` is given."""
    out = out.resolve()
    if out.exists() and not (out.is_dir() and (force or is_ours(out) or not any(out.iterdir()))):
        raise UserError(f"exists and is not a previous layerwise output (no {marker} from layerwise); "
                        "choose another folder or pass --force to replace it", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    remove_tree(tmp)
    tmp.mkdir()
    try:
        fill(tmp)
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    finally:
        remove_tree(tmp)
        remove_tree(old)
    return out


def remove_tree(path: Path) -> None:
    """Remove a folder and all below it, if it is there, errors ignored: shutil.rmtree without its
    recursion (Python 3.11's recurses once per level, so a context 1,000 folders deep broke it)."""
    folders = []
    todo = [str(path)]
    try:
        while todo:
            folder = todo.pop()
            folders.append(folder)
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
                    else:
                        os.unlink(entry.path)
        for folder in reversed(folders):
            os.rmdir(folder)
    except OSError:
        pass
