"""The `layerwise` command: thin commands over spec → planner → cost / generate → report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .cost import summarize
from .errors import UserError
from .generate import generate as generate_family
from .planner import build_plan
from .report import console, cost_dict, cost_tables, plan_tree, size_note
from .spec import load_stack

STACK_ARG = click.argument("stack", type=click.Path(path_type=Path), default="layerwise.yaml")
JSON_OPT = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="layerwise")
def app() -> None:
    """Plan, build and audit families of Docker images that share their heavy layers."""
SEED_STACK = Path(__file__).resolve().parents[2] / "examples" / "seed" / "layerwise.yaml"


def _print_plan(plan, summary) -> None:
    out = console()
    out.print(plan_tree(plan))
    out.print()
    for table in cost_tables(summary):
        out.print(table)
    out.print(f"[dim]{size_note(summary)}[/]")


@app.command()
@STACK_ARG
@JSON_OPT
def plan(stack: Path, as_json: bool) -> None:
    """Show the tree of images for STACK (default layerwise.yaml) and what it saves."""
    the_plan = build_plan(load_stack(stack))
    summary = summarize(the_plan)
    if as_json:
        doc = {"plan": the_plan.to_dict(), "cost": cost_dict(summary)}
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        _print_plan(the_plan, summary)


@app.command()
@STACK_ARG
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Folder to write the family into.")
@click.option("--force", is_flag=True, help="Replace a folder that is not a layerwise output.")
def generate(stack: Path, output: Path, force: bool) -> None:
    """Write one folder per image (Dockerfile + context), plan.json, docker-bake.hcl, CODEOWNERS."""
    loaded = load_stack(stack)
    the_plan = build_plan(loaded)
    out = generate_family(the_plan, loaded, output, force=force)
    console().print(f"wrote {len(the_plan.images)} images to {out}")


@app.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), default="demo-out", show_default=True,
              help="Where to generate the family.")
def demo(output: Path) -> None:
    """The seed article's App1/App2 example end to end: plan, generate, tree and savings."""
    if not SEED_STACK.exists():
        raise UserError("the seed example is not here (layerwise demo runs from a checkout of "
                        "the repository)", SEED_STACK)
    missing = [p for p in ("models/dust.model",) if not (SEED_STACK.parent / p).exists()]
    if missing or not list((SEED_STACK.parent / "wheels").glob("*.whl")):
        raise UserError("the seed example is not prepared; run: python3 examples/seed/prepare.py",
                        SEED_STACK.parent)
    loaded = load_stack(SEED_STACK)
    the_plan = build_plan(loaded)
    out = generate_family(the_plan, loaded, output)
    out_console = console()
    out_console.print(f"[bold]The seed's App1/App2 family[/] ({SEED_STACK})")
    _print_plan(the_plan, summarize(the_plan))
    out_console.print(f"\nGenerated {len(the_plan.images)} image folders, docker-bake.hcl and CODEOWNERS "
                      f"in {out}")


def main() -> None:
    try:
        app.main(prog_name="layerwise", standalone_mode=False)
    except UserError as e:
        print(f"layerwise: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        print("layerwise: interrupted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
