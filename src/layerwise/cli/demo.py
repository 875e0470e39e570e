"""`layerwise demo`: the seed article's App1/App2 family end to end, as a new user first sees the tool:
plan, generate, build and push, run both apps, the tree and its savings with measured sizes, then real
warm-vs-cold pulls on a Docker Engine host."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ServiceDown, UserError
from ..family.generate import generate as generate_family
from ..measure.bench import loopback_policy
from ..oci.engine import Engine
from ..plan.cost import summarize
from ..plan.planner import build_plan
from ..plan.spec import load_stack
from ..units import parse_bandwidth
from .commands import _plan_as_known, _print_plan, run_bench_pull, run_build
from .report import console

# In a checkout (or an editable install) the example is used where it is, as scripts/setup prepared it.
CHECKOUT_SEED = Path(__file__).resolve().parents[3] / "examples" / "seed"


def _prepared(folder: Path) -> bool:
    return (folder / "models" / "dust.model").exists() and any((folder / "wheels").glob("*.whl"))


def seed_stack() -> Path:
    """The seed example's stack file, its large inputs made. From a checkout: examples/seed. Installed: the
    copy the wheel ships (package data layerwise/examples/seed), copied to a folder of the user's
    ($XDG_CACHE_HOME/layerwise/seed) where its prepare.py makes the 256 MiB model and fetches the wheels
    once, and where the state file goes."""
    if (CHECKOUT_SEED / "layerwise.yaml").is_file():
        if not _prepared(CHECKOUT_SEED):
            raise UserError("the seed example is not prepared; run: python3 examples/seed/prepare.py",
                            CHECKOUT_SEED)
        return CHECKOUT_SEED / "layerwise.yaml"
    packaged = importlib.resources.files("layerwise") / "examples" / "seed"
    if not packaged.joinpath("layerwise.yaml").is_file():
        raise UserError("this installation of layerwise has no seed example (reinstall it from a wheel or sdist)")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "layerwise" / "seed"
    with importlib.resources.as_file(packaged) as source:
        # The packaged files win; generated ones stay. pip compiled the example's .py files on install:
        # their __pycache__ must not become part of the apps' code.
        shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    if not _prepared(folder):
        console().print(f"Preparing the seed example in {folder} (its model file generated, its wheels "
                        "fetched with pip)")
        done = subprocess.run([sys.executable, str(folder / "prepare.py"), str(folder)], capture_output=True,
                              text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["prepare.py failed"])[-1]
            raise UserError(f"could not prepare the seed example ({last}); "
                            f"run: {sys.executable} {folder / 'prepare.py'} {folder}", folder)
    return folder / "layerwise.yaml"


def run_demo(output: Path, bandwidth: str, options, allowed: tuple[str, ...] = ()) -> int:
    """Run the demo; the exit code (the build's)."""
    stack = seed_stack()
    loaded = load_stack(stack)
    policy = loopback_policy(loaded, allowed)      # the demo only uses the loopback registry
    the_plan = build_plan(loaded)
    out = generate_family(the_plan, loaded, output)
    out_console = console()
    out_console.print(f"[bold]The seed's App1/App2 family[/] ({stack})")
    out_console.print(f"Generated {len(the_plan.images)} image folders, docker-bake.hcl and CODEOWNERS "
                      f"in {out}\n")
    code = 0
    built = False
    try:
        out_console.print("[bold]Building and pushing it[/] (layerwise build --push)")
        code = run_build(stack, push=True, options=options, policy=policy)
        if code == 0:
            engine = Engine(policy=policy, options=options)
            for _, key in sorted(the_plan.apps.items()):
                ref = the_plan.image(key).ref
                out_console.print(f"$ docker run --network none {ref}\n"
                                  f"{engine.run(ref).rstrip()}", highlight=False, markup=False)
            built = True
        the_plan, _ = _plan_as_known(loaded)
    except ServiceDown as e:
        out_console.print(f"[yellow]Not building: {e}[/]\nThe tree and savings below use size hints.")
    out_console.print()
    _print_plan(the_plan, summarize(the_plan))
    if built:
        out_console.print(f"\n[bold]Real pulls, as in the seed's measurement[/] (layerwise bench pull "
                          f"--host-kind docker --no-updates --bandwidth {bandwidth})")
        run_bench_pull(stack, parse_bandwidth(bandwidth), ["docker"], updates=False, output=None,
                       options=options, allowed=policy.registries)
    return code


