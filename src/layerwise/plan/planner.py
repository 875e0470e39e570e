"""Steps per app → plan: the seed's Fig. 6 → 7 → 8 as small pure functions (DESIGN.md rules 1–6).

    order (choose_order) → chains (category order) → merge_layers (Fig. 7) → prefix_tree (Fig. 8)
    → cut_images → plan
No I/O here: the stack file and its contexts were read by `spec`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..dockerfiles import can_join, join_runs, parse_fragment, prefetch
from ..errors import UserError
from .cost import PlanCosts, order_objective
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

def build_plan(stack: Stack, base_digest: str | None = None, order: tuple[str, ...] | None = None) -> Plan:
    """The whole pipeline: a deterministic plan for a loaded stack file, its categories in `order`
    (default: the order the stack file asks for, `order_of`).

    With the OS base's digest (known once the registry or engine was asked), fingerprints follow
    the base's content; without it, its reference.
    """
    return _plan(in_order(stack, order or order_of(stack)), base_digest)


def _plan(stack: Stack, base_digest: str | None) -> Plan:
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


# ----------------------------------------------------------------------------- the order of categories
#
# Which category sits on which decides what an update costs: an update of a category rebuilds
# every layer above it, and hosts pull (Docker Engine) or unpack (every kind) those layers again.
# "Most stable first" ignores sizes: a 1 kB security layer patched monthly at the bottom makes every
# host fetch everything above it each month. The cheapest order puts low churn per byte at the
# bottom (for bytes on one chain that is exactly the rule: ascending changes per month / bytes,
# Smith's rule for weighted completion time); the planner starts there and then improves the order
# by moving one category at a time while the full cost model (cost.order_objective) finds it
# cheaper: on the team's own fleet when the stack file names one (`fleet:`: every group's hosts, of
# their kind, link and apps, at the fleet's update rates), else on one reference host per kind.
# `needs:` bounds every move, and steps of one category keep their order. The order is decided from
# the stack file and its fleet file alone (hints and file sizes, uncompressed; the fleet file's
# engine costs or assumed ones), so `plan`, `generate`, `build` and `bench` all get the same order
# whatever was measured since.

MAX_ORDER_EVALUATIONS = 400     # full-model evaluations per choice; the search stops there
ORDER_SAMPLE_APPS = 24          # larger families are judged on this many of their apps (every n-th);
#                                 a fleet's groups keep the sampled apps they run


def declared_order(stack: Stack) -> tuple[str, ...]:
    return tuple(c.name for c in stack.categories)


def order_of(stack: Stack) -> tuple[str, ...]:
    """The order the stack file asks for: as listed, optimized, or its explicit list."""
    asked = getattr(stack, "order", "stack")
    if asked == "optimize":
        return choose_order(stack).recommended
    if isinstance(asked, tuple):
        return asked
    return declared_order(stack)


def in_order(stack: Stack, order: tuple[str, ...]) -> Stack:
    """The stack with its categories, and every app's steps, in `order` (bottom first). A category's
    steps keep their order; the steps of app settings (ENV, ENTRYPOINT...) stay last, in the app's
    last category."""
    if order == declared_order(stack):
        return stack
    rank = {name: i for i, name in enumerate(order)}
    by_name = {c.name: c for c in stack.categories}
    apps = {}
    for app, steps in stack.apps.items():
        tail = stack.settings_steps.get(app, 0)
        own = sorted(steps[:len(steps) - tail], key=lambda s: rank[s.category])   # stable
        settings = steps[len(steps) - tail:]
        if settings and own:
            settings = tuple(replace(s, category=own[-1].category) for s in settings)
        apps[app] = tuple(own) + tuple(settings)
    return replace(stack, categories=tuple(by_name[n] for n in order), apps=apps)


def allowed(order: tuple[str, ...], categories: tuple[Category, ...]) -> bool:
    """Every category above all it needs."""
    at = {n: i for i, n in enumerate(order)}
    return all(at[need] < at[c.name] for c in categories for need in c.needs)


@dataclass
class OrderChoice:
    """The stack file's order and the recommended one, with the objective of each (monthly seconds
    over the stack file's fleet or the reference hosts, then bytes) and, per category that moved, why."""
    declared: tuple[str, ...]
    recommended: tuple[str, ...]
    declared_cost: tuple[float, float]
    recommended_cost: tuple[float, float]
    reasons: dict[str, str]
    evaluations: int


def choose_order(stack: Stack) -> OrderChoice:
    """The order of categories with the least expected monthly update cost, within `needs:`, on
    the stack file's fleet (`fleet:`) or, without one, on one reference host per kind.
    A family of more than ORDER_SAMPLE_APPS apps is judged on every n-th app, so that the choice
    costs about the same at any size (the figures `plan` shows for the orders are of all apps)."""
    names = sorted(stack.apps)
    if len(names) > ORDER_SAMPLE_APPS:
        step = len(names) / ORDER_SAMPLE_APPS
        kept = {names[int(i * step)] for i in range(ORDER_SAMPLE_APPS)}
        stack = replace(stack, apps={a: s for a, s in stack.apps.items() if a in kept})
    cats = stack.categories
    declared = declared_order(stack)
    cache: dict[tuple[str, ...], tuple[float, float] | None] = {}

    def cost(order: tuple[str, ...]) -> tuple[float, float] | None:
        if order not in cache:
            try:
                cache[order] = order_objective(_plan(in_order(stack, order), None), stack.fleet)
            except UserError:      # e.g. a named image that would split: not a possible order
                cache[order] = None
        return cache[order]

    base = cost(declared)
    if base is None:      # only when the sample of a large family misses a named image's apps
        return OrderChoice(declared, declared, (0.0, 0.0), (0.0, 0.0), {}, len(cache))
    churn = _churn(stack, declared)
    best = min((o for o in (declared, _smith(cats, churn)) if cost(o) is not None), key=cost)
    improved = True
    while improved and len(cache) < MAX_ORDER_EVALUATIONS:
        improved = False
        for move in _moves(best, cats):
            found = cost(move)
            if found is not None and found < cost(best):
                best, improved = move, True
            if len(cache) >= MAX_ORDER_EVALUATIONS:
                break
    return OrderChoice(declared, best, base, cost(best), _reasons(declared, best, cats, churn), len(cache))


def _churn(stack: Stack, order: tuple[str, ...]) -> dict[str, tuple[float, int]]:
    """Per category: (changes per month, bytes one update of it changes) in the stack's plan."""

    plan = _plan(in_order(stack, order), None)
    costs = PlanCosts(plan)
    apps = tuple(sorted(plan.apps))
    return {c.name: (c.changes_per_month, costs.floor_pull(apps, c.name).unpacked) for c in stack.categories}


def _smith(cats: tuple[Category, ...], churn: dict[str, tuple[float, int]]) -> tuple[str, ...]:
    """Lowest changes per byte first, each category once all it needs is placed."""
    left = {c.name: c for c in cats}
    out: list[str] = []
    while left:
        ready = [n for n, c in left.items() if all(need in out for need in c.needs)]
        pick = min(ready, key=lambda n: churn[n][0] / max(churn[n][1], 1))    # ties: as listed
        out.append(pick)
        del left[pick]
    return tuple(out)


def _moves(order: tuple[str, ...], cats: tuple[Category, ...]):
    """Every order one category move away (taken out and put elsewhere) that keeps the needs."""
    for i in range(len(order)):
        rest = order[:i] + order[i + 1:]
        for j in range(len(order)):
            if j == i:
                continue
            moved = rest[:j] + (order[i],) + rest[j:]
            if moved != order and allowed(moved, cats):
                yield moved


def _reasons(declared: tuple[str, ...], chosen: tuple[str, ...], cats: tuple[Category, ...],
             churn: dict[str, tuple[float, int]]) -> dict[str, str]:
    """Per category that moved: where to, and why (its churn per byte against the categories it
    passed, or, where bytes are too few to matter, the layers rebuilt a month)."""
    from ..units import format_size

    def per_byte(n: str) -> float:
        return churn[n][0] / max(churn[n][1], 1)

    needs = {c.name: c.needs for c in cats}
    out = {}
    for name in declared:
        old, new = declared.index(name), chosen.index(name)
        if old == new:
            continue
        rate, size = churn[name]
        down = new < old
        passed = [n for n in declared if n != name and (declared.index(n) < old) != (chosen.index(n) < new)]
        text = (f"{'down' if down else 'up'} {abs(new - old)}: {rate:g} changes/month over "
                f"{format_size(size)}; ")
        if all((per_byte(n) > per_byte(name)) == down for n in passed):
            text += (f"less churn per byte than {', '.join(passed)}: their updates no longer rebuild it"
                     if down else f"more churn per byte than {', '.join(passed)}: its updates no longer "
                     "rebuild them")
        else:
            text += (f"too few bytes to matter: with it {'below' if down else 'above'} {', '.join(passed)} "
                     "fewer layers are rebuilt a month (the engine's cost per layer and pull)")
        held = [n for n in needs[name] if chosen.index(n) == new - 1]
        if held:
            text += f"; kept above {', '.join(held)} (needs)"
        out[name] = text
    return out
