#!/usr/bin/env python3
"""A build context of many small files: what `plan` and `generate` cost on it.

    .venv/bin/python bench/context_files.py [--files 100000] [--per-folder 1000] [--keep DIR]

Writes FILES small files (a few bytes each, PER-FOLDER per folder) and a two-app stack file that
COPYs the folder, then runs `layerwise plan --json` and `layerwise generate` on it, each in a child
process of its own, and prints wall seconds and peak RSS (from wait4) per command, with the files
per second. Nothing is asserted: figures depend on the machine and its disk.
tests/faults/test_hostile_contexts.py checks the same path on 10,000 files for correctness.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STACK = """\
registry: localhost:5000
project: bench
base: localhost:5000/os/busybox:latest
categories:
  - {name: code, owner: app-team}
apps:
  a: {code: "COPY ctx/ /srv/"}
  b: {code: RUN echo b}
"""


def make_context(root: Path, files: int, per_folder: int) -> None:
    for n in range(files):
        folder = root / "ctx" / f"d{n // per_folder:05d}"
        if n % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"f{n:06d}.txt").write_text(f"{n}\n")
    (root / "layerwise.yaml").write_text(STACK)


def measure(args: list[str], cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB and exit code of one `layerwise` child process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "layerwise", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--per-folder", type=int, default=1000)
    ap.add_argument("--keep", type=Path, help="write the context here and keep it")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="layerwise-context-bench-"))
    try:
        start = time.perf_counter()
        make_context(root, args.files, args.per_folder)
        print(f"context: {args.files:,} files in {args.files // args.per_folder:,} folders, "
              f"written in {time.perf_counter() - start:.1f} s")
        for name, cmd in (("plan --json", ["plan", "--json"]), ("generate", ["generate", "-o", "out", "--force"])):
            wall, peak, code = measure(cmd, root)
            state = "" if code == 0 else f"  (exit {code})"
            print(f"{name:12} {wall:7.2f} s  {args.files / wall:9,.0f} files/s  peak {peak:6.0f} MB{state}",
                  flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
