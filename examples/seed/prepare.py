#!/usr/bin/env python3
"""Make the seed example's large inputs: a deterministic model file and real Python wheels.

    python3 examples/seed/prepare.py [--model-mb 256] [DIR]

Idempotent: a model of the right size made by this script is kept; wheels already present are kept.
The model is pseudo-random (incompressible, like real weights) and the same bytes on every machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

CHUNK = 1 << 20


def write_model(path: Path, megabytes: int) -> str:
    size = megabytes * CHUNK
    if path.exists() and path.stat().st_size == size and _head(path) == _block(0)[:64]:
        return f"model: {path} already there ({megabytes} MiB)"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for i in range(megabytes):
            f.write(_block(i))
    os.replace(tmp, path)
    return f"model: wrote {path} ({megabytes} MiB)"


def _block(i: int) -> bytes:
    return hashlib.shake_256(b"layerwise dust.model block %d" % i).digest(CHUNK)


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(64)


def fetch_wheels(folder: Path) -> str:
    requirements = folder / "requirements.txt"
    wanted = [l.split("==")[0].strip().lower() for l in requirements.read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    have = {w.name.split("-")[0].lower() for w in folder.glob("*.whl")}
    if all(name.replace("-", "_") in have for name in wanted):
        return f"wheels: {len(have)} already in {folder}"
    # The image runs Debian bookworm's CPython 3.11 on this machine's architecture.
    arch = platform.machine()
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "none",
           "--platform", f"manylinux2014_{arch}", "--platform", f"manylinux_2_17_{arch}",
           "--platform", "any", "-d", str(folder), "-r", str(requirements)]
    subprocess.run(cmd, check=True)
    return f"wheels: fetched {len(list(folder.glob('*.whl')))} into {folder}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=Path(__file__).resolve().parent, type=Path)
    parser.add_argument("--model-mb", type=int, default=int(os.environ.get("LAYERWISE_MODEL_MB", 256)))
    parser.add_argument("--skip-wheels", action="store_true")
    args = parser.parse_args()
    print(write_model(args.dir / "models" / "dust.model", args.model_mb))
    if not args.skip_wheels:
        print(fetch_wheels(args.dir / "wheels"))


if __name__ == "__main__":
    main()
