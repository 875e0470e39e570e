"""Hostile build contexts: symbolic-link loops, FIFOs, sockets and devices, file names with newlines
or bytes that are not UTF-8, many files, deep folders. Each is one error line (nothing written) or is
handled correctly (the generated context holds exactly what COPY would copy)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from layerwise.plan import contexts

STACK = """\
registry: localhost:5000
project: hostile
base: localhost:5000/os/busybox:latest
categories:
  - {{name: code, owner: app-team}}
apps:
  a: {{code: "{copy}"}}
  b: {{code: RUN echo b}}
"""


def layerwise(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # The time-out only keeps a blocked read (a FIFO) from hanging the run; nothing is asserted on time.
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def stack(folder: Path, copy: str) -> Path:
    path = folder / "layerwise.yaml"
    path.write_text(STACK.format(copy=copy))
    return path


def assert_refused(folder: Path, *words: str) -> None:
    """plan and generate: one error line, exit 2; generate wrote nothing beside the inputs."""
    before = sorted(os.listdir(folder))
    for args in (["plan"], ["generate", "-o", "out"]):
        result = layerwise(*args, cwd=folder)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("layerwise: error: "), result.stderr
        for word in words:
            assert word in lines[0], lines[0]
    assert sorted(os.listdir(folder)) == before


def generated(folder: Path) -> Path:
    result = layerwise("generate", "-o", "out", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "out" / "hostile" / "a"


# ----------------------------------------------------------------------------- symbolic links

def test_a_copy_source_that_is_a_loop_of_links(tmp_path):
    os.symlink("loop", tmp_path / "loop")
    stack(tmp_path, "COPY loop /x")
    assert_refused(tmp_path, "layerwise.yaml:7:", "loop of symbolic links")


def test_a_glob_matching_a_loop_of_links(tmp_path):
    (tmp_path / "ctx").mkdir()
    os.symlink("one", tmp_path / "ctx" / "two")
    os.symlink("two", tmp_path / "ctx" / "one")
    stack(tmp_path, "COPY ctx/* /x/")
    assert_refused(tmp_path, "layerwise.yaml:7:", "matches 'ctx/one'", "loop of symbolic links")


def test_loops_of_links_inside_a_copied_folder_are_copied_as_links(tmp_path):
    """COPY of a folder copies links as links: a loop, or a link to a parent, is walked once."""
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    os.symlink("loop", ctx / "loop")
    os.symlink("..", ctx / "sub" / "up")
    os.symlink("/", ctx / "root")
    (ctx / "file").write_text("x")
    stack(tmp_path, "COPY ctx/ /x/")
    out = generated(tmp_path) / "ctx"
    assert {p: os.readlink(out / p) for p in ("loop", "sub/up", "root")} == {"loop": "loop", "sub/up": "..",
                                                                                "root": "/"}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["file", "loop", "root", "sub", "sub/up"]


def test_a_link_out_of_the_context(tmp_path):
    os.symlink("/etc/passwd", tmp_path / "passwd")
    stack(tmp_path, "COPY passwd /x")
    assert_refused(tmp_path, "layerwise.yaml:7:", "escapes")


# ----------------------------------------------------------------------------- FIFOs, sockets, devices

def _special(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))   # what /dev/null is
        except PermissionError:
            pytest.skip("making a device needs root")


@pytest.mark.parametrize("kind, words", [("fifo", "a FIFO"), ("socket", "a socket"), ("device", "a character device")])
@pytest.mark.parametrize("where", ["named", "in-folder", "glob"])
def test_special_files_are_refused_without_being_opened(tmp_path, kind, words, where):
    """Reading a FIFO no one writes would block forever; it is never opened."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "ok.txt").write_text("x")
    _special(kind, tmp_path / "ctx" / "special")
    stack(tmp_path, {"named": "COPY ctx/special /x", "in-folder": "COPY ctx/ /x/", "glob": "COPY ctx/* /x/"}[where])
    assert_refused(tmp_path, "ctx/special:", words, ".dockerignore")


def test_a_fifo_left_out_by_dockerignore_is_not_a_problem(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    os.mkfifo(ctx / "pipe")
    (ctx / "ok.txt").write_text("x")
    digest = contexts.digest_files(ctx, ["."], lambda rel: rel.endswith("pipe"))
    assert digest.paths == (".", "ok.txt")


def test_a_dockerignore_that_is_a_fifo_is_not_read(tmp_path):
    """`import` reads a context's .dockerignore: a FIFO there would block the run."""
    (tmp_path / "svc").mkdir()
    os.mkfifo(tmp_path / "svc" / ".dockerignore")
    (tmp_path / "svc" / "app.txt").write_text("x")
    (tmp_path / "svc" / "Dockerfile").write_text("FROM localhost:5000/os/busybox:latest\nCOPY app.txt /app.txt\n")
    result = layerwise("import", "svc", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"svc"' in result.stdout


# ----------------------------------------------------------------------------- file names

def test_names_with_newlines_cannot_pass_for_other_entries(tmp_path):
    """Two files `a` and `b`, or one file named `a <mode> <size> <sha256>\\nf b`: the old digest entry
    lines ("f NAME MODE SIZE SHA") were the same bytes for both. Now they differ, and both copy."""
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    (two / "a").write_text("1")
    (two / "b").write_text("2")
    sha_a = contexts._read_sha256(two / "a")
    forged = one / f"a 644 1 {sha_a}\nf b"
    forged.write_text("2")
    for p in (two / "a", two / "b", forged):
        p.chmod(0o644)
    one.chmod(two.stat().st_mode & 0o777)
    assert contexts.digest_files(two, ["."]).digest != contexts.digest_files(one, ["."]).digest


def test_names_with_newlines_and_non_utf8_bytes_are_digested_and_copied(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "new\nline").write_text("1")
    with open(os.path.join(os.fsencode(ctx), b"caf\xe9"), "w") as f:
        f.write("2")
    os.symlink(b"t\xff", os.path.join(os.fsencode(ctx), b"l\xffnk"))
    stack(tmp_path, "COPY ctx/ /x/")
    out = generated(tmp_path) / "ctx"
    assert sorted(os.listdir(os.fsencode(out))) == [b"caf\xe9", b"l\xffnk", b"new\nline"]
    assert os.readlink(os.path.join(os.fsencode(out), b"l\xffnk")) == b"t\xff"
    # Renaming a file changes the digest, as it changes what COPY copies.
    before = contexts.digest_files(ctx, ["."]).digest
    os.rename(os.path.join(os.fsencode(ctx), b"caf\xe9"), os.path.join(os.fsencode(ctx), b"caf\xe8"))
    assert contexts.digest_files(ctx, ["."]).digest != before


def test_a_glob_matching_a_name_that_is_not_utf8(tmp_path):
    """The plan lists what a glob matched; a name it cannot write as text is refused, with the way out."""
    (tmp_path / "ctx").mkdir()
    with open(os.path.join(os.fsencode(tmp_path), b"ctx/caf\xe9.txt"), "w") as f:
        f.write("x")
    stack(tmp_path, "COPY ctx/*.txt /x/")
    assert_refused(tmp_path, "layerwise.yaml:7:", "not UTF-8", "copy the folder")


# ----------------------------------------------------------------------------- size and depth

def test_a_context_of_many_files(tmp_path):
    """10,000 files in 100 folders (bench/context_files.py measures 100,000: the same code path,
    one pass, memory by the file list; ten times fewer keeps the suite quick)."""
    ctx = tmp_path / "ctx"
    for d in range(100):
        folder = ctx / f"d{d:03d}"
        folder.mkdir(parents=True)
        for f in range(100):
            (folder / f"f{f:03d}").write_text(f"{d}/{f}")
    stack(tmp_path, "COPY ctx/ /x/")
    digest = contexts.digest_files(tmp_path, ["ctx"])
    assert len(digest.paths) == 1 + 100 + 10_000
    out = generated(tmp_path) / "ctx"
    assert sum(1 for p in out.rglob("*") if p.is_file()) == 10_000
    assert (out / "d042" / "f007").read_text() == "42/7"


def test_a_context_nested_deeper_than_python_recurses(tmp_path):
    """1,200 folders one in the other: walked without recursion, digested and copied."""
    deep = tmp_path / "ctx"
    folder = str(deep)
    for _ in range(1 + 1200):      # not os.makedirs: it recurses once per level too
        os.mkdir(folder)
        folder += "/d"
    with open(os.path.join(deep, *["d"] * 1200, "leaf"), "w") as f:
        f.write("x")
    stack(tmp_path, "COPY ctx/ /x/")
    try:
        assert len(contexts.digest_files(tmp_path, ["ctx"]).paths) == 1 + 1200 + 1
        out = generated(tmp_path)
        assert open(os.path.join(out, "ctx", *["d"] * 1200, "leaf")).read() == "x"
        generated(tmp_path)      # replacing that output removes the old one, without recursion too
        assert sorted(os.listdir(tmp_path)) == ["ctx", "layerwise.yaml", "out"]
    finally:   # pytest's own clean-up (shutil.rmtree) recurses once per level too: rm does not
        subprocess.run(["rm", "-rf", "--", *map(str, tmp_path.iterdir())], check=True)
