#!/usr/bin/env python3
"""Time a first build of the seed family and a no-op rebuild; bytes pushed; base share of the apps.

    .venv/bin/python bench/build_seed.py [--builder auto|buildkit|legacy]

Copies examples/seed (with its prepared model and wheels) under a registry namespace of its own,
so nothing is skipped, builds with the engine's cache off, then builds again unchanged.
Needs the engine and registry (scripts/services start). Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from layerwise.oci.images import RegistryImage
from layerwise.oci.registry import Registry
from layerwise.units import format_size

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"


def build(stack: Path, *extra: str) -> tuple[float, dict]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "layerwise", "build", str(stack), "--push", "--json", *extra],
                         capture_output=True, text=True)
    seconds = time.monotonic() - started
    if out.returncode:
        sys.exit(f"build failed:\n{out.stdout}\n{out.stderr}")
    return seconds, json.loads(out.stdout)


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builder", choices=["auto", "buildkit", "legacy"], default="auto")
    builder = ["--builder", parser.parse_args().builder]
    ns = "bench" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-") as tmp:
        stack_dir = Path(tmp) / "seed"
        shutil.copytree(SEED, stack_dir, ignore=shutil.ignore_patterns("layerwise.state.json"))
        stack = stack_dir / "layerwise.yaml"
        text = stack.read_text().replace("project: ai", f"project: {ns}-ai")
        for name in ("library/", "ai-tools/"):
            text = text.replace("{name: " + name, "{name: " + ns + "/" + name)
        stack.write_text(text)

        first, doc = build(stack, "--no-cache", *builder)
        again, doc2 = build(stack, *builder)
        print("built with " + ", ".join(sorted({i["builder"] for i in doc["images"] if i.get("builder")})))
        pushed = sum(i["new_bytes"] for i in doc["images"])
        print(f"first build, no cache: {first:.1f} s wall ({doc['seconds']} s in layerwise), "
              f"{doc['counts']['built']} images, {format_size(pushed)} of new layers pushed")
        print(f"no-op rebuild: {again:.1f} s wall ({doc2['seconds']} s in layerwise), "
              f"{doc2['counts']['skipped']} skipped, {doc2['counts']['built']} built")
        with Registry("localhost:5000") as reg:
            dust = RegistryImage(f"localhost:5000/{ns}/ai-tools/env-anaconda-dust:runtime", registry=reg)
            for app in ("app1", "app2"):
                layers = RegistryImage(f"localhost:5000/{ns}-ai/{app}:latest", registry=reg).layers
                total = sum(l.size for l in layers)
                base = sum(l.size for l in layers[:len(dust.layers)])
                print(f"{app}: {format_size(total)} compressed, {format_size(base)} of it base layers "
                      f"({100 * base / total:.4f}%), own layers {format_size(total - base)}")


if __name__ == "__main__":
    main()
