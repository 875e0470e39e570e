"""The family as a picture (the seed's Fig. 8): Mermaid for READMEs, Graphviz dot for SVG.

Each image is a node showing its name, tag, owner and own size (the layers it adds); each edge points
from an image to its parent, as FROM does. Output is deterministic: nodes in plan order.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from ..errors import UserError
from ..units import format_size
from .model import ImageNode, Plan


def own_size(img: ImageNode) -> int | None:
    """Bytes the image's own layers add; None when any layer's size is unknown."""
    sizes = [s.size for s in img.layers]
    return None if any(s is None for s in sizes) else sum(sizes)


def _label_lines(img: ImageNode) -> list[str]:
    size = own_size(img)
    own = format_size(size) if size is not None else "size ?"
    return [f"{img.key}:{img.tag}", f"owner {img.owner}", f"own {own}"]


def _node_id(index: int) -> str:
    return f"i{index}"


def mermaid(plan: Plan, highlight: set[str] = frozenset()) -> str:
    """A Mermaid flowchart, parents at the top; `highlight` (image keys) drawn bold."""
    ids = {img.key: _node_id(i) for i, img in enumerate(plan.images)}
    lines = ["flowchart BT", f'  base["{_mermaid_text(plan.base)}<br/>OS base"]']
    for img in plan.images:
        label = "<br/>".join(_mermaid_text(line) for line in _label_lines(img))
        lines.append(f'  {ids[img.key]}["{label}"]')
    for img in plan.images:
        lines.append(f"  {ids[img.key]} --> {ids[img.parent] if img.parent else 'base'}")
    if highlight:
        lines.append("  classDef mine fill:#ffe08a,stroke:#b8860b,stroke-width:3px")
        lines.append("  class " + ",".join(ids[k] for k in [i.key for i in plan.images] if k in highlight)
                     + " mine")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    # Inside a quoted Mermaid label only '"' needs escaping (as an entity code).
    return text.replace('"', "#quot;")


def dot(plan: Plan) -> str:
    """A Graphviz digraph: one box per image, an edge to its parent."""
    ids = {img.key: _node_id(i) for i, img in enumerate(plan.images)}
    lines = ["digraph family {", "  rankdir=BT;", '  node [shape=box, fontname="Helvetica"];',
             f"  base [label={json.dumps(plan.base + chr(10) + 'OS base')}, style=dashed];"]
    for img in plan.images:
        lines.append(f"  {ids[img.key]} [label={json.dumps(chr(10).join(_label_lines(img)))}];")
    for img in plan.images:
        lines.append(f"  {ids[img.key]} -> {ids[img.parent] if img.parent else 'base'};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def svg(dot_text: str) -> bytes:
    """The dot graph rendered by Graphviz's `dot`; a UserError when Graphviz is not installed."""
    exe = shutil.which("dot")
    if exe is None:
        raise UserError("--svg needs Graphviz's `dot`, which is not installed (Debian: apt-get install graphviz); "
                        "`--format dot` prints the graph without it")
    done = subprocess.run([exe, "-Tsvg"], input=dot_text.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise UserError(f"Graphviz dot failed: {done.stderr.decode(errors='replace').strip()[:300]}")
    return done.stdout
