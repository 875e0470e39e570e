"""The `layerwise` command: thin commands over spec → planner → cost / generate → report."""

from __future__ import annotations

import contextlib
import functools
import gc
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click

from .. import __version__
from ..atomic import write_atomically
from ..errors import UserError
from ..jsonout import json_text

# Heavy modules (pydantic, rich, docker, httpx) are imported by the commands that use them, so
# `layerwise --help` and `layerwise plan` start quickly and never load the Docker SDK.

def _acyclic(command):
    """For commands that build large acyclic structures: the cyclic garbage collector would walk
    them again and again (a third of `plan`'s time at 1,000 apps) and find nothing to free."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return command(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()
    return run


STACK_ARG = click.argument("stack", type=click.Path(path_type=Path), default="layerwise.yaml")
JSON_OPT = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


def build_opts(f):
    """--builder, --network and --allow-registry: how images are built and where they may come from."""
    f = click.option("--allow-registry", "allowed", multiple=True, metavar="HOST",
                     help="Only use images from this registry (repeatable; globs like 'host:*'). Default: "
                     "$LAYERWISE_ALLOWED_REGISTRIES, else the stack file's policy, else any registry.")(f)
    f = click.option("--network", type=click.Choice(["default", "none", "host"]), default="default",
                     show_default=True, help="The network RUN steps get.")(f)
    f = click.option("--builder", type=click.Choice(["auto", "buildkit", "legacy"]), default="auto",
                     show_default=True, help="auto: BuildKit where the installed Docker offers it, else legacy.")(f)
    return f


def registry_opts(f):
    """--ca-cert and --insecure-registry: how registries are reached."""
    f = click.option("--insecure-registry", "insecure", multiple=True, metavar="HOST",
                     help="Speak plain HTTP to this registry (loopback always is; repeatable).")(f)
    f = click.option("--ca-cert", type=click.Path(path_type=Path, dir_okay=False), envvar="LAYERWISE_CA_CERT",
                     help="Trust this CA (PEM) for registries' HTTPS, besides the system's CA store.")(f)
    return f


def _build_options(builder: str, network: str):
    from ..oci.engine import BuildOptions
    return BuildOptions(builder=builder, network=network)


def _configure_registries(ca_cert: Path | None, insecure: tuple[str, ...]) -> None:
    from ..oci.registry import configure
    configure(ca_cert=ca_cert, insecure=insecure)


def _show_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from ..dockerfiles import parser
        click.echo(f"layerwise, version {__version__} (Dockerfile parser: {parser().name})")
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show the version and the Dockerfile parser in use (buildkit or python), and exit.")
def app() -> None:
    """Plan, build and audit families of Docker images that share their heavy layers."""




def _plan_as_known(loaded):
    """The plan (of a stack or an import folder) with what the last build learned: the OS base's
    digest and measured sizes."""
    from ..family.loader import family_plan
    from ..family.state import load_state, with_measured_sizes
    state = load_state(loaded.path)
    return with_measured_sizes(family_plan(loaded, state.base_digest), state.measured_sizes()), state


def _print_plan(plan, summary, steps: bool | None = None, orders=None, other_tree=None) -> None:
    from .report import console, cost_tables, order_tables, plan_tree, size_note
    out = console()
    out.print(plan_tree(plan, steps=steps))
    out.print()
    for table in cost_tables(summary):
        out.print(table)
    out.print(f"[dim]{size_note(summary)}[/]")
    if orders is not None:
        out.print()
        for part in order_tables(orders):
            out.print(part)
    if other_tree is not None:
        out.print("\nthe tree in the recommended order (images and owners):")
        out.print(plan_tree(other_tree, steps=False))


ORDER_OPT = click.option("--order", "order", type=click.Choice(["stack", "optimize"]),
                         help="The order of categories: as the stack file lists them, or the one the "
                              "planner finds cheapest for monthly updates (default: the stack file's order: key).")


def _with_order(loaded, order: str | None):
    """The loaded stack with --order applied (an import folder has no categories to order)."""
    from dataclasses import replace

    from ..plan.spec import Stack
    if order is None or not isinstance(loaded, Stack):
        return loaded
    return replace(loaded, order=order)


def _order_summary(loaded, applied_plan, state):
    """The stack file's order beside the recommended one (with what the last build measured)."""
    from ..family.state import with_measured_sizes
    from ..plan.cost import EngineCosts, compare_orders
    from ..plan.planner import build_plan, choose_order, order_of
    choice = choose_order(loaded)
    sizes = state.measured_sizes()
    applied = tuple(c.name for c in applied_plan.categories)
    plans, label = {}, None
    for name, order in (("stack file", choice.declared), ("recommended", choice.recommended)):
        if order in [tuple(c.name for c in p.categories) for p in plans.values()]:
            continue
        plans[name] = (applied_plan if order == applied
                       else with_measured_sizes(build_plan(loaded, state.base_digest, order), sizes))
        label = name if order == applied else label
    if label is None:
        plans["applied"] = applied_plan
        label = "applied"
    engine = {k: EngineCosts.of(c, "measured") for k, c in state.pull_costs.items()}
    patched = choice.declared[0]
    fleet = loaded.fleet.path if loaded.fleet else None     # named as the stack file names it
    fleet_name = str(fleet.relative_to(loaded.root) if fleet and fleet.is_relative_to(loaded.root) else fleet or "")
    summary = compare_orders(plans, label, choice.reasons, patched, engine, fleet=loaded.fleet,
                             measured=state.pull_costs, fleet_name=fleet_name)
    other = plans.get("recommended") if order_of(loaded) != choice.recommended else None
    return summary, other


@app.command()
@STACK_ARG
@click.option("--steps/--no-steps", default=None, help="Show every image's steps in the tree (default: "
              "only for families of up to 200 steps in all).")
@click.option("--format", "form", type=click.Choice(["text", "mermaid", "dot"]), default="text", show_default=True,
              help="text: the tree and cost tables; mermaid or dot: the family as a graph (owner, tag, own size).")
@click.option("--svg", "svg_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the graph as SVG here (needs Graphviz's dot).")
@ORDER_OPT
@JSON_OPT
@_acyclic
def plan(stack: Path, steps: bool | None, form: str, svg_path: Path | None, order: str | None,
         as_json: bool) -> None:
    """Show the tree of images for STACK (default layerwise.yaml), what it saves, and the order of
    categories the planner recommends."""
    from ..family.loader import load_family
    from ..plan.cost import summarize
    from ..plan.spec import Stack

    loaded = _with_order(load_family(stack), order)
    the_plan, state = _plan_as_known(loaded)
    if svg_path is not None:
        from ..plan.graph import dot, svg
        write_atomically(svg_path, svg(dot(the_plan)))
    if form != "text":
        from ..plan.graph import dot, mermaid
        sys.stdout.write(mermaid(the_plan) if form == "mermaid" else dot(the_plan))
        return
    summary = summarize(the_plan)
    orders, other = _order_summary(loaded, the_plan, state) if isinstance(loaded, Stack) else (None, None)
    if as_json:
        doc = {"plan": the_plan.to_dict(), "cost": summary.to_dict()}
        if orders is not None:
            doc["order"] = orders.to_dict()
        sys.stdout.write(json_text(doc))
    else:
        _print_plan(the_plan, summary, steps, orders, other)


@app.command()
@STACK_ARG
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Folder to write the family into.")
@click.option("--force", is_flag=True, help="Replace a folder that is not a layerwise output.")
@click.option("--layout", type=click.Choice(["per-team", "monorepo"]),
              help="Write git repositories with CI pipelines: one per owner, or one for the family.")
@click.option("--ci", type=click.Choice(["gitlab", "github"]),
              help="With --layout: the CI system the pipelines are written for (default gitlab).")
@click.option("--namespace", help="With --layout: the GitLab group or GitHub owner of the repositories "
              "(default: the family's project).")
@ORDER_OPT
@_acyclic
def generate(stack: Path, output: Path, force: bool, layout: str | None, ci: str | None,
             namespace: str | None, order: str | None) -> None:
    """Write one folder per image (Dockerfile + context), plan.json, docker-bake.hcl, CODEOWNERS;
    with --layout, git repositories with pipelines instead (STACK may then also be a folder
    `layerwise import --refactor-to` wrote)."""
    from ..family.loader import load_family
    from .report import console

    if layout is None:
        from ..family.generate import generate as generate_family
        from ..family.loader import ImportedFamily
        if ci or namespace:
            raise UserError("--ci and --namespace say how --layout writes repositories; give --layout too")
        loaded = _with_order(load_family(stack), order)
        if isinstance(loaded, ImportedFamily):
            raise UserError("an import folder is written as repositories: give --layout per-team or monorepo",
                            loaded.path)
        the_plan, _ = _plan_as_known(loaded)
        out = generate_family(the_plan, loaded, output, force=force)
        console().print(f"wrote {len(the_plan.images)} images to {out}")
        return
    from ..family.pipelines import generate_layout
    loaded = _with_order(load_family(stack), order)
    the_plan, _ = _plan_as_known(loaded)
    ci = ci or "gitlab"
    written = generate_layout(the_plan, loaded, output, layout=layout, ci=ci,
                              namespace=namespace or the_plan.project, force=force)
    n = len(written.repos)
    console().print(f"wrote {n} git {'repository' if n == 1 else 'repositories'} with {written.pipelines} {ci} "
                    f"pipeline files for {len(the_plan.images)} images to {written.out}", highlight=False)


@app.command()
@STACK_ARG
@click.option("--changed", multiple=True, required=True, metavar="PATH|IMAGE",
              help="A file that changed (relative to STACK's folder) or an image (key, ref or app); repeatable.")
@JSON_OPT
def affected(stack: Path, changed: tuple[str, ...], as_json: bool) -> None:
    """The images a change forces to rebuild, parents first, and why. STACK may also be a folder
    `layerwise import --refactor-to` wrote."""
    from ..family.affected import affected as affected_images
    from ..family.loader import load_family

    loaded = load_family(stack)
    the_plan, _ = _plan_as_known(loaded)
    found = affected_images(loaded, the_plan, list(changed))
    if as_json:
        sys.stdout.write(json_text({"changed": list(changed), "images": [a.to_dict() for a in found],
                                    "rebuilt": len(found), "family": len(the_plan.images)}))
        return
    from .report import console
    out = console()
    for a in found:
        out.print(f"{a.key:<36} {a.owner:<12} {'; '.join(a.reasons)}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"{len(found)} of {len(the_plan.images)} images to rebuild, in this order", highlight=False)


@app.command()
@STACK_ARG
@click.option("--push", is_flag=True, help="Push every image to the registry (incremental against it).")
@click.option("--parallel", default=2, show_default=True, type=click.IntRange(1, 16),
              help="How many independent images to build at once.")
@click.option("--only", multiple=True, metavar="IMAGE", help="Build only this image (key, ref or app) "
              "and the ancestors it needs; repeatable.")
@click.option("--dry-run", is_flag=True, help="Say per image build or skip and why; build nothing.")
@click.option("--no-cache", is_flag=True, help="Build every step anew (the engine's cache is not used).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="When another build of the same "
              "stack runs: wait for it (then build only what it left), or stop at once with an error.")
@ORDER_OPT
@build_opts
@registry_opts
@JSON_OPT
def build(stack: Path, push: bool, parallel: int, only: tuple[str, ...], dry_run: bool, no_cache: bool,
          wait: bool, order: str | None, builder: str, network: str, allowed: tuple[str, ...], ca_cert: Path | None,
          insecure: tuple[str, ...], as_json: bool) -> None:
    """Build (and with --push, push) every image of the plan in dependency order, skipping the
    ones whose fingerprint tag already exists. STACK may also be a folder written by
    `layerwise import --refactor-to` (its bases, then its apps)."""
    _configure_registries(ca_cert, insecure)
    sys.exit(run_build(stack, push=push, parallel=parallel, only=list(only), dry_run=dry_run,
                       no_cache=no_cache, as_json=as_json, options=_build_options(builder, network),
                       allowed=allowed, wait=wait, order=order))


def run_build(stack: Path, *, push: bool, parallel: int = 2, only: list[str] | None = None,
              dry_run: bool = False, no_cache: bool = False, as_json: bool = False, options=None,
              allowed: tuple[str, ...] = (), policy=None, wait: bool = True, order: str | None = None) -> int:
    from ..family.build import build_family
    from ..family.loader import load_family
    from ..oci.policy import RegistryPolicy
    from .report import PlainProgress, RichProgress, build_table, console

    loaded = _with_order(load_family(stack), order)
    policy = policy or RegistryPolicy.resolve(allowed, stack=loaded)
    out = console()
    progress = None if as_json else (RichProgress(out) if out.is_terminal else PlainProgress(out))
    started = time.monotonic()
    if isinstance(progress, RichProgress) and not dry_run:
        with progress:
            the_plan, decisions, results = build_family(loaded, push=push, parallel=parallel, only=only,
                                                        no_cache=no_cache, progress=progress,
                                                        options=options, policy=policy, wait=wait)
    else:
        the_plan, decisions, results = build_family(loaded, push=push, parallel=parallel, only=only,
                                                    no_cache=no_cache, progress=progress, dry_run=dry_run,
                                                    options=options, policy=policy, wait=wait)
    by_key = {d.key: d for d in decisions}
    if dry_run:
        if as_json:
            sys.stdout.write(json_text([asdict(d) for d in decisions]))
        else:
            for d in decisions:
                out.print(f"{d.action:<12} {d.key:<36} {d.reason}", highlight=False, markup=False)
        return 0
    seconds = time.monotonic() - started
    counts = {s: sum(r.status == s for r in results)
              for s in ("built", "skipped", "failed", "not attempted", "not selected")}
    if as_json:
        sys.stdout.write(json_text({"seconds": round(seconds, 2), "counts": counts,
                                    "images": [asdict(r) for r in results]}))
    else:
        out.print(build_table(results, by_key))
        for r in results:
            if r.status == "failed" and r.log_tail:
                out.print(f"[red]{r.key} failed[/]; last lines of its build:")
                out.print("\n".join("  " + l for l in r.log_tail), highlight=False, markup=False)
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        if counts["built"] == 0 and not counts["failed"]:
            summary = "nothing to build: " + summary
        builders = sorted({r.builder for r in results if r.builder})
        if builders:
            summary += f" (built with {', '.join(builders)})"
        out.print(f"{summary} in {seconds:.1f} s" + (" (pushed to " + loaded.registry + ")" if push else ""))
    return 1 if counts["failed"] or counts["not attempted"] else 0


@app.command()
@STACK_ARG
@click.option("--fleet", "fleet_path", type=click.Path(path_type=Path), required=True,
              help="The fleet file: host groups, the apps they run, links, update rates.")
@click.option("--host-kind", type=click.Choice(["docker", "docker-containerd", "containerd"]),
              help="Model every host as this kind (default: as the fleet file says).")
@click.option("--compare", type=click.Path(path_type=Path),
              help="A hand-made tree to compare with, as a second stack file.")
@click.option("--chart", type=click.Path(path_type=Path), help="Write an SVG chart of monthly bytes here.")
@JSON_OPT
@_acyclic
def simulate(stack: Path, fleet_path: Path, host_kind: str | None, compare: Path | None,
             chart: Path | None, as_json: bool) -> None:
    """Cold-start and monthly update bytes and time for a fleet: flat vs planned, with the floor.
    STACK may also be a folder written by `layerwise import --refactor-to`."""
    from ..family.loader import load_family
    from ..family.state import with_measured_sizes
    from ..plan.cost import FLAT, PLANNED, TREE, PlanCosts, fleet_dict, layer_sizes, simulate_group
    from ..plan.fleet import load_fleet
    from ..plan.spec import load_stack
    from .report import bar_chart_svg

    loaded = load_family(stack)
    the_plan, state = _plan_as_known(loaded)
    fleet = load_fleet(fleet_path, the_plan)
    costs = PlanCosts(the_plan)       # per-node figures, shared by every group
    plans = {"flat": (costs, FLAT), "planned": (costs, PLANNED)}
    if compare:
        other_plan, _ = _plan_as_known(load_stack(compare))
        other_plan = with_measured_sizes(other_plan, state.measured_sizes())
        if set(other_plan.apps) != set(the_plan.apps):
            raise UserError(f"the apps differ from {stack}'s: {sorted(other_plan.apps)}", compare)
        plans["hand-made"] = (PlanCosts(other_plan), TREE)
    rates = {c.name: fleet.updates.get(c.name, c.changes_per_month) for c in the_plan.categories}
    results = []
    for g in fleet.groups:
        kind = host_kind or g.host_kind
        results.append(simulate_group(plans, g.name, g.count, g.apps, kind, g.bandwidth_bps, rates,
                                      fleet.engine_costs(kind, state.pull_costs)))
    labels = list(plans)
    if chart:
        svg = bar_chart_svg("monthly update bytes per host", [r.name for r in results],
                            {l: [r.monthly[l].bytes for r in results] for l in labels}
                            | {"floor": [r.floor_monthly for r in results]})
        write_atomically(chart, svg)
    if as_json:
        sys.stdout.write(json_text(fleet_dict(results, labels, rates)))
        return
    from .report import console, simulate_tables, size_note
    out = console()
    for table in simulate_tables(results, labels):
        out.print(table)
    engine_costs = sorted({f"{r.host_kind}: {r.costs.describe()}" for r in results})
    out.print(f"[dim]{size_note(layer_sizes(the_plan))} Engine costs: {'; '.join(engine_costs)}."
              + (f" Chart: {chart}" if chart else "") + "[/]")


@app.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--platform", help="os/arch[/variant] to pick from image indexes (default linux/amd64).")
@click.option("--processes", type=click.IntRange(1, 64), help="Layers indexed in parallel (default: cores).")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Also write an HTML report here.")
@click.option("--fail-under", "gates", multiple=True, metavar="METRIC=VALUE",
              help="Exit 1 when a metric is below VALUE: efficiency (every image's, dive-style) or sharing "
                   "(share of the images' bytes a host holding them all does not pull). E.g. sharing=0.5.")
@registry_opts
@JSON_OPT
def audit(images: tuple[str, ...], platform: str | None, processes: int | None, html_path: Path | None,
          gates: tuple[str, ...], ca_cert: Path | None, insecure: tuple[str, ...], as_json: bool) -> None:
    """What existing IMAGES share and what hosts download twice (registry refs, docker save
    archives, OCI layout folders, docker://REF for the local engine).

    An image that cannot be read (missing, a broken or incomplete layer, a digest that does not
    match, an unknown manifest type) is reported on one line naming it and its layer, and the others
    are audited; so are entries reported instead of indexed (hostile paths such as ../x are never
    followed). Exit code: 0 when every image was read whole and every --fail-under gate passed;
    1 when an image failed, a layer held entries not indexed, or a gate failed (the report, --json
    and --html are still complete); 2 when nothing was audited because the command itself is wrong
    (a bad --fail-under, --platform or --html folder)."""
    _configure_registries(ca_cert, insecure)
    from rich.markup import escape

    from ..measure.audit import check_gates, findings, load, parse_gates
    from ..oci.images import parse_platform
    from ..oci.layerindex import Cache
    from .report import audit_html, audit_messages, audit_tables, console

    thresholds = parse_gates(gates)
    parse_platform(platform)
    if html_path is not None and not html_path.resolve().parent.is_dir():
        raise UserError(f"--html {html_path}: the folder {html_path.parent} does not exist")   # before the work
    out = console()
    if out.is_terminal and not as_json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        with Progress(TextColumn("indexing layers"), BarColumn(), MofNCompleteColumn(), console=out,
                      transient=True) as bars:
            task = bars.add_task("layers", total=None)
            doc = findings(load(list(images), platform=platform, cache=Cache(), processes=processes,
                                progress=lambda r, total: bars.update(task, total=total,
                                                                      advance=0 if r is None else 1)))
    else:
        doc = findings(load(list(images), platform=platform, cache=Cache(), processes=processes))
    failed = check_gates(doc, thresholds)
    for line in audit_messages(doc):   # on stderr whatever the output form: --json stays parseable
        print(line, file=sys.stderr)
    if html_path:
        try:
            write_atomically(html_path, audit_html(doc))
        except OSError as e:
            raise UserError(f"--html {html_path}: cannot write it ({e.strerror or e})") from None
    if as_json:
        sys.stdout.write(json_text(doc | {"gates_failed": failed}))
    else:
        for part in audit_tables(doc):
            out.print(part)
        for line in failed:
            out.print(f"[red]below threshold[/]: {escape(line)}")
    sys.exit(1 if failed or any(img["error"] or img["problems"] for img in doc["images"]) else 0)


@app.command("verify")
@click.argument("originals", nargs=-1, type=click.Path(path_type=Path))
@click.option("--against", "import_dir", type=click.Path(path_type=Path), required=True,
              help="The folder `layerwise import --refactor-to` wrote (its import.json).")
@click.option("--no-cache", is_flag=True, help="Build every step anew: images cannot be equal by reusing "
              "the same cached layers, only by their contents.")
@build_opts
@JSON_OPT
def verify_command(originals: tuple[Path, ...], import_dir: Path, no_cache: bool, builder: str, network: str,
                   allowed: tuple[str, ...], as_json: bool) -> None:
    """Build each ORIGINAL Dockerfile (or those in ORIGINAL folders; default: every app) and its
    refactored version, and prove them equivalent: same files, same runtime config."""
    from ..importing.verify import apps_for, load_import, verify_dict

    only = apps_for(load_import(import_dir), list(originals))   # bad input ends here, before any build
    results, measured = _verify(import_dir, only, no_cache, as_json, _build_options(builder, network), allowed)
    if as_json:
        sys.stdout.write(json_text(verify_dict(results, import_dir) | measured))
    else:
        _print_verify(results, measured)
    sys.exit(0 if all(r.equivalent for r in results) else 1)


def _verify(import_dir: Path, only: list[str] | None, no_cache: bool, quiet: bool, options=None,
            allowed: tuple[str, ...] = ()) -> tuple[list, dict]:
    """verify_and_measure with the progress shown on a terminal."""
    from ..importing.verify import verify_and_measure
    from ..oci.policy import RegistryPolicy
    from .report import PlainProgress, RichProgress, console

    out = console()
    progress = None if quiet else (RichProgress(out) if out.is_terminal else PlainProgress(out))
    with progress if isinstance(progress, RichProgress) else contextlib.nullcontext():
        return verify_and_measure(import_dir, only=only, no_cache=no_cache, progress=progress, options=options,
                                  policy=RegistryPolicy.resolve(allowed))


def _print_verify(results, measured: dict) -> None:
    from ..units import format_size
    from .report import console, verify_table
    out = console()
    out.print(verify_table(results))
    for r in results:
        if r.log_tail:
            out.print(f"[red]{r.app}[/]: last lines of the failed build:")
            out.print("\n".join("  " + line for line in r.log_tail), highlight=False, markup=False)
    same = sum(r.equivalent for r in results)
    out.print(f"{same} of {len(results)} apps equivalent")
    if measured["measured_base_bytes"]:
        out.print(f"measured: base images built {len(measured['measured_base_bytes'])}, their own layers "
                  f"{format_size(sum(measured['measured_base_bytes'].values()))} (uncompressed); saved on a host "
                  f"running every app: {format_size(measured['measured_saving'])}")


@app.command("import")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "stack_path", type=click.Path(path_type=Path),
              help="Write a stack file here (final stages that are one chain on one base).")
@click.option("--refactor-to", "refactor_dir", type=click.Path(path_type=Path),
              help="Write base images and rewritten Dockerfiles here (import.json says how to build them).")
@click.option("--context", "context", type=click.Path(path_type=Path),
              help="Build context of every Dockerfile (default: each Dockerfile's folder).")
@click.option("--registry", default="localhost:5000", show_default=True, help="Registry the base images are named for.")
@click.option("--project", default="imported", show_default=True, help="Prefix of the base images' names.")
@click.option("--base", "stack_base", help="With -o: the FROM image of the apps to put in the stack file.")
@click.option("--name", "renames", multiple=True, metavar="OLD=NEW",
              help="Call the base image import names OLD (e.g. go-builder) NEW instead (repeatable).")
@click.option("--reorder", is_flag=True,
              help="Apply the proposed layer swaps, kept only if verify proves the swapped apps equal (needs "
                   "--refactor-to).")
@click.option("--force", is_flag=True, help="Replace a --refactor-to folder that is not a layerwise output.")
@click.option("--verify", "then_verify", is_flag=True,
              help="Then build every original and refactored image and prove them equivalent (needs --refactor-to).")
@build_opts
@JSON_OPT
def import_command(inputs: tuple[Path, ...], stack_path: Path | None, refactor_dir: Path | None,
                   context: Path | None, registry: str, project: str, stack_base: str | None,
                   renames: tuple[str, ...], reorder: bool, force: bool, then_verify: bool, builder: str, network: str,
                   allowed: tuple[str, ...], as_json: bool) -> None:
    """Turn Dockerfiles (or folders of them) into a family: shared prefixes become base images.

    A Dockerfile that cannot be imported is reported and the others go on (exit 2 only when
    none could be)."""
    import re

    from ..importing.importer import import_family, summary
    from ..importing.refactor import stack_text, write_refactored
    from ..plan.spec import REPOSITORY
    from .report import console, import_summary_line, import_tables
    if not re.match(REPOSITORY, project):
        raise UserError(f"--project {project!r}: use lower-case letters, digits, '.', '_', '-' and '/'")
    if (then_verify or reorder) and refactor_dir is None:
        raise UserError(f"--{'verify' if then_verify else 'reorder'} builds what --refactor-to writes: "
                        "give --refactor-to DIR too")
    bad = [r for r in renames if "=" not in r]
    if bad:
        raise UserError(f"--name {bad[0]}: write --name OLD=NEW")
    names = dict(r.split("=", 1) for r in renames)
    family = import_family(list(inputs), context=context, registry=registry.rstrip("/"), project=project,
                           names=names, reorder=reorder)
    for error in family.errors:
        print(f"layerwise: error: {error}", file=sys.stderr)
    if not family.dockerfiles:
        sys.exit(2)
    notes = []
    if stack_path is not None:
        text, notes = stack_text(family, stack_path, stack_base)
        write_atomically(stack_path, text)
    if refactor_dir is not None:
        write_refactored(family, refactor_dir, force=force)
    reorder_note = None
    if reorder and family.swaps:   # applied for good only once verify proves the swapped apps equal
        swapped = sorted({a for w in family.swaps for a in w.apps})
        checked, _ = _verify(refactor_dir, swapped, False, as_json, _build_options(builder, network), allowed)
        if not all(r.equivalent for r in checked):
            family = import_family(list(inputs), context=context, registry=registry.rstrip("/"), project=project,
                                   names=names)
            write_refactored(family, refactor_dir)
            reorder_note = ("--reorder: verify found the swapped apps different (or could not build them); "
                            "the swaps were not applied")
    doc = summary(family)
    doc["reorder_note"] = reorder_note
    doc["stack_file_notes"] = notes
    results, measured = (_verify(refactor_dir, None, False, as_json, _build_options(builder, network), allowed)
                         if then_verify else (None, {}))
    code = 0 if (results is None or all(r.equivalent for r in results)) and not reorder_note else 1
    if as_json:
        if results is not None:
            from ..importing.verify import verify_dict
            doc["verify"] = verify_dict(results, refactor_dir) | measured
        sys.stdout.write(json_text(doc))
        sys.exit(code)
    out = console()
    for table in import_tables(doc):
        out.print(table)
    out.print(import_summary_line(doc))
    if reorder_note:
        out.print(reorder_note)
    if stack_path is not None:
        left_out = f"; {len(notes)} Dockerfiles left out, each with the reason at its top" if notes else ""
        out.print(f"wrote {stack_path}: {len(family.dockerfiles) - len(notes)} apps{left_out}")
    if refactor_dir is not None:
        out.print(f"wrote {refactor_dir}/ (bases/, apps/, import.json)")
    if results is not None:
        _print_verify(results, measured)
    sys.exit(code)


@app.group()
def bench() -> None:
    """Measure what the layering saves, for real."""


@bench.command("pull")
@STACK_ARG
@click.option("--bandwidth", default="100Mbit", show_default=True,
              help="The link hosts pull through (a throttling proxy on loopback).")
@click.option("--host-kind", "host_kinds", multiple=True,
              type=click.Choice(["docker", "docker-containerd", "containerd", "both", "all"]),
              help="Which kind of host to pull on; repeatable (default: all three; both: docker and "
                   "containerd). Kinds this machine cannot run are reported, not measured.")
@click.option("--no-updates", is_flag=True, help="Only cold and warm pulls, no update per category.")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 20),
              help="Pulls per case; the case's time is their median.")
@click.option("--one-order", is_flag=True, help="Only the order the stack file asks for, not also the "
              "recommended one.")
@ORDER_OPT
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Folder for the table, JSON and chart (default: bench-pull/ beside the stack file).")
@build_opts
@JSON_OPT
def bench_pull_command(stack: Path, bandwidth: str, host_kinds: tuple[str, ...], no_updates: bool, runs: int,
                       one_order: bool, order: str | None, output: Path | None, builder: str, network: str,
                       allowed: tuple[str, ...], as_json: bool) -> None:
    """Real pulls on hosts of each kind (Docker Engine, Docker Engine on the containerd image store,
    containerd): cold vs warm, layered vs flat, after an update of each category, in the stack
    file's order and in the recommended one; measured bytes and seconds beside the cost model's.
    STACK may also be a folder written by `layerwise import --refactor-to` (flat = its originals)."""
    from ..plan.cost import ALL_HOST_KINDS
    from ..units import parse_bandwidth
    try:
        bps = parse_bandwidth(bandwidth)
    except ValueError as e:
        raise UserError(f"--bandwidth: {e}") from None
    groups = {"both": ("docker", "containerd"), "all": ALL_HOST_KINDS}
    kinds = list(dict.fromkeys(k for h in (host_kinds or ("all",)) for k in groups.get(h, (h,))))
    report = run_bench_pull(stack, bps, kinds, updates=not no_updates, output=output, quiet=as_json,
                            options=_build_options(builder, network), allowed=allowed, runs=runs,
                            orders=not one_order, order=order)
    if as_json:
        sys.stdout.write(json_text(report.to_dict()))


def run_bench_pull(stack: Path, bps: float, kinds: list[str], *, updates: bool, output: Path | None,
                   quiet: bool = False, options=None, allowed: tuple[str, ...] = (), runs: int = 3,
                   orders: bool = True, order: str | None = None):
    from ..family.loader import load_family
    from ..measure.bench import bench_pull, loopback_policy
    from .report import bench_summary, bench_table, console

    out = console()
    say = (lambda line: None) if quiet else (lambda line: out.print(line, highlight=False, markup=False))
    loaded = load_family(stack)
    report = bench_pull(loaded.path, bps, kinds, updates=updates, say=say,
                        policy=loopback_policy(loaded, allowed), options=options, runs=runs, orders=orders,
                        order=order)
    folder = output or loaded.root / "bench-pull"
    _write_bench_files(report, folder, bps)
    if not quiet:
        out.print(bench_table(report))
        for line in bench_summary(report):
            out.print(line, highlight=False, markup=False)
        out.print(f"table, JSON and chart in {folder}/")
    return report


def _write_bench_files(report, folder: Path, bandwidth_bps: float) -> None:
    """bench-pull.txt (the table), .json and .svg (seconds per case) in folder, each atomically."""
    import io

    from rich.console import Console

    from .report import bar_chart_svg, bench_summary, bench_table

    folder.mkdir(parents=True, exist_ok=True)
    text = Console(width=140, record=True, file=io.StringIO(), color_system=None)
    text.print(bench_table(report))
    for line in bench_summary(report):
        text.print(line, highlight=False, markup=False)
    write_atomically(folder / "bench-pull.txt", text.export_text())
    write_atomically(folder / "bench-pull.json", json_text(report.to_dict()))
    kinds = sorted({c.host_kind for c in report.cases})
    labels = [f"{c.family} {c.name}" for c in report.cases if kinds and c.host_kind == kinds[0]]
    series = {k: [c.seconds for c in report.cases if c.host_kind == k] for k in kinds}
    write_atomically(folder / "bench-pull.svg", bar_chart_svg(
        f"pull time through {bandwidth_bps / 1e6:g} Mbit/s", labels, series, unit="seconds"))


@app.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), default="demo-out", show_default=True,
              help="Where to generate the family.")
@click.option("--bandwidth", default="200Mbit", show_default=True,
              help="The link the demo's real pulls go through.")
@build_opts
def demo(output: Path, bandwidth: str, builder: str, network: str, allowed: tuple[str, ...]) -> None:
    """The seed article's App1/App2 example end to end: plan, generate, build, push, run, then real
    pulls warm vs cold on a Docker Engine host, layered vs flat."""
    from .demo import run_demo

    sys.exit(run_demo(output, bandwidth, _build_options(builder, network), allowed))


_stopped_by: list[int] = []     # the signal that interrupted this run, once one has


def _interrupt(signum: int, frame) -> None:
    """SIGINT and SIGTERM both raise KeyboardInterrupt where the program is, so one clean-up path
    (every `finally` and `except BaseException`) serves both. Signals arriving during that clean-up
    are ignored: it runs to its end."""
    if _stopped_by:
        return
    _stopped_by.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _exit_interrupted() -> None:
    signum = _stopped_by[0] if _stopped_by else signal.SIGINT
    print(f"layerwise: interrupted by {signal.Signals(signum).name}; a rerun goes on from what was finished",
          file=sys.stderr)
    sys.exit(128 + signum)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        app.main(prog_name="layerwise", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _exit_interrupted()
    except UserError as e:
        if _stopped_by:      # an error the interruption caused on its way out
            _exit_interrupted()
        print(f"layerwise: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
