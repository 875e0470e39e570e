"""Steps per app → plan: the seed's Fig. 6 → 7 → 8 as small pure functions (DESIGN.md rules 1–6).

    chains (category order) → merge_layers (Fig. 7) → prefix_tree (Fig. 8) → cut_images → plan
No I/O here: the stack file and its contexts were read by `spec`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..dockerfiles import can_join, join_runs, parse_fragment, prefetch
from ..errors import UserError
from .model import Category, ImageNode, Plan, Step, sha256_text

if TYPE_CHECKING:   # a type only: the planner reads no stack file itself
    from .spec import Stack

# How images are made from steps; bumped when that changes, so fingerprints (and builds) follow.
RECIPE = "layerwise-recipe/3: legacy builder, SOURCE_DATE_EPOCH, layers normalized"


# ----------------------------------------------------------------------------- rule 2: merge

def _merged(run_steps: list[Step]) -> Step:
    sizes = [s.size for s in run_steps]
    sources = sorted({s.size_source for s in run_steps})
    commands = [s.instruction.split(None, 1)[1] for s in run_steps]
    return Step(
        instruction="RUN " + join_runs(commands),
        category=run_steps[0].category,
        size=sum(sizes) if all(x is not None for x in sizes) else None,
        size_source="+".join(sources),
    )


def merge_layers(steps: tuple[Step, ...] | list[Step], categories: tuple[Category, ...]) -> list[Step]:
    """Join consecutive plain RUNs of a `merge` category into one `RUN a && b` (COPYs stay)."""
    merging = {c.name for c in categories if c.merge}
    prefetch(s.instruction for s in steps if s.category in merging)
    out: list[Step] = []
    pending: list[Step] = []
    custom_shell = False   # after a SHELL instruction RUN is not POSIX sh: `&&` may mean nothing

    def flush() -> None:
        if pending:
            out.append(pending[0] if len(pending) == 1 else _merged(pending))
            pending.clear()

    for step in steps:
        custom_shell = custom_shell or step.keyword == "SHELL"
        joinable = (step.category in merging and not custom_shell
                    and can_join(parse_fragment(step.instruction)[0]))
        if joinable and (not pending or pending[0].category == step.category):
            pending.append(step)
            continue
        flush()
        if joinable:
            pending.append(step)
        else:
            out.append(step)
    flush()
    return out


# ----------------------------------------------------------------------------- rule 3: tree

@dataclass
class TreeNode:
    step: Step
    parent: int | None
    children: list[int] = field(default_factory=list)
    apps: list[str] = field(default_factory=list)   # apps whose chain passes through here
    ends: list[str] = field(default_factory=list)   # apps whose chain ends here


def prefix_tree(chains: dict[str, list[Step]]) -> tuple[list[TreeNode], dict[str, list[int]]]:
    """Overlay the chains; a step is shared only under an equal parent (same identity path).

    Returns the nodes and, per app, the path of node indices its chain takes.
    """
    nodes: list[TreeNode] = []
    paths: dict[str, list[int]] = {}
    index: dict[tuple[int | None, str], int] = {}
    for app in sorted(chains):
        parent: int | None = None
        paths[app] = []
        for step in chains[app]:
            key = (parent, step.identity)
            if key not in index:
                index[key] = len(nodes)
                nodes.append(TreeNode(step=step, parent=parent))
                if parent is not None:
                    nodes[parent].children.append(index[key])
            parent = index[key]
            nodes[parent].apps.append(app)
            paths[app].append(parent)
        if parent is not None:
            nodes[parent].ends.append(app)
    return nodes, paths


# ----------------------------------------------------------------------------- rule 4: images

def named_nodes(nodes: list[TreeNode], paths: dict[str, list[int]],
                names: dict[str, tuple[str, str]]) -> dict[int, str]:
    """Tree node → the category whose `images:` entry names it (the category's last step)."""
    found: dict[str, set[int]] = {c: set() for c in names}
    for app in sorted(paths):
        last_of = {nodes[i].step.category: i for i in paths[app]}
        for category in names:
            if category in last_of:
                found[category].add(last_of[category])
    result: dict[int, str] = {}
    for category, where in found.items():
        if not where:
            raise UserError(f"images.{category} names an image, but no app has steps in "
                            f"category {category!r}; remove the entry or add the steps")
        if len(where) > 1:
            apps = sorted({a for n in where for a in nodes[n].apps})
            raise UserError(
                f"images.{category} ({names[category][0]}) would name {len(where)} different images: "
                f"the apps {', '.join(apps)} differ in their {category} steps or below them; "
                "make those steps equal or remove the name")
        result[where.pop()] = category
    return result


def image_runs(nodes: list[TreeNode], named: dict[int, str], owners: dict[str, str]) -> list[list[int]]:
    """Cut the tree into images: runs of nodes ending at a branch, a name, an app or an owner change."""
    def ends_image(i: int) -> bool:
        node = nodes[i]
        if len(node.children) != 1 or i in named or node.ends:
            return True
        return owners[nodes[node.children[0]].step.category] != owners[node.step.category]

    runs: list[list[int]] = []
    starts = deque(i for i, n in enumerate(nodes) if n.parent is None)
    while starts:
        i = starts.popleft()
        run = [i]
        while not ends_image(run[-1]):
            run.append(nodes[run[-1]].children[0])
        runs.append(run)
        starts += nodes[run[-1]].children
    return runs


# ----------------------------------------------------------------------------- rules 5–6: plan

def build_plan(stack: Stack, base_digest: str | None = None) -> Plan:
    """The whole pipeline: a deterministic plan for a loaded stack file.

    With the OS base's digest (known once the registry or engine was asked), fingerprints follow
    the base's content; without it, its reference.
    """
    chains = {app: merge_layers(steps, stack.categories) for app, steps in stack.apps.items()}
    nodes, paths = prefix_tree(chains)
    named = named_nodes(nodes, paths, stack.names)
    owners = {c.name: c.owner for c in stack.categories}
    runs = image_runs(nodes, named, owners)

    image_of_node: dict[int, str] = {}
    images: list[ImageNode] = []
    by_key: dict[str, ImageNode] = {}
    for run in runs:   # parents come before children in `runs`
        last = nodes[run[-1]]
        first = nodes[run[0]]
        parent_key = image_of_node[first.parent] if first.parent is not None else None
        parent = by_key[parent_key] if parent_key else None
        steps = tuple(nodes[i].step for i in run)
        fingerprint = sha256_text(RECIPE, parent.fingerprint if parent else "base:" + (base_digest or stack.base),
                                  *(s.identity for s in steps))
        key, tag, named_by = _name(stack, last, run[-1], named, fingerprint)
        if key in by_key:
            raise UserError(f"two images would both be named {key!r}; "
                            "give them different names under 'images:'", stack.path)
        image = ImageNode(
            key=key, repository=f"{stack.registry}/{key}", tag=tag, fingerprint=fingerprint,
            parent=parent_key, base=parent.ref if parent else stack.base,
            owner=owners[steps[0].category], kind="app" if last.ends else "base",
            apps=tuple(sorted(last.apps)), steps=steps, named_by=named_by,
        )
        by_key[key] = image
        images.append(image)
        for i in run:
            image_of_node[i] = key

    ordered = sorted(images, key=lambda img: (_depth(by_key, img), img.key))
    apps = {app: image_of_node[path[-1]] for app, path in paths.items()}
    return Plan(registry=stack.registry, project=stack.project, base=stack.base,
                categories=stack.categories, images=tuple(ordered), apps=apps, base_digest=base_digest)


def _name(stack: Stack, node: TreeNode, index: int, named: dict[int, str],
          fingerprint: str) -> tuple[str, str, str | None]:
    if len(node.ends) > 1:
        raise UserError(f"apps {' and '.join(sorted(node.ends))} have identical steps and would be "
                        "the same image; remove one or make them differ", stack.path)
    if index in named:
        category = named[index]
        if node.ends:
            raise UserError(f"images.{category} names the image of app {node.ends[0]!r}, which is "
                            f"already named {stack.project}/{node.ends[0]}; remove images.{category}",
                            stack.path)
        name, tag = stack.names[category]
        return name, tag, f"images.{category}"
    if node.ends:
        return f"{stack.project}/{node.ends[0]}", stack.app_tags[node.ends[0]], None
    return f"{stack.project}/{node.step.category}-{fingerprint[:8]}", "latest", None


def _depth(by_key: dict[str, ImageNode], img: ImageNode) -> int:
    depth = 0
    while img.parent:
        img = by_key[img.parent]
        depth += 1
    return depth
