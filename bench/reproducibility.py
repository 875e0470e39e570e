#!/usr/bin/env python3
"""Which layers of a family are byte-reproducible: build every image twice without cache, compare.

    .venv/bin/python bench/reproducibility.py [STACK]     (after `layerwise build STACK`)

Each image is built twice from the same generated context (fixed mtimes) on top of the same parent,
with the build cache off, and its own layers' diff_ids are compared. A layer that differs is pulled
again by every host after a cache-less rebuild (a fresh CI runner) even though nothing changed.
Prints a table and a summary; uses the real engine. Scratch tags are removed at the end.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from layerwise.engine import Engine
from layerwise.generate import write_tree
from layerwise.planner import build_plan
from layerwise.spec import load_stack
from layerwise.state import load_state
from layerwise.units import format_size


def main() -> None:
    stack_path = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/seed/layerwise.yaml")
    stack = load_stack(stack_path)
    plan = build_plan(stack)
    measured = load_state(stack.path).measured_sizes()
    engine = Engine()
    for img in plan.images:
        if img.parent and engine.inspect(plan.image(img.parent).ref) is None:
            sys.exit(f"{plan.image(img.parent).ref} is not in the local engine: run layerwise build first")
    rows, scratch = [], []
    with tempfile.TemporaryDirectory(prefix="layerwise-repro-") as tmp:
        write_tree(plan, stack, Path(tmp))
        for img in plan.images:
            layer_steps = [s for s in img.steps if s.creates_layer]
            diff_ids = []
            for run in (1, 2):
                tag = f"layerwise-repro/{img.key}:{run}"
                started = time.monotonic()
                engine.build(Path(tmp) / img.key, tag, {}, nocache=True)
                seconds = time.monotonic() - started
                scratch.append(tag)
                diff_ids.append(engine.inspect(tag).diff_ids[-len(layer_steps):])
            for step, a, b in zip(layer_steps, *diff_ids):
                rows.append((img.key, step, a == b, measured.get(step.identity)))
            print(f"built {img.key} twice without cache (last build {seconds:.1f} s)", file=sys.stderr)
    for tag in scratch:
        engine.remove(tag)

    print(f"{'image':<28} {'kind':<5} {'same':<5} {'size':>10}  step")
    for key, step, same, size in rows:
        print(f"{key:<28} {step.keyword:<5} {'yes' if same else 'NO':<5} {format_size(size):>10}  {step.short(60)}")
    for kind in ("COPY", "RUN", "ADD"):
        of_kind = [r for r in rows if r[1].keyword == kind]
        if of_kind:
            same = sum(r[2] for r in of_kind)
            print(f"{kind}: {same}/{len(of_kind)} layers reproducible")
    lost = sum(r[3] or 0 for r in rows if not r[2])
    total = sum(r[3] or 0 for r in rows)
    print(f"a cache-less rebuild with no change makes hosts pull {format_size(lost)} again "
          f"of {format_size(total)} (compressed sizes from the state file)")


if __name__ == "__main__":
    main()
