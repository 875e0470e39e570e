"""Build-context files: which ones a COPY/ADD reads, their digest, and reproducible copies of them.

The digest is a deterministic hash of the file tree (relative paths, types, permission bits,
contents, link targets); mtimes and owners are left out because generated contexts fix them.
"""

from __future__ import annotations

import glob
import hashlib
import json
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
            try:
                full = (root / rel).resolve()
            except (RuntimeError, OSError):   # Python 3.11 says RuntimeError for a loop of links
                what = f"COPY source {src!r}" + (f" matches {rel!r}, which" if rel != pattern else "")
                raise UserError(f"{what} is a loop of symbolic links in {root}; point the link at a file",
                                file, line) from None
            if full != root and root not in full.parents:
                raise UserError(
                    f"COPY source {src!r} escapes {root_name} {root}; "
                    "move the files inside it", file, line)
            if not (root / rel).exists() and not (root / rel).is_symlink():
                raise UserError(
                    f"COPY source {src!r} does not exist in {root}; create it or fix the path "
                    f"(sources are relative to {root_name})", file, line)
            if not rel.isprintable() and any("\udc80" <= c <= "\udcff" for c in rel):
                raise UserError(f"COPY source {src!r} matches {rel!a}, a name that is not UTF-8, which the "
                                "plan cannot name; rename it, or copy the folder that holds it", file, line)
            found.append(os.path.normpath(rel))  # the path as written: a link is copied as a link
    return found


Ignore = Callable[[str], bool]   # context-relative path -> left out (a .dockerignore)


def dockerignore(root: Path) -> Ignore | None:
    """The matcher of root/.dockerignore (the docker SDK's, as `docker build` reads it), if any."""
    path = root / ".dockerignore"
    if not path.is_file():   # a FIFO there would block the read forever
        return None
    try:
        lines = path.read_text(errors="surrogateescape").splitlines()
    except OSError:
        return None
    from docker.utils.build import PatternMatcher  # the Docker SDK, only when there is a .dockerignore

    patterns = [p.strip() for p in lines if p.strip() and not p.lstrip().startswith("#")]
    matcher = PatternMatcher(patterns)
    return lambda rel: rel not in (".", "") and matcher.matches(rel)


def _walk(root: Path, rel: str, ignore: Ignore | None = None):
    """Yield (relpath, stat) for rel and, if it is a directory, everything below it, sorted (depth
    first, without recursion: a context may nest deeper than Python recurses), leaving out what
    `ignore` matches. Links are reported, never followed, so a loop of them is walked once."""
    todo = [rel]
    while todo:
        rel = todo.pop()
        if ignore is not None and ignore(rel):
            continue
        st = (root / rel).lstat()
        yield rel, st
        if stat.S_ISDIR(st.st_mode):
            names = sorted(os.listdir(root / rel), reverse=True)
            todo += [name if rel == "." else f"{rel}/{name}" for name in names]


_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}

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


def _entry_name(name: str, also: str = "") -> str:
    """A file name as a digest entry holds it: as it is, unless it holds what could make one entry
    read as two (a newline), or bytes that are not UTF-8 (surrogates); then quoted as JSON, as is
    any name with a quote or backslash, so a quoted name never equals one left as it is."""
    if not any(c in name for c in '"\\' + also) and name.isprintable():
        return name
    return json.dumps(name)


def digest_files(root: Path, relpaths: list[str], ignore: Ignore | None = None) -> ContextFiles:
    """Digest and size of the given context paths and everything below them."""
    h = hashlib.sha256()
    size = 0
    seen: list[str] = []
    for top in relpaths:
        for rel, st in _walk(root, top, ignore):
            mode = stat.S_IMODE(st.st_mode)
            name = _entry_name(rel)
            if stat.S_ISDIR(st.st_mode):
                entry = f"d {name} {mode:o}"
            elif stat.S_ISLNK(st.st_mode):
                entry = f"l {_entry_name(rel, ' ')} {_entry_name(os.readlink(root / rel))}"
            elif stat.S_ISREG(st.st_mode):
                entry = f"f {name} {mode:o} {st.st_size} {_file_sha256(root / rel, st)}"
                size += st.st_size
            else:   # never opened: reading a FIFO would wait forever, a device never end
                raise UserError(f"{_KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, which COPY "
                                "cannot copy; move it out of the context or leave it out in .dockerignore",
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
    for rel, _ in _walk(root, "."):     # not os.walk: Python 3.11's recurses once per level
        os.utime(root / rel, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
