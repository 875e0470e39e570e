"""Rendering only: the plan as a tree and the cost summary as tables (terminal) or plain data (JSON)."""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from .cost import CostSummary
from .model import ImageNode, Plan
from .units import format_size


def console(stderr: bool = False) -> Console:
    # A fixed width off a terminal keeps piped output readable and stable.
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=120, color_system=None)


def _image_label(img: ImageNode) -> str:
    apps = ", ".join(img.apps)
    kind = "app" if img.kind == "app" else f"base of {apps}"
    size = sum(s.size or 0 for s in img.layers)
    return (f"[bold]{img.key}:{img.tag}[/]  [cyan]owner {img.owner}[/]  {kind}  "
            f"{format_size(size)}  [dim]{img.fingerprint_tag}[/]")


def _step_line(step) -> str:
    size = f"{format_size(step.size)} ({step.size_source})" if step.creates_layer else "no layer"
    return f"[magenta]{step.category:<10}[/] {step.short(64):<65} [dim]{size}[/]"


def plan_tree(plan: Plan) -> Tree:
    tree = Tree(f"[bold]{plan.base}[/]  (OS base)")

    def add(branch: Tree, img: ImageNode) -> None:
        node = branch.add(_image_label(img))
        for step in img.steps:
            node.add(_step_line(step), guide_style="dim")
        for child in plan.children(img.key):
            add(node, child)

    for root in plan.children(None):
        add(tree, root)
    return tree


def _saved(flat: int, planned: int) -> str:
    return f"{100 * (flat - planned) / flat:.0f}%" if flat else "-"


def cost_tables(summary: CostSummary) -> list[Table]:
    tables = []
    for sc in summary.scenarios:
        t = Table(title=f"{sc.name} ({len(sc.hosts)} host{'s' if len(sc.hosts) != 1 else ''}): bytes pulled",
                  title_justify="left")
        for col, just in (("case", "left"), ("/month", "right"), ("flat", "right"),
                          ("planned", "right"), ("saved", "right"), ("floor", "right")):
            t.add_column(col, justify=just)
        for r in sc.rows:
            t.add_row(r.label, f"{r.rate:g}" if r.rate else "", format_size(r.flat),
                      format_size(r.planned), _saved(r.flat, r.planned), format_size(r.floor))
        flat, planned, floor = sc.monthly("flat"), sc.monthly("planned"), sc.monthly("floor")
        t.add_section()
        t.add_row("[bold]updates per month[/]", "", format_size(flat), format_size(planned),
                  _saved(flat, planned), format_size(floor))
        tables.append(t)
    return tables


def size_note(summary: CostSummary) -> str:
    parts = ", ".join(f"{n} {src}" for src, n in summary.size_sources.items())
    note = f"layer sizes: {parts}"
    if summary.unknown_layers:
        note += f" ({summary.unknown_layers} unknown, counted as 0: add size: hints)"
    return note + ". Flat = every app its own build from the OS base; floor = only the changed content."


def cost_dict(summary: CostSummary) -> dict:
    return {
        "size_sources": summary.size_sources,
        "unknown_layers": summary.unknown_layers,
        "scenarios": [
            {"name": sc.name, "hosts": [list(h) for h in sc.hosts],
             "rows": [asdict(r) for r in sc.rows],
             "monthly": {k: sc.monthly(k) for k in ("flat", "planned", "floor")}}
            for sc in summary.scenarios
        ],
    }
