#!/usr/bin/env python3
"""How fast `layerwise import` reads real Dockerfile sets, and what it finds in each.

    .venv/bin/python bench/import_corpora.py [CORPORA_DIR]     # default ../shared/corpora

Per set: Dockerfiles imported and refused, stages, base images extracted (and how many of them are
an app's own image), instructions and layers shared, steps moved and layer swaps proposed, COPY/ADD
compared by text only (the corpora come without build contexts), wall seconds of
import_family (parse + chains + prefix tree + cut points, best of 3) and the process's peak RSS.
Nothing is asserted: figures depend on the machine.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from layerwise.importing.importer import import_family, summary

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    corpora = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "corpora"
    sets = sorted(p for p in corpora.iterdir() if p.is_dir() and p.name != "buildkit_parser_testfiles")
    print(f"{'set':44} {'files':>5} {'refused':>7} {'stages':>6} {'bases':>5} {'shared instr':>12} "
          f"{'shared layers':>13} {'app=base':>8} {'moves':>5} {'swaps':>5} {'text-only':>9} {'seconds':>8}")
    for folder in sets:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            family = import_family([folder])
            best = min(best, time.perf_counter() - started)
        doc = summary(family)
        text_only = sum(len(a["text_only_lines"]) for a in doc["apps"])
        print(f"{folder.name:44} {doc['images']:>5} {len(doc['errors']):>7} {doc['stages']:>6} "
              f"{len(doc['bases']):>5} {doc['instructions_shared']:>12} {doc['layers_shared']:>13} "
              f"{sum(1 for b in doc['bases'] if b['app']):>8} {doc['moves']:>5} {len(doc['proposed_swaps']):>5} "
              f"{text_only:>9} {best:>8.3f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
