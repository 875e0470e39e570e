"""`layerwise demo`: the seed article's App1/App2 family end to end, as a new user first sees the tool:
plan, generate, build and push, run both apps, the tree and its savings with measured sizes, then real
warm-vs-cold pulls on a Docker Engine host."""

from __future__ import annotations

from pathlib import Path

from ..errors import ServiceDown, UserError
from ..family.generate import generate as generate_family
from ..measure.bench import loopback_policy
from ..oci.engine import Engine
from ..plan.cost import summarize
from ..plan.planner import build_plan
from ..plan.spec import load_stack
from ..units import parse_bandwidth
from .commands import SEED_STACK, _plan_as_known, _print_plan, run_bench_pull, run_build
from .report import console


def run_demo(output: Path, bandwidth: str, options, allowed: tuple[str, ...] = ()) -> int:
    """Run the demo; the exit code (the build's)."""
    if not SEED_STACK.exists():
        raise UserError("the seed example is not here (layerwise demo runs from a checkout of "
                        "the repository)", SEED_STACK)
    missing = [p for p in ("models/dust.model",) if not (SEED_STACK.parent / p).exists()]
    if missing or not list((SEED_STACK.parent / "wheels").glob("*.whl")):
        raise UserError("the seed example is not prepared; run: python3 examples/seed/prepare.py",
                        SEED_STACK.parent)
    loaded = load_stack(SEED_STACK)
    policy = loopback_policy(loaded, allowed)      # the demo only uses the loopback registry
    the_plan = build_plan(loaded)
    out = generate_family(the_plan, loaded, output)
    out_console = console()
    out_console.print(f"[bold]The seed's App1/App2 family[/] ({SEED_STACK})")
    out_console.print(f"Generated {len(the_plan.images)} image folders, docker-bake.hcl and CODEOWNERS "
                      f"in {out}\n")
    code = 0
    built = False
    try:
        out_console.print("[bold]Building and pushing it[/] (layerwise build --push)")
        code = run_build(SEED_STACK, push=True, options=options, policy=policy)
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
        run_bench_pull(SEED_STACK, parse_bandwidth(bandwidth), ["docker"], updates=False, output=None,
                       options=options, allowed=policy.registries)
    return code


