"""Rendering only: the plan as a tree and the cost summary as tables (terminal) or plain data (JSON)."""

from __future__ import annotations

import re
import threading

from rich.console import Console
from rich.markup import escape as markup_escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..plan.cost import CostSummary, EngineCosts
from ..plan.model import ImageNode, Plan
from ..units import format_size


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


# Up to this many steps in all, the tree shows them under their images by default: a few screens.
# Beyond it the steps would bury the tree (100 apps of 100 steps: 10,000 lines), so only the images
# are shown unless `--steps` asks for them.
STEPS_SHOWN_UP_TO = 200


def plan_tree(plan: Plan, steps: bool | None = None) -> Tree:
    """The images as a tree, each with its steps when `steps` (None: for small families only)."""
    if steps is None:
        steps = sum(len(img.steps) for img in plan.images) <= STEPS_SHOWN_UP_TO
    title = f"[bold]{plan.base}[/]  (OS base)"
    if not steps:
        title += f"  [dim]{len(plan.images)} images; steps with --steps[/]"
    tree = Tree(title)
    children: dict[str | None, list[ImageNode]] = {}
    for img in plan.images:
        children.setdefault(img.parent, []).append(img)
    pending = [(tree, img) for img in reversed(children.get(None, []))]
    while pending:      # depth first, without recursion: a tree may be deep
        branch, img = pending.pop()
        node = branch.add(_image_label(img))
        if steps:
            for step in img.steps:
                node.add(_step_line(step), guide_style="dim")
        pending += [(node, child) for child in reversed(children.get(img.key, []))]
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


def order_tables(summary) -> list:
    """`plan`: the stack file's order of categories beside the recommended one and the floor, per
    host kind (one host running every app) and, with a fleet, for all its hosts; which hosts the
    order was judged on, and why each category moved."""
    from ..units import format_seconds
    out: list = []
    for label, order in summary.orders.items():
        mark = "  [bold](applied)[/]" if label == summary.applied else ""
        out.append(f"{label + ' order:':<20} {' → '.join(order)}{mark}")
    out.append(markup_escape(f"{'judged on:':<20} {judged_on_text(summary.judged_on)}"))
    labels = list(summary.orders)
    t = Table(title=f"updates per month, one host running every app, {summary.bandwidth_bps / 1e6:g} Mbit/s"
                    f"{' (and every host of the fleet)' if summary.fleet else ''}: bytes / time",
              title_justify="left")
    t.add_column("host kind")
    for label in labels:
        t.add_column(label, justify="right")
    t.add_column("floor", justify="right")
    def cell(e, floor) -> str:
        ratio = (f" ({e.bytes / floor.bytes:.2f}×, {e.seconds / floor.seconds:.2f}×)"
                 if floor.bytes and floor.seconds else "")
        return f"{format_size(e.bytes)} / {format_seconds(e.seconds)}{ratio}"

    for kind, by in summary.monthly.items():
        floor = summary.floor[kind]
        t.add_row(kind, *(cell(by[l], floor) for l in labels),
                  f"{format_size(floor.bytes)} / {format_seconds(floor.seconds)}")
    if summary.fleet:
        floor = summary.fleet["floor"]
        hosts = sum(g["count"] for g in summary.judged_on["groups"])
        t.add_row(markup_escape(f"fleet {summary.judged_on['fleet']} ({hosts} hosts)"),
                  *(cell(summary.fleet[l], floor) for l in labels),
                  f"{format_size(floor.bytes)} / {format_seconds(floor.seconds)}")
    out.append(t)
    patched = {kind: "  ".join(f"{by[l] * 100:.1f}%" for l in labels) for kind, by in summary.security.items()}
    out.append(f"[dim]an update of {summary.patched} as a share of a cold pull ({', '.join(labels)}): "
               + "; ".join(f"{k} {v}" for k, v in patched.items()) + "[/]")
    for name, why in summary.reasons.items():
        out.append(f"  {name}: {why}")
    def costs(engine: dict) -> str:
        return "; ".join(sorted(f"{k}: {c.describe()}" for k, c in engine.items()))

    fleet_costs = ""
    if summary.fleet:
        same = all(summary.engine.get(k) == c for k, c in summary.fleet_engine.items())
        fleet_costs = (" The fleet's row: the same" if same else
                       f" The fleet's row, as simulate takes them: {costs(summary.fleet_engine)}")
        fleet_costs += "; the order is judged with the fleet file's costs, else assumed ones."
    out.append(f"[dim]engine costs: {costs(summary.engine)}.{fleet_costs} Apply the recommended order with "
               "order: optimize in the stack file or --order optimize.[/]")
    return out


def judged_on_text(judged: dict) -> str:
    """`OrderSummary.judged_on` in words: the fleet's groups, or the reference hosts."""
    if "fleet" not in judged:
        return (f"{judged['reference']} ({', '.join(judged['host_kinds'])}), "
                f"{judged['bandwidth_bps'] / 1e6:g} Mbit/s, assumed engine costs")
    groups = ", ".join(f"{g['name']} {g['count']}× {g['host_kind']}" for g in judged["groups"])
    return f"the fleet {judged['fleet']}: {groups}"


def size_note(summary: CostSummary) -> str:
    parts = ", ".join(f"{n} {src}" for src, n in summary.size_sources.items())
    note = f"layer sizes: {parts}"
    if summary.unknown_layers:
        note += f" ({summary.unknown_layers} unknown, counted as 0: add size: hints)"
    return note + ". Flat = every app its own build from the OS base; floor = only the changed content."


# ----------------------------------------------------------------------------- build progress

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")


class PlainProgress:
    """Off a terminal: one line per build step and per phase, nothing that redraws."""

    def __init__(self, out: Console):
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, key: str, phase: str, event: dict) -> None:
        line = None
        if phase == "build" and "stream" in event:
            m = _STEP.match(event["stream"].strip())
            if m:
                line = f"{key}: step {m.group(1)}/{m.group(2)}: {m.group(3)[:90]}"
        elif phase in ("build", "push", "pull") and "status" in event and "id" not in event:
            line = f"{key}: {phase}: {event['status']}"
        elif phase == "failed":
            line = f"{key}: FAILED: {event.get('error')}"
        elif phase == "done":
            line = f"{key}: {event['status']}"
        if line:
            with self._lock:
                self.out.print(line, highlight=False, markup=False)


class RichProgress:
    """On a terminal: a bar per image, build steps then push bytes."""

    def __init__(self, out: Console):
        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.fields[detail]}"), console=out, transient=False)
        self.tasks: dict[str, int] = {}
        self.pushed: dict[str, dict[str, tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        self.bars.__exit__(*exc)

    def _task(self, key: str) -> int:
        if key not in self.tasks:
            self.tasks[key] = self.bars.add_task(f"{key:<32}", total=None, detail="")
        return self.tasks[key]

    def __call__(self, key: str, phase: str, event: dict) -> None:
        with self._lock:
            task = self._task(key)
            if phase == "build" and "stream" in event:
                m = _STEP.match(event["stream"].strip())
                if m:
                    self.bars.update(task, completed=int(m.group(1)) - 1, total=int(m.group(2)),
                                     detail=f"step {m.group(1)}/{m.group(2)} {m.group(3)[:40]}")
            elif phase == "push" and event.get("id") and "progressDetail" in event:
                detail = event["progressDetail"] or {}
                layers = self.pushed.setdefault(key, {})
                if detail.get("total"):
                    layers[event["id"]] = (detail.get("current", 0), detail["total"])
                done = sum(c for c, _ in layers.values())
                total = sum(t for _, t in layers.values()) or None
                self.bars.update(task, completed=done, total=total,
                                 detail=f"push {format_size(done)} / {format_size(total)}")
            elif phase == "failed":
                self.bars.update(task, detail=f"[red]failed[/]: {str(event.get('error'))[:60]}")
            elif phase == "done":
                self.bars.update(task, completed=1, total=1, detail=event["status"])
            elif "status" in event and "id" not in event:
                self.bars.update(task, detail=f"{phase}: {event['status'][:50]}")


def build_table(results, decisions_by_key: dict) -> Table:
    t = Table(title="build", title_justify="left")
    for col, just in (("image", "left"), ("result", "left"), ("why", "left"), ("seconds", "right"),
                      ("new layers", "right")):
        t.add_column(col, justify=just)
    colors = {"built": "green", "skipped": "dim", "failed": "red", "not attempted": "yellow"}
    for r in results:
        why = r.reason if not r.error else f"{r.reason} — {r.error}"
        t.add_row(r.key, f"[{colors.get(r.status, 'white')}]{r.status}[/]", why[:80],
                  f"{r.seconds:.1f}" if r.seconds else "", format_size(r.new_bytes) if r.new_bytes else "")
    return t


# ----------------------------------------------------------------------------- simulate

def _est(e, with_time: bool = True) -> str:
    from ..units import format_seconds
    return f"{format_size(e.bytes)} / {format_seconds(e.seconds)}" if with_time else format_size(e.bytes)


def simulate_tables(results, labels: list[str]) -> list[Table]:
    from ..units import format_seconds
    tables = []
    for part in ("cold", "monthly"):
        title = ("cold start of one host" if part == "cold" else "updates per month, one host") + \
                ": bytes / time"
        t = Table(title=title, title_justify="left")
        t.add_column("group (hosts × apps)")
        t.add_column("kind, link")
        for label in labels:
            t.add_column(label, justify="right")
        t.add_column("floor", justify="right")
        for r in results:
            est = getattr(r, part)
            floor = (format_size(r.floor_cold) if part == "cold"
                     else f"{format_size(r.floor_monthly)} / {format_seconds(r.floor_seconds)}")
            t.add_row(f"{r.name} ({r.count} × {', '.join(r.apps)})",
                      f"{r.host_kind}, {r.bandwidth_bps / 1e6:g} Mbit/s",
                      *(_est(est[l]) for l in labels), floor)
        t.add_section()
        t.add_row("[bold]whole fleet[/] (bytes, host time)", "",
                  *(f"{format_size(sum(getattr(r, part)[l].bytes * r.count for r in results))} / "
                    f"{format_seconds(sum(getattr(r, part)[l].seconds * r.count for r in results))}"
                    for l in labels),
                  format_size(sum((r.floor_cold if part == 'cold' else r.floor_monthly) * r.count
                                  for r in results)))
        tables.append(t)
    return tables


def bar_chart_svg(title: str, groups: list[str], series: dict[str, list[float]], unit: str = "bytes") -> str:
    """A grouped bar chart as a small standalone SVG (no plotting library needed)."""
    from xml.sax.saxutils import escape
    colors = ["#8c8c8c", "#2b7bba", "#e08a2b", "#3a9c4a", "#b04a8c"]
    rotate = len(groups) > 3 or max((len(g) for g in groups), default=0) > 18   # long labels slant
    width = max(760, 110 + 80 * len(groups))
    height, left, bottom, top = (470, 90, 170, 40) if rotate else (360, 90, 60, 40)
    plot_w, plot_h = width - left - 20, height - top - bottom
    peak = max((v for vs in series.values() for v in vs), default=0) or 1
    n = len(series)
    slot = plot_w / max(1, len(groups))
    bar = slot * 0.8 / max(1, n)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>']
    for tick in range(5):
        v = peak * tick / 4
        y = top + plot_h - plot_h * tick / 4
        label = format_size(v) if unit == "bytes" else f"{v:.1f} s"
        out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<line x1="{left}" y1="{y}" x2="{left + plot_w}" y2="{y}" stroke="#ddd"/>')
    for gi, group in enumerate(groups):
        x0 = left + gi * slot + slot * 0.1
        for si, values in enumerate(series.values()):
            h = plot_h * values[gi] / peak
            out.append(f'<rect x="{x0 + si * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar * 0.9:.1f}" '
                       f'height="{h:.1f}" fill="{colors[si % len(colors)]}"/>')
        x, y = x0 + slot * 0.4, top + plot_h + 16
        slant = f' transform="rotate(-35 {x:.1f} {y})"' if rotate else ""
        out.append(f'<text x="{x:.1f}" y="{y}" text-anchor="{"end" if rotate else "middle"}"{slant}>'
                   f'{escape(group)}</text>')
    for si, name in enumerate(series):
        x = left + si * 130
        out.append(f'<rect x="{x}" y="{height - 22}" width="12" height="12" fill="{colors[si % len(colors)]}"/>')
        out.append(f'<text x="{x + 16}" y="{height - 12}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- bench pull

def bench_table(report) -> Table:
    from ..units import format_seconds
    t = Table(title=f"real pulls through {report.bandwidth_bps / 1e6:g} Mbit/s (time: median of the runs; "
                    "predicted time: the time model with the costs fitted below)", title_justify="left")
    for col, just in (("host", "left"), ("family", "left"), ("case", "left"), ("time", "right"),
                      ("predicted", "right"), ("error", "right"), ("measured", "right"), ("predicted", "right"),
                      ("error", "right"), ("layers", "right"), ("unpacked", "right"), ("changed content", "right")):
        t.add_column(col, justify=just)
    for c in report.cases:
        t.add_row(c.host_kind, c.family, c.name, format_seconds(c.seconds), format_seconds(c.predicted_seconds),
                  f"{100 * c.seconds_error:+.1f}%", format_size(c.measured),
                  format_size(c.predicted), f"{100 * c.error:+.2f}%", str(c.layers), format_size(c.unpacked),
                  format_size(c.floor) if c.floor is not None else "")
    return t


def bench_summary(report) -> list[str]:
    """The seed's comparison: warm vs cold, layered vs flat, per host kind; the fitted costs; the
    goal figures per order (monthly update bytes and seconds against the floor, the patch)."""
    from ..units import format_seconds
    lines = []
    for kind in sorted({c.host_kind for c in report.cases}):
        cases = {(c.variant, c.name.split()[0]): c for c in report.cases if c.host_kind == kind and c.order == "stack"}
        for variant in ("layered", "flat"):
            cold, warm = cases.get((variant, "cold")), cases.get((variant, "warm"))
            if cold and warm and cold.seconds:
                lines.append(f"{kind}, {variant}: warm pull {warm.seconds:.1f} s vs cold {cold.seconds:.1f} s "
                             f"(ratio {warm.seconds / cold.seconds:.3f}; bytes {format_size(warm.measured)} "
                             f"vs {format_size(cold.measured)})")
    for kind, costs in sorted(report.engine_costs.items()):
        lines.append(f"{kind}: {EngineCosts.of(costs, 'fitted to these pulls').describe()}; "
                     "`layerwise simulate` uses it")
        errors = [abs(c.seconds_error) for c in report.cases if c.host_kind == kind]
        if errors:
            lines.append(f"{kind}: predicted seconds within {100 * max(errors):.1f}% of measured in every case")
    for kind, by_order in report.goals().items():
        for order, g in by_order.items():
            b, s, p = g["monthly_bytes"], g["monthly_seconds"], g["patch_of_cold"]
            line = (f"{kind}, {order} order: monthly updates {format_size(b['measured'])} measured "
                    f"({format_size(b['predicted'])} predicted) vs floor {format_size(b['floor'])}"
                    f" = {b['measured'] / b['floor']:.2f}× floor" if b["floor"] else "")
            line += (f"; {format_seconds(s['measured'])} measured ({format_seconds(s['predicted'])} predicted)"
                     + (f" vs the floor's {format_seconds(s['floor_measured'])} measured "
                        f"({format_seconds(s['floor_predicted'])} predicted) = "
                        f"{s['measured'] / s['floor_measured']:.2f}× floor" if s.get("floor_measured") else "")
                     + f"; unpacking {format_seconds(s['unpack'])} predicted vs the floor's "
                       f"{format_seconds(s['floor_unpack'])}")
            if p:
                line += f"; update of {p['category']} = {100 * p['measured']:.2f}% of a cold pull"
            lines.append(line)
    for kind, why in report.not_run.items():
        lines.append(f"{kind}: not run: {why}")
    return lines


# ----------------------------------------------------------------------------- audit

HOST_NAMES = {"docker": "Docker Engine", "containerd": "containerd"}
PROBLEMS_SHOWN = 20


def _problem_rows(doc: dict) -> list[tuple[str, str, str]]:
    """(image, layer, what) for every entry reported instead of indexed."""
    return [(img["name"], f"{p['layer']}/{img['layers']} ({p['digest'][:19]})", p["problem"])
            for img in doc["images"] for p in img.get("problems", [])]


def audit_messages(doc: dict) -> list[str]:
    """One line per image that could not be audited and per entry reported instead of indexed,
    each naming the image and the layer."""
    lines = []
    for img in doc["images"]:
        if img["error"]:
            lines.append(f"layerwise: error: {img['error']}")
        for p in img.get("problems", []):
            lines.append(f"layerwise: warning: layer {p['layer']}/{img['layers']} ({p['digest']}) of image "
                         f"{img['name']}: {p['problem']}")
    return lines


def _base_label(base: dict) -> str:
    plural = "s" if base["layers"] != 1 else ""
    return f"from layer {base['from_layer']}, {base['layers']} layer{plural}, {len(base['used_by'])} images"


def _tree_tables(doc: dict) -> list:
    """The recommended tree's bases with what an update of each costs, then the cold pull: today
    against the tree, per host kind."""
    tree, out = doc["recommended_tree"], []
    arrow = lambda pair: f"{format_size(pair['today'])} → {format_size(pair['tree'])}"
    if tree["bases"]:
        t = Table(title="recommended tree: shared base images, and the bytes a host holding all images "
                        "pulls when one changes (today → with the tree)", title_justify="left")
        for col, just in (("used by", "left"), ("from layer", "right"), ("layers", "right"), ("bytes", "right"),
                          ("update, Docker Engine", "right"), ("update, containerd", "right")):
            t.add_column(col, justify=just)
        for b in tree["bases"]:
            t.add_row(Text(", ".join(b["used_by"])), str(b["from_layer"]), str(b["layers"]), format_size(b["bytes"]),
                      arrow(b["update"]["docker"]), arrow(b["update"]["containerd"]))
        out.append(t)
    t = Table(title="cold pull of a host holding all these images", title_justify="left")
    for col in ("host", "as they are", "recommended tree", "saved", "identical content as one layer"):
        t.add_column(col, justify="left" if col == "host" else "right")
    for kind, pair in tree["cold_pull_by_host"].items():
        t.add_row(HOST_NAMES.get(kind, kind), format_size(pair["today"]), format_size(pair["tree"]),
                  format_size(pair["today"] - pair["tree"]), format_size(doc["cold_pull"]["floor"]))
    out.append(t)
    return out


def audit_tables(doc: dict) -> list:
    out = []
    t = Table(title="images", title_justify="left")
    for col, just in (("image", "left"), ("layers", "right"), ("bytes", "right"), ("efficiency (dive)", "right"),
                      ("wasted", "right"), ("problem", "left")):
        t.add_column(col, justify=just)
    for img in doc["images"]:
        eff = img["efficiency"]
        problems = img.get("problems", [])
        note = img["error"] or (f"{len(problems)} entries reported, not indexed (below)" if problems else "")
        t.add_row(Text(img["name"]), str(img["layers"]), format_size(img["bytes"]),
                  f"{100 * eff['score']:.1f}%" if eff else "", format_size(eff["wasted_bytes"]) if eff else "",
                  Text(note))   # names and messages are shown as they are, never as markup
    out.append(t)
    rows = _problem_rows(doc)
    if rows:
        t = Table(title="entries reported, not indexed (hostile paths are never followed)", title_justify="left")
        for col in ("image", "layer", "entry"):
            t.add_column(col)
        for row in rows[:PROBLEMS_SHOWN]:
            t.add_row(*map(Text, row))
        if len(rows) > PROBLEMS_SHOWN:
            t.add_row("", "", f"… and {len(rows) - PROBLEMS_SHOWN} more (--json lists them all)")
        out.append(t)
    if doc["sharing"]:
        t = Table(title="shared between images (same blobs)", title_justify="left")
        for col in ("image", "image", "layers", "bytes"):
            t.add_column(col, justify="right" if col in ("layers", "bytes") else "left")
        for r in doc["sharing"]:
            t.add_row(Text(r["a"]), Text(r["b"]), str(r["layers"]), format_size(r["bytes"]))
        out.append(t)
    t = Table(title="downloaded twice", title_justify="left")
    for col, just in (("finding", "left"), ("where", "left"), ("extra bytes", "right")):
        t.add_column(col, justify=just)
    for g in doc["same_files_other_digests"]:
        t.add_row(f"same {g['files']} files ({format_size(g['file_bytes'])}) under {len(g['diff_ids'])} diff_ids",
                  Text(", ".join(g["images"])), format_size(g["extra_bytes"]))
    for g in doc["recompressed"]:
        t.add_row(f"one layer ({g['diff_id'][:19]}) under {len(g['digests'])} blob digests", "",
                  format_size(g["extra_bytes"]))
    for g in doc["near_identical"]:
        t.add_row(Text(f"near-identical layers: {g['similarity']:.1%} of file bytes equal, {g['differing_files']} "
                       f"files differ (e.g. {', '.join(g['examples'][:2])})"), Text(", ".join(g["images"])),
                  format_size(g["extra_bytes"]))
    if not doc["same_files_other_digests"] and not doc["recompressed"] and not doc["near_identical"]:
        t.add_row("nothing: identical content is one layer", "", "0 B")
    out.append(t)
    if doc["duplicated_files"]:
        t = Table(title="files duplicated across images outside shared layers", title_justify="left")
        for col, just in (("directory", "left"), ("files", "right"), ("extra bytes", "right"), ("images", "left")):
            t.add_column(col, justify=just)
        for r in doc["duplicated_files"][:10]:
            t.add_row(Text(r["directory"]), str(r["files"]), format_size(r["extra_bytes"]),
                      Text(", ".join(r["images"])))
        out.append(t)
    out += _tree_tables(doc)
    return out


def _html_table(head: list[str], rows: list[list[str]], empty: str = "nothing") -> str:
    """A table of already-escaped cells."""
    cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>"
            f"{cells or f'<tr><td colspan={len(head)}>{empty}</td></tr>'}</table>")


def _html_tree(doc: dict) -> str:
    """The recommended tree's bases and what it saves, as a table and two charts."""
    from html import escape
    tree, cold = doc["recommended_tree"], doc["cold_pull"]
    arrow = lambda pair: escape(f"{format_size(pair['today'])} → {format_size(pair['tree'])}")
    bases = _html_table(["used by", "from layer", "layers", "bytes", "update, Docker Engine", "update, containerd"],
                        [[escape(", ".join(b["used_by"])), str(b["from_layer"]), str(b["layers"]),
                          escape(format_size(b["bytes"])), arrow(b["update"]["docker"]),
                          arrow(b["update"]["containerd"])] for b in tree["bases"]],
                        "no shared base: no two images start with the same layers")
    kinds = list(tree["cold_pull_by_host"])
    cold_chart = bar_chart_svg("cold pull of a host holding all images", [HOST_NAMES.get(k, k) for k in kinds],
                               {"as they are": [tree["cold_pull_by_host"][k]["today"] for k in kinds],
                                "recommended tree": [tree["cold_pull_by_host"][k]["tree"] for k in kinds],
                                "same files once": [cold["floor"]] * len(kinds)})   # short: the legend is narrow
    update_chart = bar_chart_svg(
        "bytes such a host pulls when a shared base changes", [_base_label(b) for b in tree["bases"]],
        {f"{k}, {key}": [b["update"][k][key] for b in tree["bases"]] for k in kinds for key in ("today", "tree")}
    ) if tree["bases"] else ""
    title = "<h2>Recommended tree: shared base images (today → with the tree)</h2>"
    return f"{title}\n{bases}\n{cold_chart}\n{update_chart}"


def audit_html(doc: dict) -> str:
    """A standalone page: the images and their problems, the sharing matrix as a heat map, what is
    downloaded twice, the recommended tree and what it saves, as tables and charts."""
    from html import escape
    images = [i for i in doc["images"] if not i["error"]]
    names = [i["name"] for i in images]
    sizes = {i["name"]: i["bytes"] for i in images}
    shared = {(r["a"], r["b"]): r["bytes"] for r in doc["sharing"]}

    def cell(a: str, b: str) -> str:
        value = sizes[a] if a == b else shared.get((a, b), shared.get((b, a), 0))
        frac = value / max(1, min(sizes[a], sizes[b]))
        color = f"rgba(43,123,186,{0.1 + 0.9 * frac:.2f})"
        return f'<td style="background:{color}" title="{frac:.0%} of the smaller">{escape(format_size(value))}</td>'

    listed = _html_table(["image", "layers", "bytes", "efficiency (dive)", "problem"], [
        [escape(i["name"]), str(i["layers"]), escape(format_size(i["bytes"])),
         f"{100 * i['efficiency']['score']:.1f}%" if i["efficiency"] else "",
         escape(i["error"] or (f"{len(i.get('problems', []))} entries reported, not indexed"
                               if i.get("problems") else ""))] for i in doc["images"]])
    problems = _problem_rows(doc)
    not_indexed = ("<h2>Entries reported, not indexed (hostile paths are never followed)</h2>\n"
                   + _html_table(["image", "layer", "entry"], [[escape(c) for c in row] for row in problems])
                   if problems else "")
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = "".join(f"<tr><th>{escape(a)}</th>{''.join(cell(a, b) for b in names)}</tr>" for a in names)
    findings = _html_table(["finding", "images", "extra bytes"], [   # as the terminal's "downloaded twice"
        [f"same {g['files']} files ({escape(format_size(g['file_bytes']))}) under {len(g['diff_ids'])} diff_ids",
         escape(", ".join(g["images"])), escape(format_size(g["extra_bytes"]))]
        for g in doc["same_files_other_digests"]] + [
        [f"one layer ({escape(g['diff_id'][:19])}) under {len(g['digests'])} blob digests", "",
         escape(format_size(g["extra_bytes"]))] for g in doc["recompressed"]] + [
        [escape(f"near-identical layers: {g['similarity']:.1%} of file bytes equal, {g['differing_files']} files "
                f"differ (e.g. {', '.join(g['examples'][:2])})"), escape(", ".join(g["images"])),
         escape(format_size(g["extra_bytes"]))] for g in doc["near_identical"]])
    per_image = bar_chart_svg("image sizes", names, {"bytes": [sizes[n] for n in names]})
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>layerwise audit</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 8px;border:1px solid #ddd;text-align:right}}
th{{background:#f4f4f4}} td:first-child,th:first-child{{text-align:left}}
table{{border-collapse:collapse;margin:1em 0}}</style></head><body>
<h1>layerwise audit</h1>
<h2>Images</h2>
{listed}
{not_indexed}
<h2>Shared between images (same blobs)</h2>
<table><tr><th></th>{head}</tr>{rows}</table>
<h2>Downloaded twice</h2>
{findings}
{_html_tree(doc)}
{per_image}
</body></html>
"""


# ----------------------------------------------------------------------------- verify

def verify_table(results, shown: int = 3) -> Table:
    """One row per app: the verdict, how many differences, and the first ones (or why it was not
    compared)."""
    from rich.text import Text  # paths and reasons are shown as written, never read as markup
    t = Table(title="verify: original vs refactored", title_justify="left")
    for col, just in (("app", "left"), ("verdict", "left"), ("differences", "right"), ("first differences", "left")):
        t.add_column(col, justify=just)
    colors = {"equivalent": "green", "different": "red", "refused": "yellow", "failed": "red"}
    for r in results:
        if r.reason:
            detail = r.reason
        else:
            detail = "\n".join(str(d) for d in r.differences[:shown])
            if len(r.differences) > shown:
                detail += f"\n… and {len(r.differences) - shown} more (--json lists every one)"
        t.add_row(Text(r.app), f"[{colors.get(r.verdict, 'white')}]{r.verdict}[/]",
                  str(len(r.differences)) if not r.reason else "", Text(detail))
    return t


# ----------------------------------------------------------------------------- import

def import_tables(doc: dict) -> list:
    """Tables for `layerwise import`: the bases extracted, then every app and what it keeps."""
    bases = Table(title="base images extracted", title_justify="left")
    for col, just in (("base", "left"), ("FROM", "left"), ("steps", "right"), ("layers", "right"),
                      ("categories", "left"), ("used by", "left"), ("known size", "right")):
        bases.add_column(col, justify=just)
    for b in doc["bases"]:
        size = format_size(b["known_bytes"]) + (f" + {b['unknown_layers']} RUN" if b["unknown_layers"] else "")
        users = ", ".join(b["used_by"])
        bases.add_row(b["name"], (b["parent"] or b["from"])[:48], str(b["steps"]), str(b["layers"]),
                      ", ".join(b.get("categories", ())),
                      users if len(users) <= 60 else f"{len(b['used_by'])} apps: {users[:50]}…", size)
    apps = Table(title="apps", title_justify="left")
    for col, just in (("app", "left"), ("stages", "right"), ("built on", "left"), ("own steps", "right"),
                      ("categories", "left"), ("notes", "left")):
        apps.add_column(col, justify=just)
    moves = Table(title="steps moved (they create no layer and nothing between reads them)", title_justify="left")
    for col in ("app", "step", "moved", "past", "now in"):
        moves.add_column(col)
    for a in doc["apps"]:
        for m in a.get("moves", ()):
            past = "; ".join(p if len(p) <= 40 else p[:39] + "…" for p in m["past"][:3])
            moves.add_row(a["name"], m["instruction"][:50], m["direction"],
                          past + (f" (+{len(m['past']) - 3})" if len(m["past"]) > 3 else ""), m["base"])
        notes = []
        if a["text_only_lines"]:
            notes.append(f"{len(a['text_only_lines'])} COPY/ADD compared by text (no context)")
        if a["context_note"]:
            notes.append(f"context: {a['context_note']}")
        if a["unbuildable"]:
            notes.append(f"cannot be built here: {a['unbuildable']}")
        if a.get("moves"):
            notes.append(f"{len(a['moves'])} steps moved")
        built_on = f"is {a['image']}" if a.get("image") else ", ".join(a["bases"]) or "[dim]its own FROMs[/]"
        apps.add_row(a["name"], str(a["stages"]), built_on, str(a["remaining_steps"]),
                     ", ".join(a.get("categories", ())), "; ".join(notes))
    swaps = Table(title="layer swaps applied (verify proved the swapped apps equal)" if doc.get("applied_swaps")
                  else "layer swaps proposed (not applied: that the order does not matter is not proven)",
                  title_justify="left")
    for col in ("after", "order", "apps that would swap", "with", "known size"):
        swaps.add_column(col)
    for w in doc.get("applied_swaps") or doc.get("proposed_swaps", ()):
        size = format_size(w["known_bytes"]) + (f" + {w['unknown_layers']} RUN" if w["unknown_layers"] else "")
        swaps.add_row(w["after"][:40], " → ".join(t[:40] for t in w["order"]), ", ".join(w["apps"]),
                      ", ".join(w["others"]), size)
    return [bases, apps] + [t for t in (moves, swaps) if t.row_count]


def import_summary_line(doc: dict) -> str:
    unknown = doc["unknown_layers_shared"]
    unknown_note = (f" known + {unknown} layers of unknown size (RUN output, or COPY without its context; "
                    "verify measures them)")
    saved = format_size(doc["known_bytes_saved"]) + (unknown_note if unknown else "")
    moved = f", {doc['moves']} steps moved" if doc.get("moves") else ""
    return (f"{doc['images']} Dockerfiles ({doc['stages']} stages), {len(doc['bases'])} base images extracted, "
            f"{doc['instructions_shared']} instructions shared ({doc['layers_shared']} layers){moved}; saved on a "
            f"host running every app: {saved}")
