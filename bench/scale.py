#!/usr/bin/env python3
"""How `layerwise` scales with the size of a family: time and peak memory per command.

    .venv/bin/python bench/scale.py [--apps 10,100,1000] [--steps 100] [--dockerfiles 3000]
                                    [--timeout 600] [--keep DIR]

Synthetic families (no Docker needed): six categories with 1 / 20 / 100 / 200 / N / N variants,
`--steps` RUN steps per app spread over them, size hints only. Variants nest (the library variant
decides the tools variant, ...), so the apps form a real tree. For `import`, a folder of small
Dockerfiles with the same nesting. Each command runs in a child process of its own; its wall
seconds and peak RSS (from wait4) are printed per size, then the growth exponent k fitted to
seconds ~ N^k over the sizes that finished. Nothing is asserted: figures depend on the machine.
`family()`, `fleet()` and `dockerfiles()` are also what tests/golden uses.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = (("security", "secops", 1, True), ("tools", "platform", 0.5, False),
              ("library", "ml", 2, False), ("model", "ml", 1, False),
              ("code", "app-team", 20, False), ("config", "app-team", 10, False))
SIZES = {"security": "20MB", "tools": "300MB", "library": "200MB", "model": "500MB",
         "code": "5MB", "config": "10kB"}


def variants(apps: int) -> dict[str, int]:
    """How many different versions of each category the family holds."""
    return {"security": 1, "tools": min(20, apps), "library": min(100, apps), "model": min(200, apps),
            "code": apps, "config": apps}


def _steps_per_category(steps: int) -> dict[str, int]:
    names = [c[0] for c in CATEGORIES]
    share = {n: steps // len(names) for n in names}
    for n in names[: steps % len(names)]:
        share[n] += 1
    return {n: max(1, k) for n, k in share.items()}


def _variant(app: int, category: str, count: dict[str, int]) -> int:
    # Nested: 20 | 100 | 200 and N, so app i's tools variant follows from its library variant.
    return app % count[category]


def family(apps: int, steps: int = 100) -> str:
    """A stack file of `apps` apps with about `steps` RUN steps each."""
    count, per = variants(apps), _steps_per_category(steps)
    out = ["registry: localhost:5000", "project: scale", "base: localhost:5000/os/busybox:latest",
           "categories:"]
    out += [f"  - {{name: {n}, owner: {o}, changes_per_month: {r}, merge: {str(m).lower()}}}"
            for n, o, r, m in CATEGORIES]
    out += ["images:", "  security: {name: scale/secured, tag: \"1\"}", "apps:"]
    for i in range(apps):
        out.append(f"  app{i:04d}:")
        for name, *_ in CATEGORIES:
            v = _variant(i, name, count)
            out.append(f"    {name}:")
            out.append(f"      size: {SIZES[name]}")
            out.append("      steps:")
            out += [f"        - RUN echo {name} {v} step {k} >> /{name}.log" for k in range(per[name])]
        out.append(f"    env: {{APP: app{i:04d}}}")
    return "\n".join(out) + "\n"


def fleet(apps: int, groups: int = 10) -> str:
    """A fleet of `groups` host groups; group g runs every app i with i % groups == g (at most 50),
    host kinds alternating."""
    out = ["bandwidth: 100Mbit", "host_kind: docker", "groups:"]
    for g in range(groups):
        members = [f"app{i:04d}" for i in range(g % apps, apps, groups)][:50] or ["app0000"]
        kind = "containerd" if g % 2 else "docker"
        out.append(f"  g{g:02d}: {{count: {1 + g * 3}, host_kind: {kind}, apps: [{', '.join(members)}]}}")
    return "\n".join(out) + "\n"


def dockerfiles(folder: Path, count: int, steps: int = 12) -> Path:
    """`count` small Dockerfiles, one folder each, sharing prefixes as the stack families do."""
    per = _steps_per_category(steps)
    vcount = variants(count)
    for i in range(count):
        lines = ["FROM localhost:5000/os/busybox:latest"]
        for name, *_ in CATEGORIES:
            v = _variant(i, name, vcount)
            lines += [f"RUN echo {name} {v} step {k}   >>   /{name}.log" for k in range(per[name])]
        lines.append(f'CMD ["/bin/sh", "-c", "echo app{i:04d}"]')
        d = folder / f"app{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "Dockerfile").write_text("\n".join(lines) + "\n")
    return folder


# ----------------------------------------------------------------------------- measuring

def run(argv: list[str], timeout: float) -> tuple[float | None, float, float, str]:
    """Wall seconds (None on time-out or failure), CPU seconds, peak RSS in MB (wait4: this child's
    own), and the last line of its output. CPU seconds say more than wall ones on a shared machine."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                return None, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, "time-out"
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        log.seek(0)
        tail = log.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
    return ((seconds if proc.returncode == 0 else None), usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024, tail[0][:100])


COST_ONLY = """
import sys, time
from layerwise.plan.cost import summarize
from layerwise.plan.planner import build_plan
from layerwise.plan.spec import load_stack
plan = build_plan(load_stack(sys.argv[1]))
started, cpu = time.perf_counter(), time.process_time()
summarize(plan)
print(f"cost summary {time.perf_counter() - started:.3f} {time.process_time() - cpu:.3f}")
"""


def exponent(points: list[tuple[int, float]]) -> float | None:
    """k of seconds ~ N^k, least squares on logs."""
    pts = [(math.log(n), math.log(s)) for n, s in points if s and s > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apps", default="10,100,1000")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--dockerfiles", type=int, default=3000, help="Dockerfiles for import at the largest size")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--keep", type=Path, help="Write the families here and keep them.")
    args = ap.parse_args()
    sizes = [int(s) for s in args.apps.split(",")]
    py = sys.executable
    lw = [py, "-m", "layerwise"]
    work = args.keep or Path(tempfile.mkdtemp(prefix="layerwise-scale-"))
    results: dict[str, list[tuple[int, float | None, float]]] = {}

    def record(name: str, n: int, argv: list[str], parse_tail: bool = False) -> None:
        seconds, cpu, peak, tail = run(argv, args.timeout)
        if parse_tail and seconds is not None and tail.startswith("cost summary"):
            seconds, cpu = map(float, tail.split()[2:4])   # the summary alone, not the loading before it
        results.setdefault(name, []).append((n, seconds, peak))
        shown = f"{seconds:8.2f} s  cpu {cpu:6.2f} s" if seconds is not None else f"  failed ({tail})"
        print(f"{name:24} {n:6d} {shown}  peak {peak:7.0f} MB", flush=True)

    try:
        record("--help", 0, lw + ["--help"])
        for n in sizes:
            folder = work / f"apps-{n}"
            folder.mkdir(parents=True, exist_ok=True)
            stack, fleet_file = folder / "layerwise.yaml", folder / "fleet.yaml"
            stack.write_text(family(n, args.steps))
            fleet_file.write_text(fleet(n))
            record("cost summary", n, [py, "-c", COST_ONLY, str(stack)], parse_tail=True)
            record("plan --json", n, lw + ["plan", str(stack), "--json"])
            record("plan (text)", n, lw + ["plan", str(stack)])
            record("simulate --json", n, lw + ["simulate", str(stack), "--fleet", str(fleet_file), "--json"])
            record("simulate (text)", n, lw + ["simulate", str(stack), "--fleet", str(fleet_file)])
            record("generate", n, lw + ["generate", str(stack), "-o", str(folder / "out"), "--force"])
            files = max(n, round(n * args.dockerfiles / max(sizes)))
            dfs = dockerfiles(folder / "dockerfiles", files)
            record(f"import ({files} files)" if n == max(sizes) else "import", files,
                   lw + ["import", str(dfs), "-o", str(folder / "imported.yaml"), "--json"])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\ngrowth exponent k (seconds ~ N^k):")
    for name, rows in results.items():
        k = exponent([(n, s) for n, s, _ in rows if n])
        if k is not None:
            print(f"  {name:24} {k:5.2f}")


if __name__ == "__main__":
    main()
