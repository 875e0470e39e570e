"""An image's files: its layer indexes stacked as the overlay filesystem does, and dive's efficiency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

from .entries import DIR, OPAQUE, WHITEOUT, Entry, LayerIndex


class TreeEntry(NamedTuple):
    layer: int          # position of the layer that provides this path (0 = base)
    entry: Entry


def effective_tree(layers: Sequence[LayerIndex]) -> dict[str, TreeEntry]:
    """The image's file tree as the overlay filesystem shows it, from its layers in order (base
    first): a whiteout deletes a path and all below it in the lower layers, an opaque marker hides
    everything the lower layers had below its directory, and a later entry replaces an earlier one
    (a non-directory replacing a directory drops what was below it)."""
    tree: dict[str, TreeEntry] = {}
    kids: dict[str, set[str]] = {}

    def remove(path: str, keep_self: bool = False) -> None:
        stack = [path]
        while stack:
            p = stack.pop()
            stack.extend(kids.pop(p, ()))
            if p != path or not keep_self:
                tree.pop(p, None)
                if p:
                    parent = p.rpartition("/")[0]
                    siblings = kids.get(parent)
                    if siblings is not None:
                        siblings.discard(p)

    for position, layer in enumerate(layers):
        for e in layer.entries:              # deletions apply to the lower layers only
            if e.type == WHITEOUT:
                remove(e.path)
            elif e.type == OPAQUE:
                remove(e.path, keep_self=True)
        for e in layer.entries:
            if e.type == WHITEOUT or e.type == OPAQUE:
                continue
            old = tree.get(e.path)
            if old is not None and old.entry.type == DIR and e.type != DIR:
                remove(e.path, keep_self=True)
            tree[e.path] = TreeEntry(position, e)
            p = e.path
            while p:       # register the path and any implicit parents
                parent = p.rpartition("/")[0]
                siblings = kids.setdefault(parent, set())
                if p in siblings:
                    break
                siblings.add(p)
                p = parent
    return tree


@dataclass(frozen=True)
class Inefficiency:
    path: str
    count: int              # layers where the path appears (written or deleted)
    cumulative_size: int    # bytes summed over those appearances


@dataclass(frozen=True)
class Efficiency:
    score: float                  # dive's efficiency: sum of minimum sizes / sum of cumulative sizes
    wasted_bytes: int             # dive's "wasted bytes": cumulative sizes of paths seen in 2+ layers
    user_size_bytes: int          # bytes of all layers but the first (dive's denominator for %)
    size_bytes: int               # bytes of all layers (sum of tar header sizes)
    discovered_bytes: int         # sum of cumulative sizes (the score's denominator)
    minimum_bytes: int            # sum of minimum sizes (the score's numerator)
    inefficiencies: tuple[Inefficiency, ...] = field(default=())   # largest first

    @property
    def wasted_user_percent(self) -> float:
        return self.wasted_bytes / self.user_size_bytes if self.user_size_bytes else 0.0


def dive_efficiency(layers: Sequence[LayerIndex]) -> Efficiency:
    """Waste inside one image, computed as dive does (wagoodman/dive, `dive/filetree/efficiency.go`
    `Efficiency()` and `dive/image/analysis.go` `Analyze()`), so figures can be compared with dive's:

    - each layer is a tree of its own tar entries (parents created implicitly, opaque markers not
      added); only the leaves of each layer's tree are visited;
    - a visited path adds its tar header size to that path's cumulative size, and the smallest size
      seen for the path is kept; a whiteout adds 0 if it deletes a file, and the summed sizes of the
      deleted directory's subtree, as stacked from the lower layers, if it deletes a directory;
    - score = sum of minimum sizes / sum of cumulative sizes over all paths (1.0 when nothing);
    - wasted bytes = the cumulative sizes of the paths seen in at least two layers (the surviving copy
      included, as dive counts it); wasted_user_percent divides it by all layers' bytes but the base's.

    Differences, only on inputs dive cannot read: hostile paths are not in the indexes, and a whiteout
    of a path no lower layer has counts 0 (dive stops visiting that layer there).
    """
    cumulative: dict[str, int] = {}
    minimum: dict[str, int] = {}
    seen: dict[str, int] = {}
    stacked = _StackedTree()            # dive's stacked tree of the lower layers
    size_bytes = user_size = 0

    def visit(path: str, size: int) -> None:
        cumulative[path] = cumulative.get(path, 0) + size
        old = minimum.get(path)
        minimum[path] = size if old is None or size < old else old
        seen[path] = seen.get(path, 0) + 1

    for position, layer in enumerate(layers):
        layer_bytes = sum(e.size for e in layer.entries)
        size_bytes += layer_bytes
        if position:
            user_size += layer_bytes
        nodes, whiteouts, parents = _layer_tree(layer)
        for path in whiteouts:
            visit(path, stacked.deleted_bytes(path))
        for path, (_, size) in nodes.items():
            if path not in parents:
                visit(path, size)
        # stack this layer onto the lower ones, as dive's Stack does (whiteouts remove, others replace)
        for path in whiteouts:
            stacked.remove(path)
        for path, payload in nodes.items():
            stacked.add(path, payload)

    discovered = sum(cumulative.values())
    least = sum(minimum.values())
    inefficient = sorted((Inefficiency(p, n, cumulative[p]) for p, n in seen.items() if n >= 2),
                         key=lambda i: (-i.cumulative_size, i.path))
    return Efficiency(score=least / discovered if discovered else 1.0,
                      wasted_bytes=sum(i.cumulative_size for i in inefficient),
                      user_size_bytes=user_size, size_bytes=size_bytes, discovered_bytes=discovered,
                      minimum_bytes=least, inefficiencies=tuple(inefficient))


def _layer_tree(layer: LayerIndex) -> tuple[dict[str, tuple[bool, int]], list[str], set[str]]:
    """One layer's own tree as dive builds it: path -> (is_dir, size), implicit parents included;
    the paths its whiteouts delete, apart (the node `.wh.NAME` is a leaf under NAME's parent); and
    the nodes that have children."""
    nodes: dict[str, tuple[bool, int]] = {}
    whiteouts: list[str] = []
    parents: set[str] = set()
    for e in layer.entries:
        if e.type == WHITEOUT:
            whiteouts.append(e.path)
        elif e.type == OPAQUE:          # never added, but its parents are
            if e.path:
                nodes.setdefault(e.path, (False, 0))
        else:
            nodes[e.path] = (e.type == DIR, e.size)
        p = e.path.rpartition("/")[0]
        while p and p not in parents:
            parents.add(p)
            nodes.setdefault(p, (False, 0))   # an implicit parent: dive gives it an empty FileInfo
            p = p.rpartition("/")[0]
    return nodes, whiteouts, parents


class _StackedTree:
    """The lower layers stacked: path -> (is_dir, size), with each path's children."""

    def __init__(self):
        self.nodes: dict[str, tuple[bool, int]] = {}
        self.kids: dict[str, set[str]] = {}

    def _subtree(self, path: str) -> list[str]:
        out, stack = [], [path]
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(self.kids.get(p, ()))
        return out

    def deleted_bytes(self, path: str) -> int:
        """What a whiteout of `path` counts: 0 for a file, its subtree's sizes for a directory."""
        node = self.nodes.get(path)
        return sum(self.nodes[p][1] for p in self._subtree(path)) if node is not None and node[0] else 0

    def remove(self, path: str) -> None:
        if path not in self.nodes:
            return
        for p in self._subtree(path):
            self.nodes.pop(p, None)
            self.kids.pop(p, None)
        parent = path.rpartition("/")[0]
        if parent in self.kids:
            self.kids[parent].discard(path)

    def add(self, path: str, payload: tuple[bool, int]) -> None:
        self.nodes[path] = payload
        p = path
        while p:
            parent = p.rpartition("/")[0]
            self.kids.setdefault(parent, set()).add(p)
            if parent in self.nodes or not parent:
                break
            self.nodes[parent] = (False, 0)
            p = parent
