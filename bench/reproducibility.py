#!/usr/bin/env python3
"""Which layers of a family are byte-reproducible: build every image twice without cache, compare.

    .venv/bin/python bench/reproducibility.py [STACK] [--builder auto|buildkit|legacy]
                                                          (after `layerwise build STACK --push`)

Each image is built twice from the same generated context (fixed mtimes) on the same parent, with
the build cache off. For each of its own layers it compares the diff_ids the legacy builder made,
and the diff_ids and compressed digests after layerwise's normalization (what `build --push`
pushes). A layer that still differs is pulled again by every host after a cache-less rebuild (a
fresh CI runner) although nothing changed. Uses the real engine; scratch tags are removed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from layerwise.family.build import normalized_own_layers
from layerwise.family.generate import write_tree
from layerwise.family.state import load_state
from layerwise.oci.engine import BuildOptions, Engine
from layerwise.oci.policy import RegistryPolicy
from layerwise.plan.planner import build_plan
from layerwise.plan.spec import load_stack
from layerwise.units import format_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stack", nargs="?", default="examples/seed/layerwise.yaml")
    parser.add_argument("--builder", choices=["auto", "buildkit", "legacy"], default="legacy")
    args = parser.parse_args()
    stack = load_stack(Path(args.stack))
    plan = build_plan(stack)
    measured = load_state(stack.path).measured_sizes()
    # Loopback only: the bench never makes the engine reach beyond this machine.
    engine = Engine(options=BuildOptions(builder=args.builder),
                    policy=RegistryPolicy.resolve() if RegistryPolicy.resolve().registries else
                    RegistryPolicy(("localhost:*", "127.0.0.1:*"), "bench/reproducibility.py"))
    print(f"builder: {engine.builder().name}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="layerwise-repro-") as tmp:
        tmp = Path(tmp)
        write_tree(plan, stack, tmp / "ctx")
        for img in plan.images:
            lower = engine.inspect(plan.image(img.parent).ref if img.parent else plan.base)
            if lower is None:
                sys.exit(f"the parent of {img.key} is not in the local engine: run layerwise build first")
            runs = []
            for run in (1, 2):
                tag = f"layerwise-repro/{img.key}:{run}"
                started = time.monotonic()
                image_id = engine.build(tmp / "ctx" / img.key, tag, {}, nocache=True)
                seconds = time.monotonic() - started
                raw = engine.inspect(image_id).diff_ids[len(lower.diff_ids):]
                _, own = normalized_own_layers(engine, image_id, list(lower.diff_ids), tmp / f"{run}")
                runs.append((raw, [layer for layer, _ in own]))
                engine.remove(tag)
            steps = [s for s in img.steps if s.creates_layer]
            for step, raw_a, raw_b, norm_a, norm_b in zip(steps, runs[0][0], runs[1][0], runs[0][1], runs[1][1]):
                rows.append((img.key, step, raw_a == raw_b, norm_a == norm_b, measured.get(step.identity)))
            print(f"built {img.key} twice without cache ({seconds:.1f} s each)", file=sys.stderr)

    print(f"{'image':<28} {'kind':<5} {'builder':<8} {'normalized':<10} {'size':>10}  step")
    for key, step, raw_same, norm_same, size in rows:
        print(f"{key:<28} {step.keyword:<5} {'same' if raw_same else 'differs':<8} "
              f"{'same' if norm_same else 'DIFFERS':<10} {format_size(size):>10}  {step.short(56)}")
    for kind in ("COPY", "RUN", "ADD"):
        of_kind = [r for r in rows if r[1].keyword == kind]
        if of_kind:
            print(f"{kind}: {sum(r[2] for r in of_kind)}/{len(of_kind)} reproducible as built, "
                  f"{sum(r[3] for r in of_kind)}/{len(of_kind)} after normalization")
    total = sum(r[4] or 0 for r in rows)
    for label, col in (("as built", 2), ("normalized", 3)):
        lost = sum(r[4] or 0 for r in rows if not r[col])
        print(f"{label}: a cache-less rebuild with no change makes hosts pull {format_size(lost)} again "
              f"of {format_size(total)}")


if __name__ == "__main__":
    main()
