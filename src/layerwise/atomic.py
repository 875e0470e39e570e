"""Never a half-written output: every file and folder layerwise writes goes to a temporary name
beside it and is renamed into place, so a reader (or a killed run) sees the old one or the new one.

Temporary names in use are remembered, so a process that must end at once (a layer-index worker told
to stop) can delete them first: `remove_temporaries`."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

_temporaries: set[Path] = set()     # temporary files and folders this process is writing now


def remove_temporaries() -> None:
    """Delete every temporary file and folder this process is still writing (before it exits without
    unwinding, as a signalled worker does)."""
    for tmp in list(_temporaries):
        if tmp.is_dir() and not tmp.is_symlink():
            remove_tree(tmp)
        else:
            tmp.unlink(missing_ok=True)


@contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """Remember `path` as ours to delete while the block runs (it is registered before it exists,
    so no signal can fall between its creation and its registration)."""
    _temporaries.add(path)
    try:
        yield path
    finally:
        _temporaries.discard(path)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (in the main thread, where Python handles
    them): a rename pair is never cut in half."""
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp") as tmp:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # as mkstemp makes it
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
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
    with _temporary(out.parent / f".{out.name}.tmp-{os.getpid()}") as tmp, \
            _temporary(out.parent / f".{out.name}.old-{os.getpid()}") as old:
        remove_tree(tmp)
        tmp.mkdir()
        try:
            fill(tmp)
            with _signals_held():       # the old folder out and the new one in, or neither
                if out.exists():
                    os.rename(out, old)
                try:
                    os.rename(tmp, out)
                except BaseException:
                    if old.exists() and not out.exists():
                        os.rename(old, out)
                    raise
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
