"""Build-context files: which ones a COPY/ADD reads, their digest, and reproducible copies of them.

The digest is a deterministic hash of the file tree (relative paths, types, permission bits,
contents, link targets); mtimes and owners are left out because generated contexts fix them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..oci.mutate import FIXED_MTIME

# Fixed mtime for every file of a generated context: 2000-01-01T00:00:00Z. COPY keeps mtimes,
# so fixing them makes COPY layers byte-reproducible across builds and machines.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ContextFiles:
    digest: str                  # "sha256:<hex>" over the tree
    size: int                    # bytes of regular-file content
    paths: tuple[str, ...]       # every file, dir and link, relative to the root, sorted


def resolve_sources(root: Path, sources: tuple[str, ...], *, file: str | None, line: int | None,
                    root_name: str = "the stack file's folder") -> list[str]:
    """Context-relative paths the sources name (globs expanded); errors if missing or outside root."""
    root = root.resolve()
    found: list[str] = []
    for src in sources:
        pattern = src.lstrip("/") or "."
        matches = sorted(glob.glob(pattern, root_dir=root)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"COPY source {src!r} matches no file in {root}", file, line)
        for rel in matches:
            full = (root / rel).resolve()
            if full != root and root not in full.parents:
                raise UserError(
                    f"COPY source {src!r} escapes {root_name} {root}; "
                    "move the files inside it", file, line)
            if not (root / rel).exists() and not (root / rel).is_symlink():
                raise UserError(
                    f"COPY source {src!r} does not exist in {root}; create it or fix the path "
                    f"(sources are relative to {root_name})", file, line)
            found.append(os.path.normpath(rel))  # the path as written: a link is copied as a link
    return found


Ignore = Callable[[str], bool]   # context-relative path -> left out (a .dockerignore)


def dockerignore(root: Path) -> Ignore | None:
    """The matcher of root/.dockerignore (the docker SDK's, as `docker build` reads it), if any."""
    try:
        lines = (root / ".dockerignore").read_text().splitlines()
    except OSError:
        return None
    from docker.utils.build import PatternMatcher  # the Docker SDK, only when there is a .dockerignore

    patterns = [p.strip() for p in lines if p.strip() and not p.lstrip().startswith("#")]
    matcher = PatternMatcher(patterns)
    return lambda rel: rel not in (".", "") and matcher.matches(rel)


def _walk(root: Path, rel: str, ignore: Ignore | None = None):
    """Yield (relpath, stat) for rel and, if it is a directory, everything below it, sorted,
    leaving out what `ignore` matches."""
    if ignore is not None and ignore(rel):
        return
    full = root / rel
    st = full.lstat()
    yield rel, st
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(full)):
            yield from _walk(root, name if rel == "." else f"{rel}/{name}", ignore)


# Each file is read and hashed once per run: many COPY steps read the same files. Keyed by what
# `lstat` says, so a file changed meanwhile is read again.
_HASHED: dict[tuple, str] = {}


def _file_sha256(path: Path, st: os.stat_result | None = None) -> str:
    st = st or path.stat()
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = _read_sha256(path)
    return _HASHED[key]


def _read_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_files(root: Path, relpaths: list[str], ignore: Ignore | None = None) -> ContextFiles:
    """Digest and size of the given context paths and everything below them."""
    h = hashlib.sha256()
    size = 0
    seen: list[str] = []
    for top in relpaths:
        for rel, st in _walk(root, top, ignore):
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                entry = f"d {rel} {mode:o}"
            elif stat.S_ISLNK(st.st_mode):
                entry = f"l {rel} {os.readlink(root / rel)}"
            elif stat.S_ISREG(st.st_mode):
                entry = f"f {rel} {mode:o} {st.st_size} {_file_sha256(root / rel, st)}"
                size += st.st_size
            else:
                raise UserError(f"{rel} is not a regular file, directory or link; it cannot be copied",
                                root / rel)
            h.update(entry.encode() + b"\n")
            seen.append(rel)
    return ContextFiles(digest="sha256:" + h.hexdigest(), size=size, paths=tuple(sorted(set(seen))))


def copy_reproducibly(src_root: Path, relpaths: list[str], dest_root: Path, ignore: Ignore | None = None,
                      *, fix_times: bool = True) -> None:
    """Copy context paths into dest_root keeping modes and links, with every mtime fixed (unless
    `fix_times` is False: the caller fixes them once for a larger tree)."""
    for top in relpaths:
        for rel, st in _walk(src_root, top, ignore):
            src, dst = src_root / rel, dest_root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISDIR(st.st_mode):
                dst.mkdir(exist_ok=True)
            elif stat.S_ISLNK(st.st_mode):
                if not dst.is_symlink():
                    os.symlink(os.readlink(src), dst)
            else:
                shutil.copyfile(src, dst)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(dst, stat.S_IMODE(st.st_mode))
    if fix_times:
        fix_mtimes(dest_root)


def fix_mtimes(root: Path) -> None:
    """Set every mtime under root (and root itself) to FIXED_MTIME, links included."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))
