"""The cost model: bytes a host pulls cold, when an app arrives, and on each update.

Every layer of an app gets three identities:
- `chain`: the layer with everything below it. The **Docker Engine** (classic store, host kind
  `docker`) reuses a layer only when it holds the same chain; from the first miss on it downloads
  everything.
- `blob`: the compressed blob. **containerd** (`containerd`) and the Docker Engine on the containerd
  image store (`docker-containerd`) reuse any blob they hold, whatever sits below it.
- `content`: what the step put there, for the **floor** (only the changed content, counted once).
Every kind keys its unpacked filesystems (snapshots, layer store) by chain: a layer whose chain is
new is unpacked again even when no byte of it is downloaded (`Pull.unpacked`).

Seconds of a pull (`EngineCosts.seconds`): per pull, plus each image pull's layers through its
engine's pipeline (`pull_seconds`): downloads sharing the link, and each layer unpacked: the bytes
written at the unpack rate, the bytes decoded from coded gzip blocks (`inflated_bytes`) at the
inflate rate, and a fixed cost per layer. The engine costs are fitted by `bench pull`.

Variants of the same apps:
- **planned** (layerwise): shared images are built once; layers are byte-reproducible, so a step
  rebuilt with unchanged input gives the same blob. COPY/ADD output depends only on the files copied;
  a RUN's output is assumed to depend on everything below it (conservative).
- **flat** (how teams build without a plan): every app its own build from the OS base; builds are
  not reproducible, so identical content in two apps, or a step rebuilt unchanged, gets a new blob.
- **tree** (a hand-made tree, built the usual way): shared images are built once, but a rebuilt
  layer gets a new blob even when its content did not change.
An update of a category rebuilds each app from that category's first step up (the engine's cache
keeps what is below). The OS base is the same in every variant and is left out.

Each rule is written once, here, and `plan`, `simulate`, `bench` (`predict_pulls`) and `audit` call it:
- chain walking (`next_chain`, `chained`): a layer's chain id is its blob on the chain below;
- layers as built (`as_built`): the blob-as-built rule of the planned and tree variants;
- bytes a host pulls (`pulled`): every wanted layer whose key its kind does not hold, once.
Figures are computed once per image node (`PlanCosts`) and shared by every app built on it, every
host and every fleet group, so the work grows with the steps of the plan, not with apps × apps.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Container, Hashable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .model import Plan, Step, inflated_bytes

if TYPE_CHECKING:   # only types here: the pure cost rules import no I/O
    from ..oci.images import Image
    from .fleet import Fleet

DOCKER, DOCKER_CONTAINERD, CONTAINERD = "docker", "docker-containerd", "containerd"
ALL_HOST_KINDS = (DOCKER, DOCKER_CONTAINERD, CONTAINERD)   # what fleet files, plan, simulate, bench accept
HOST_KINDS = (DOCKER, CONTAINERD)    # the two download rules (docker-containerd downloads as containerd)
PLANNED, FLAT, TREE = "planned", "flat", "tree"


# ----------------------------------------------------------------------------- the rules

Key = Hashable


class Ids:
    """Equal parts get equal ids and different parts different ones: an exact and cheap stand-in
    for hashing them, since these ids are only compared, never shown. Layers compared with each
    other must get their ids from the same `Ids`."""

    def __init__(self) -> None:
        self.table: dict[tuple, int] = {}

    def __call__(self, *parts: Key) -> int:
        found = self.table.get(parts)
        if found is None:
            found = self.table[parts] = len(self.table)
        return found

    def __len__(self) -> int:
        return len(self.table)


class HostLayer(NamedTuple):
    """One layer as hosts see it: `chain` (Docker Engine), `blob` (containerd), `content` (floor);
    `size` is what crosses the link (compressed once measured), `unpacked` what is written to disk,
    `inflated` what of it is decoded from coded gzip blocks."""
    chain: Key
    blob: Key
    content: Key
    size: int
    category: str = ""
    unpacked: int = 0
    inflated: int = 0

    def key(self, host_kind: str) -> Key:
        return host_key(host_kind)(self)


def next_chain(ids: Ids, chain: Key, blob: Key) -> int:
    """Chain walking: a layer's chain id is its blob on top of the chain below it."""
    return ids(chain, blob)


def chained(ids: Ids, layers: Iterable[tuple]) -> list[HostLayer]:
    """(blob, content, size[, unpacked]) bottom first → HostLayers with their chain ids: an image as
    pulled. The bytes inflated are estimated from the two sizes (`inflated_bytes`); without the
    unpacked size, the size stands for it, all of it inflated."""
    out, chain = [], None
    for blob, content, size, *unpacked in layers:
        chain = next_chain(ids, chain, blob)
        known = unpacked[0] if unpacked else None
        out.append(HostLayer(chain, blob, content, size, "", size if known is None else known,
                             inflated_bytes(size, known)))
    return out


class Below(NamedTuple):
    """What the steps under a point leave to the next one: the chain id, the content of every step
    below (a RUN's output may depend on all of it), and whether one of them was rebuilt."""
    chain: Key = None
    content: Key = None
    rebuilt: bool = False


GROUND = Below()
_new = tuple.__new__     # a HostLayer without NamedTuple's Python-level __new__: as_built makes many


def as_built(ids: Ids, steps: Iterable[tuple[Step, bool]], variant: str = PLANNED,
             below: Below = GROUND) -> tuple[list[HostLayer], Below]:
    """The blob-as-built rule: the layers of `steps` ((step, changed) pairs, bottom first) built on
    `below`. A changed step has new content, and every step from it up is rebuilt.
    - planned (layerwise, byte-reproducible): a COPY/ADD layer's blob is its content (the files it
      copies); any other layer's blob follows the content of everything below it;
    - tree (built the usual way): shared where the tree shares, a new blob from the first rebuilt
      step up, whatever its content."""
    chain, content_below, rebuilt = below
    table = ids.table       # ids(...) inlined: this loop runs once per step, per case, per node
    out: list[HostLayer] = []
    for step, changed in steps:
        rebuilt = rebuilt or changed
        parts = (step.identity, changed)
        content = table.get(parts)
        if content is None:
            content = table[parts] = len(table)
        parts = (content_below, content)
        content_below = table.get(parts)
        if content_below is None:
            content_below = table[parts] = len(table)
        if not step.creates_layer:
            continue
        if variant == PLANNED:
            blob = content if step.keyword in ("COPY", "ADD") else content_below
        else:
            blob = ids("tree", content_below, rebuilt)
        parts = (chain, blob)               # next_chain
        chain = table.get(parts)
        if chain is None:
            chain = table[parts] = len(table)
        out.append(_new(HostLayer, (chain, blob, content, step.size or 0, step.category, step.unpacked,
                                    step.inflated)))
    return out, Below(chain, content_below, rebuilt)


# One image pull: per layer it downloads or unpacks, bottom first, (bytes downloaded, 0 if held;
# bytes unpacked, None if its chain is held; of those, bytes inflated, 0 if not unpacked).
Stage = tuple[tuple[int, int | None, int], ...]


@dataclass
class Pull:
    """What one host downloads in one case: bytes and layers over the link, and the uncompressed
    bytes of the layers it unpacks (every layer whose chain it did not hold). `stages`: the same
    layers per image pulled, for the time model (`pull_seconds`); only where seconds are asked for
    (`PlanCosts.pull(..., timed=True)`)."""
    bytes: int
    layers: int
    unpacked: int = 0
    stages: tuple[Stage, ...] = ()

    def __iadd__(self, other: "Pull") -> "Pull":
        self.bytes += other.bytes
        self.layers += other.layers
        self.unpacked += other.unpacked
        self.stages += other.stages
        return self


def _distinct(wanted: Iterable[HostLayer], key: Callable[[HostLayer], Key], held: Container[Key] = ()) -> Pull:
    sizes: dict[Key, int] = {}
    unpack: dict[Key, int] = {}
    for h in wanted:
        k = key(h)
        if k not in held:
            sizes[k] = h.size
        if h.chain not in held:
            unpack[h.chain] = h.unpacked
    return Pull(sum(sizes.values()), len(sizes), sum(unpack.values()))


def _chain(h: HostLayer) -> Key:
    return h.chain


def _blob(h: HostLayer) -> Key:
    return h.blob


def host_key(host_kind: str) -> Callable[[HostLayer], Key]:
    """What a host of this kind reuses a downloaded layer by.
    - `docker` (classic store): the chain; the distribution code fetches every layer from the first
      chain it lacks.
    - `containerd`: the blob; its content store skips any digest it holds.
    - `docker-containerd`: the blob too. moby's daemon/containerd/image_pull.go, ImageService.pullTag,
      pulls with containerd's client.Pull(..., WithPullUnpack, WithPullSnapshotter): containerd's
      unpacker (core/unpack/unpacker.go, Unpacker.unpack) skips a layer whose snapshot (keyed by
      chain ID) exists, and otherwise fetches it through remotes.FetchHandler / Fetch
      (core/remotes/handlers.go), where content.OpenWriter answers AlreadyExists for a blob already
      in the content store and the handler skips it. So bytes follow the blob and unpacking the
      chain, as on containerd. (Read in moby at b985e2313a86, vendoring containerd v2.)"""
    if host_kind not in ALL_HOST_KINDS:
        raise ValueError(f"unknown host kind {host_kind!r} (known: {', '.join(ALL_HOST_KINDS)})")
    return _chain if host_kind == DOCKER else _blob


def stage_of(layers: Iterable[HostLayer], key: Callable[[HostLayer], Key], held: Container[Key],
             fetched: set[Key]) -> Stage:
    """One image pull for the time model: each layer it downloads (`key` neither held nor fetched
    by an earlier pull of the same host) or unpacks (its chain likewise), bottom first. Adds what it
    takes to `fetched`."""
    stage = []
    by_chain = key is _chain
    for h in layers:          # runs once per layer, per host, per case: kept lean
        chain = h[0]
        blob = chain if by_chain else h[1]
        down = blob not in fetched and blob not in held
        unpack = down if by_chain else (chain not in fetched and chain not in held)
        if down or unpack:
            fetched.add(blob)
            fetched.add(chain)
            stage.append((h[3] if down else 0, h[5] if unpack else None, h[6] if unpack else 0))
    return tuple(stage)


def holding(layers: Iterable[HostLayer]) -> set[Key]:
    """What a host holding `layers` holds: their chains (unpacked) and their blobs (downloaded).
    Chain ids and blob ids never collide (one `Ids` table, or digests against integers)."""
    out: set[Key] = set()
    for h in layers:
        out.add(h.chain)
        out.add(h.blob)
    return out


def pulled(wanted: Iterable[HostLayer], host_kind: str, held: Container[Key] = ()) -> Pull:
    """What a host pulls: every wanted layer whose key (`host_key`) is not in `held`, each once, and
    unpacks every one whose chain is not in `held`. `held`: `holding(...)` of what it has."""
    return _distinct(wanted, host_key(host_kind), held)


def _content(h: HostLayer) -> Key:
    return h.content


def content_pull(layers: Iterable[HostLayer], held: Container[Key] = ()) -> Pull:
    """The floor: content not in `held`, each counted once, downloaded and unpacked once; its one
    stage is those layers alone."""
    seen: dict[Key, HostLayer] = {}
    for h in layers:
        if h.content not in held:
            seen[h.content] = h
    stage = tuple((h.size, h.unpacked, h.inflated) for h in seen.values())
    return Pull(sum(h.size for h in seen.values()), len(stage), sum(h.unpacked for h in seen.values()),
                (stage,) if stage else ())


def content_bytes(layers: Iterable[HostLayer], held: Container[Key] = ()) -> int:
    return content_pull(layers, held).bytes


# ----------------------------------------------------------------------------- per-node figures

@contextmanager
def _no_gc():
    """Hundreds of thousands of small tuples, none in a cycle: collections would only cost time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class PlanCosts:
    """The layers of every image node of a plan, per variant and per case (as built, or after an
    update of one category), each computed once on its parent's and shared by its descendants.
    `work` counts chain-id computations and node visits (tests pin its growth)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.work = 0
        self.ids = Ids()
        self._cats = {img.key: frozenset(s.category for s in img.steps) for img in plan.images}
        self._paths = {app: tuple(img.key for img in plan.chain(key)) for app, key in plan.apps.items()}
        self._built: dict[tuple[str, str | None], dict[str, tuple[tuple[HostLayer, ...], Below]]] = {}
        self._flat: dict[str, dict[str | None, Pull]] = {}
        self._flat_nodes: dict[str, dict[str | None, Pull]] = {}

    def _nodes(self, variant: str, updated: str | None) -> dict[str, tuple[tuple[HostLayer, ...], Below]]:
        if (variant, updated) in self._built:
            return self._built[(variant, updated)]
        cold = self._nodes(variant, None) if updated is not None else None
        out: dict[str, tuple[tuple[HostLayer, ...], Below]] = {}
        with _no_gc():
            self._build(out, cold, variant, updated)
        self._built[(variant, updated)] = out
        return out

    def _build(self, out: dict, cold: dict | None, variant: str, updated: str | None) -> None:
        for img in self.plan.images:          # parents first
            below = out[img.parent][1] if img.parent else GROUND
            self.work += 1
            if cold is not None and not below.rebuilt and updated not in self._cats[img.key]:
                out[img.key] = cold[img.key]   # nothing changed at or below: as built
                continue
            layers, end = as_built(self.ids, ((s, s.category == updated) for s in img.steps), variant, below)
            self.work += len(layers)
            out[img.key] = (tuple(layers), end)

    def union(self, apps: Iterable[str]) -> list[str]:
        """The image nodes the apps are built from, each once, in the order of their last place in
        the apps' chains one after the other: where one layer (same key) was given two sizes (size
        hints that disagree), the size counted is the one met last in that order, as it always was."""
        seen: dict[str, None] = {}
        for app in apps:
            for key in self._paths[app]:
                seen.pop(key, None)
                seen[key] = None
            self.work += len(self._paths[app])
        return list(seen)

    def host_layers(self, apps: Iterable[str], variant: str = PLANNED,
                    updated: str | None = None) -> list[HostLayer]:
        nodes = self._nodes(variant, updated)
        return [h for key in self.union(apps) for h in nodes[key][0]]

    def has_category(self, app: str, category: str) -> bool:
        return any(category in self._cats[k] for k in self._paths[app])

    # -- what a host pulls ---------------------------------------------------------------------------

    def pull(self, apps: tuple[str, ...], host_kind: str, variant: str,
             updated: str | None = None, timed: bool = False) -> Pull:
        """A host running `apps`: cold (updated None) or on an update of category `updated`; `timed`:
        with the stages the time model needs (bytes alone do without)."""
        if variant == FLAT:
            total = Pull(0, 0)
            for app in apps:
                total += self.flat(app).get(updated, Pull(0, 0))
            return total
        union = self.union(apps)
        built = self._nodes(variant, None)
        if updated is None:
            out = pulled((h for k in union for h in built[k][0]), host_kind)
            if timed:
                out.stages = self._stages(apps, host_kind, built, None, set())
            return out
        after = self._nodes(variant, updated)
        held = holding(h for k in union for h in built[k][0])
        # Nodes left as built hold nothing new; only rebuilt ones are looked at.
        out = pulled((h for k in union if after[k] is not built[k] for h in after[k][0]), host_kind, held)
        if timed:
            out.stages = self._stages(apps, host_kind, after, built, held)
        return out

    def _stages(self, apps: tuple[str, ...], host_kind: str, nodes: dict, unchanged: dict | None,
                held: set[Key]) -> tuple[Stage, ...]:
        """The host's pulls one app after the other, each its layers bottom first: what each
        downloads (its kind's key not held nor fetched before) and unpacks (its chain likewise).
        `unchanged`: nodes as built, skipped (they hold nothing new) when looking at an update."""
        key = host_key(host_kind)
        fetched: set[Key] = set()
        out = []
        for app in apps:
            stage = stage_of((h for k in self._paths[app] if unchanged is None or nodes[k] is not unchanged[k]
                              for h in nodes[k][0]), key, held, fetched)
            self.work += len(stage)
            if stage:
                out.append(stage)
        return tuple(out)

    def arrivals(self, apps: tuple[str, ...], key: Callable[[HostLayer], Key],
                 variant: str = PLANNED) -> dict[str, Pull]:
        """Per app, what a host running all `apps` downloads when that app arrives last: only the
        nodes no other app of the host is built on can hold layers the others lack."""
        host = set(apps)
        built = self._nodes(variant, None)
        union = self.union(apps)
        count: Counter[str] = Counter(key(h) for k in union for h in built[k][0])
        own: dict[str, list[str]] = {a: [] for a in apps}
        for k in union:
            users = [a for a in self.plan.image(k).apps if a in host]
            self.work += 1
            if len(users) == 1:
                own[users[0]].append(k)
        out = {}
        for app in apps:
            mine = [h for k in own[app] for h in built[k][0]]
            self.work += len(mine)
            here = Counter(key(h) for h in mine)
            held = {k for k in here if count[k] > here[k]}
            out[app] = _distinct(mine, key, held)
        return out

    def flat(self, app: str) -> dict[str | None, Pull]:
        """The flat variant (every app its own build from the OS base, not reproducible: a fresh blob
        per app, per layer and per rebuild): cold, the app's every layer; on an update of a category,
        its layers from that category's first step up. Keyed by category (None: cold)."""
        if app not in self._flat:
            out: dict[str | None, Pull] = {None: Pull(0, 0)}
            for key in reversed(self._paths[app]):          # from the top: what lies above
                own = self._flat_own(key)
                above = out[None]
                for category, pull in own.items():
                    out[category] = Pull(pull.bytes + above.bytes, pull.layers + above.layers,
                                         pull.unpacked + above.unpacked,
                                         (pull.stages[0] + (above.stages[0] if above.stages else ()),))
            self._flat[app] = out
        return self._flat[app]

    def _flat_own(self, key: str) -> dict[str | None, Pull]:
        """One image's own layers (None) and, per category, its layers from that category's first step."""
        if key not in self._flat_nodes:
            self.work += 1
            out: dict[str | None, Pull] = {None: Pull(0, 0, 0, ((),))}
            for s in reversed(self.plan.image(key).steps):
                if s.creates_layer:
                    top = out[None]
                    out[None] = Pull(top.bytes + (s.size or 0), top.layers + 1, top.unpacked + s.unpacked,
                                     (((s.size or 0, s.unpacked, s.inflated),) + top.stages[0],))
                out[s.category] = out[None]
            self._flat_nodes[key] = out
        return self._flat_nodes[key]

    def one_app_hosts(self, variant: str, updated: str | None = None) -> dict[str, Pull]:
        """Per app, what a Docker Engine host running only that app pulls (cold or on an update),
        summed along its chain of images once per node. Exact for the chain rule: along one chain
        the chain ids all differ, and a layer whose chain changed holds changed content, which no
        host holds yet, while one whose chain did not change is held."""
        cold = self._nodes(variant, None)
        after = self._nodes(variant, updated) if updated is not None else None
        total: dict[str, Pull] = {}
        for img in self.plan.images:                      # parents first
            below = total[img.parent] if img.parent else Pull(0, 0)
            self.work += 1
            if after is None:
                own = cold[img.key][0]
            elif after[img.key] is cold[img.key]:
                own = ()
            else:
                own = [h for h, c in zip(after[img.key][0], cold[img.key][0]) if h.chain != c.chain]
            total[img.key] = Pull(below.bytes + sum(h.size for h in own), below.layers + len(own),
                                  below.unpacked + sum(h.unpacked for h in own))
        return {app: total[self.plan.apps[app]] for app in self.plan.apps}

    # -- the floor: only changed content, counted once -----------------------------------------------

    def floor(self, apps: tuple[str, ...], updated: str | None = None) -> int:
        return self.floor_pull(apps, updated).bytes

    def floor_pull(self, apps: tuple[str, ...], updated: str | None = None) -> Pull:
        """The floor as a pull: the changed content only, downloaded and unpacked once (one pull of
        those layers alone, for the time model)."""
        if updated is None:
            return content_pull(self.host_layers(apps))
        return content_pull(h for h in self.host_layers(apps, PLANNED, updated) if h.category == updated)


# One question at a time (tests, exploring); the summary and the simulation use PlanCosts
# directly, so a plan's per-node figures are computed once.

def pull_cost(plan: Plan, apps: tuple[str, ...], host_kind: str, variant: str,
              *, updated: str | None = None, arriving: str | None = None) -> Pull:
    """Bytes and layers a host running `apps` downloads:
    cold (neither `updated` nor `arriving`), when `arriving` joins the others, or on an update."""
    costs = PlanCosts(plan)
    if arriving:
        if variant == FLAT:
            return costs.flat(arriving)[None]
        return costs.arrivals(apps, host_key(host_kind), variant)[arriving]
    return costs.pull(apps, host_kind, variant, updated)


def floor_cost(plan: Plan, apps: tuple[str, ...], *, updated: str | None = None,
               arriving: str | None = None) -> int:
    """The least any scheme could send: content the host lacks, counted once."""
    costs = PlanCosts(plan)
    if arriving:
        return costs.arrivals(apps, lambda h: h.content)[arriving].bytes
    return costs.floor(apps, updated)


# ----------------------------------------------------------------------------- the plan summary

@dataclass
class Row:
    label: str
    rate: float            # updates per month (0 for one-off cases)
    planned: int
    flat: int
    floor: int


@dataclass
class Scenario:
    name: str
    hosts: list[tuple[str, ...]]
    rows: list[Row] = field(default_factory=list)

    def monthly(self, attr: str) -> float:
        return sum(r.rate * getattr(r, attr) for r in self.rows if r.rate)


@dataclass
class LayerSizes:
    size_sources: dict[str, int]     # how many layers got their size from where
    unknown_layers: int


@dataclass
class CostSummary:
    host_kind: str
    scenarios: list[Scenario]
    size_sources: dict[str, int]     # how many layers got their size from where
    unknown_layers: int

    def to_dict(self) -> dict:
        return {
            "size_sources": self.size_sources,
            "unknown_layers": self.unknown_layers,
            "scenarios": [
                {"name": sc.name, "hosts": [list(h) for h in sc.hosts],
                 "rows": [asdict(r) for r in sc.rows],
                 "monthly": {k: sc.monthly(k) for k in ("flat", "planned", "floor")}}
                for sc in self.scenarios
            ],
        }


def layer_sizes(plan: Plan) -> LayerSizes:
    sources: dict[str, int] = {}
    unknown = 0
    for img in plan.images:
        for s in img.layers:
            sources[s.size_source] = sources.get(s.size_source, 0) + 1
            unknown += s.size is None
    return LayerSizes(dict(sorted(sources.items())), unknown)


def _rows(costs: PlanCosts, hosts: list[tuple[str, ...]], host_kind: str, with_arrival: bool) -> list[Row]:
    one_app = host_kind == DOCKER and all(len(h) == 1 for h in hosts)

    def planned(updated: str | None) -> int:
        if one_app:    # summed per node along each chain, not per host
            per_app = costs.one_app_hosts(PLANNED, updated)
            return sum(per_app[h[0]].bytes for h in hosts)
        return sum(costs.pull(h, host_kind, PLANNED, updated).bytes for h in hosts)

    def total(updated: str | None = None) -> tuple[int, int, int]:
        return (planned(updated), sum(costs.pull(h, host_kind, FLAT, updated).bytes for h in hosts),
                sum(costs.floor(h, updated) for h in hosts))

    rows = [Row("cold pull", 0, *total())]
    if with_arrival:
        apps = hosts[0]
        arrivals = costs.arrivals(apps, host_key(host_kind))
        floor = costs.arrivals(apps, lambda h: h.content)
        sums = (sum(p.bytes for p in arrivals.values()), sum(costs.flat(a)[None].bytes for a in apps),
                sum(p.bytes for p in floor.values()))
        rows.append(Row("add one app (others present)", 0, *(v // len(apps) for v in sums)))
    for cat in costs.plan.categories:
        rows.append(Row(f"update {cat.name}", cat.changes_per_month, *total(cat.name)))
    return rows


def summarize(plan: Plan, host_kind: str = DOCKER, costs: PlanCosts | None = None) -> CostSummary:
    costs = costs or PlanCosts(plan)
    apps = tuple(sorted(plan.apps))
    per_app = Scenario("one host per app", [(a,) for a in apps])
    per_app.rows = _rows(costs, per_app.hosts, host_kind, with_arrival=False)
    shared = Scenario("all apps on one host", [apps])
    shared.rows = _rows(costs, shared.hosts, host_kind, with_arrival=len(apps) > 1)
    sizes = layer_sizes(plan)
    return CostSummary(host_kind, [per_app, shared], sizes.size_sources, sizes.unknown_layers)


# ----------------------------------------------------------------------------- fleet simulation

@dataclass(frozen=True)
class Pipeline:
    """How an engine schedules one image pull: `downloads` layers at once sharing the link (0: all
    of them), and whether it unpacks each layer as soon as it and the one below are in (`overlap`),
    or only once every download is done."""
    downloads: int
    overlap: bool


PIPELINES = {
    # moby's distribution/xfer LayerDownloadManager: max-concurrent-downloads (3 by default); each
    # layer is registered (unpacked) when its download is done and its parent is registered. Seen in
    # the engine's pull progress: the 4th download starts when one of 3 ends, extracting follows in
    # order, the 268 MB model layer's while the layers above it still download.
    DOCKER: Pipeline(downloads=3, overlap=True),
    # dockerd on the containerd store pulls through containerd's client.Pull with WithPullUnpack: its
    # unpacker fetches (dockerd's limit, 3) and applies each layer once fetched, in order. Measured
    # with dockerd 26.1.5 on containerd 1.7.24: a cold pull within 1 % of this pipeline, 23 % off
    # fetch-then-unpack.
    DOCKER_CONTAINERD: Pipeline(downloads=3, overlap=True),
    # What the bench's containerd host runs: `ctr images pull` (containerd 1.6, its local path,
    # cmd/ctr/commands/images/pull.go): content.Fetch of every blob at once, then Image.Unpack.
    CONTAINERD: Pipeline(downloads=0, overlap=False),
}


def download_done(sizes: list[int], bytes_per_second: float, downloads: int) -> list[float]:
    """When each layer's download ends: layers start in order, at most `downloads` at once (0: all),
    sharing the link equally; a layer of 0 bytes (held) is done at once."""
    done = [0.0] * len(sizes)
    waiting = [i for i, size in enumerate(sizes) if size > 0]
    if downloads <= 0 or len(waiting) <= downloads:
        # All at once: the smallest ends first, then the link is shared by one fewer.
        now, below, left = 0.0, 0, len(waiting)
        for i in sorted(waiting, key=sizes.__getitem__):
            now += (sizes[i] - below) * left / bytes_per_second
            done[i], below, left = now, sizes[i], left - 1
        return done
    active = waiting[:downloads]                 # started, in order
    left = [float(sizes[i]) for i in active]     # their bytes still to come
    queued = iter(waiting[downloads:])
    now = 0.0
    while active:
        first = min(left)
        now += first * len(active) / bytes_per_second
        still, still_left = [], []
        for i, rest in zip(active, left):
            if rest - first <= 1e-6 * sizes[i]:
                done[i] = now
                nxt = next(queued, None)
                if nxt is not None:
                    still.append(nxt)
                    still_left.append(float(sizes[nxt]))
            else:
                still.append(i)
                still_left.append(rest - first)
        active, left = still, still_left
    return done


def pull_seconds(stage: Stage, bandwidth_bps: float, pipeline: Pipeline, costs: EngineCosts,
                 done: list[float] | None = None) -> float:
    """One image pull's layers through the engine's pipeline: downloads sharing the link, then each
    layer unpacked in order (`EngineCosts.unpack_seconds`). `done`: `download_done` of the stage,
    when already known."""
    write = 1 / costs.unpack_rate if costs.unpack_rate else 0.0     # inlined: runs per layer, per case
    decode = 1 / costs.inflate_rate if costs.inflate_rate else 0.0
    per_layer = costs.per_layer
    if not pipeline.overlap:      # the link is busy until the last download ends, however shared
        return (sum(d for d, _, _ in stage) * 8 / bandwidth_bps
                + sum(u * write + k * decode + per_layer for _, u, k in stage if u is not None))
    if done is None:
        done = download_done([d for d, _, _ in stage], bandwidth_bps / 8, pipeline.downloads)
    at = 0.0
    for (_, u, k), ends in zip(stage, done):
        if u is not None:
            at = max(at, ends) + u * write + k * decode + per_layer
    return max(at, max(done, default=0.0))


# The costs an engine's figures are read and written under (bench results, the state file).
ENGINE_COST_FIELDS = ("per_pull", "per_layer", "unpack_rate", "inflate_rate")


@dataclass(frozen=True)
class EngineCosts:
    """Fixed work per pull and per layer unpacked, and the rates a layer is unpacked at, beside the
    bytes: `unpack_rate` the bytes written per second, `inflate_rate` the bytes decoded from coded
    gzip blocks per second (0: not apart, the unpack rate stands for both)."""
    per_pull: float
    per_layer: float
    source: str          # "fleet file", "measured" or "assumed"
    unpack_rate: float = 100e6    # uncompressed bytes per second; 0: no time beside the link's
    inflate_rate: float = 0.0

    @classmethod
    def of(cls, figures: dict[str, float], source: str) -> EngineCosts:
        """From a bench's or a state file's figures (older ones lack the inflate rate)."""
        return cls(**{k: v for k, v in figures.items() if k in ENGINE_COST_FIELDS}, source=source)

    def unpack_seconds(self, unpacked: int, inflated: int) -> float:
        """One layer unpacked: its bytes written, the coded ones decoded, and the fixed work."""
        return ((unpacked / self.unpack_rate if self.unpack_rate else 0.0)
                + (inflated / self.inflate_rate if self.inflate_rate else 0.0) + self.per_layer)

    def seconds(self, pull: Pull, pulls: int, bandwidth_bps: float, host_kind: str) -> float:
        """The time model: per pull (manifest, config, bookkeeping: a pull that finds every layer held
        still costs it) + each image pull's layers through the host kind's pipeline
        (`pull_seconds`) + the bytes outside any layer (manifests, configs) over the link."""
        staged = sum(d for stage in pull.stages for d, _, _ in stage)
        return (pulls * self.per_pull + max(0, pull.bytes - staged) * 8 / bandwidth_bps
                + sum(pull_seconds(stage, bandwidth_bps, PIPELINES[host_kind], self) for stage in pull.stages))

    def to_dict(self) -> dict:
        return {"per_pull": self.per_pull, "per_layer": self.per_layer, "unpack_rate": self.unpack_rate,
                "inflate_rate": self.inflate_rate, "source": self.source}

    def describe(self) -> str:
        unpack = (f"unpacks {self.unpack_rate / 1e6:.3g} MB/s" if self.unpack_rate
                  else "no unpack time beside the link's")
        if self.inflate_rate:
            unpack += f", decodes gzip {self.inflate_rate / 1e6:.3g} MB/s"
        return f"{self.per_pull:g} s per pull, {self.per_layer:g} s per layer, {unpack} ({self.source})"


# Used only when neither the fleet file nor a bench measurement gives them; said so in the output.
ASSUMED_COSTS = EngineCosts(per_pull=0.3, per_layer=0.05, source="assumed", unpack_rate=100e6)


@dataclass
class Estimate:
    bytes: float = 0.0
    seconds: float = 0.0
    layers: float = 0.0
    unpacked: float = 0.0

    def add(self, pull: Pull, pulls: int, rate: float, bandwidth_bps: float, costs: EngineCosts,
            host_kind: str) -> None:
        self.bytes += rate * pull.bytes
        self.layers += rate * pull.layers
        self.unpacked += rate * pull.unpacked
        self.seconds += rate * costs.seconds(pull, pulls, bandwidth_bps, host_kind)

    def to_dict(self) -> dict:
        return {"bytes": round(self.bytes), "seconds": round(self.seconds, 3), "layers": round(self.layers, 3),
                "unpacked": round(self.unpacked)}


@dataclass
class GroupResult:
    name: str
    count: int
    apps: tuple[str, ...]
    host_kind: str
    bandwidth_bps: float
    cold: dict[str, Estimate]        # variant -> one host's cold start
    monthly: dict[str, Estimate]     # variant -> one host's updates in a month
    floor_cold: int
    floor_monthly: float
    costs: EngineCosts
    floor_seconds: float = 0.0       # one host's monthly updates, if only the changed content came
    floor_detail: Estimate | None = None   # the same floor: bytes, seconds, layers, unpacked

    def to_dict(self, labels: list[str]) -> dict:
        return {"name": self.name, "count": self.count, "apps": list(self.apps), "host_kind": self.host_kind,
                "bandwidth_bps": self.bandwidth_bps,
                "engine_costs": self.costs.to_dict(),
                "cold": {l: self.cold[l].to_dict() for l in labels},
                "monthly": {l: self.monthly[l].to_dict() for l in labels},
                "floor": {"cold": self.floor_cold, "monthly": round(self.floor_monthly),
                          "monthly_seconds": round(self.floor_seconds, 3)}}


def fleet_dict(results: list[GroupResult], labels: list[str], rates: dict[str, float]) -> dict:
    """`simulate --json`: the update rates, each group, and the fleet's totals (hosts × per host)."""
    return {
        "rates": rates,
        "groups": [r.to_dict(labels) for r in results],
        "fleet": {
            part: {l: round(sum(getattr(r, part)[l].bytes * r.count for r in results)) for l in labels}
            for part in ("cold", "monthly")
        },
    }


def simulate_group(plans: dict[str, tuple[PlanCosts, str]], name: str, count: int, apps: tuple[str, ...],
                   host_kind: str, bandwidth_bps: float, rates: dict[str, float],
                   costs: EngineCosts) -> GroupResult:
    """One host of the group, per variant. `plans`: label -> (the plan's per-node figures, variant
    rule); the same figures serve every group of the fleet."""
    cold: dict[str, Estimate] = {}
    monthly: dict[str, Estimate] = {}
    first = next(iter(plans.values()))[0]
    for label, (plan_costs, variant) in plans.items():
        cold[label] = Estimate()
        cold[label].add(plan_costs.pull(apps, host_kind, variant, timed=True), len(apps), 1, bandwidth_bps, costs,
                        host_kind)
        monthly[label] = Estimate()
        for category, rate in rates.items():
            if rate:
                pulls = sum(plan_costs.has_category(a, category) for a in apps)
                monthly[label].add(plan_costs.pull(apps, host_kind, variant, category, timed=True), pulls,
                                   rate, bandwidth_bps, costs, host_kind)
    floor = Estimate()
    for category, rate in rates.items():
        if rate:
            floor.add(first.floor_pull(apps, category), sum(first.has_category(a, category) for a in apps),
                      rate, bandwidth_bps, costs, host_kind)
    return GroupResult(name, count, apps, host_kind, bandwidth_bps, cold, monthly,
                       first.floor(apps), floor.bytes, costs, floor.seconds, floor)


# ----------------------------------------------------------------------------- the order's cost

# The hosts an order of categories is judged on when no fleet is given: one host running every
# app, of each kind, on this link, with the assumed engine costs (the stack file alone decides).
ORDER_BANDWIDTH_BPS = 100e6


def monthly_by_kind(plan: Plan, bandwidth_bps: float = ORDER_BANDWIDTH_BPS,
                    engine: dict[str, EngineCosts] | None = None,
                    costs: PlanCosts | None = None) -> dict[str, GroupResult]:
    """Per host kind, one host running every app: cold start, monthly updates and their floor."""
    costs = costs or PlanCosts(plan)
    rates = {c.name: c.changes_per_month for c in plan.categories}
    apps = tuple(sorted(plan.apps))
    engine = engine or {}
    return {kind: simulate_group({"planned": (costs, PLANNED)}, kind, 1, apps, kind, bandwidth_bps, rates,
                                 engine.get(kind, ASSUMED_COSTS))
            for kind in ALL_HOST_KINDS}


def monthly_of_fleet(plan: Plan, fleet: Fleet, measured: dict[str, dict[str, float]] | None = None,
                     costs: PlanCosts | None = None) -> list[GroupResult]:
    """One host of each group of `fleet`, as `simulate` figures it: the group's apps, kind and link,
    the fleet's update rates, the fleet file's engine costs, else `measured` ones (the state file's),
    else the assumed ones. Only the apps of `plan` count (a sample of a large family): a group left
    without apps is skipped."""
    costs = costs or PlanCosts(plan)
    rates = {c.name: fleet.updates.get(c.name, c.changes_per_month) for c in plan.categories}
    out = []
    for g in fleet.groups:
        apps = tuple(a for a in g.apps if a in plan.apps)
        if apps:
            out.append(simulate_group({"planned": (costs, PLANNED)}, g.name, g.count, apps, g.host_kind,
                                      g.bandwidth_bps, rates, fleet.engine_costs(g.host_kind, measured or {})))
    return out


def fleet_total(groups: Iterable[GroupResult], label: str | None = "planned") -> Estimate:
    """Every host of the groups: count × one host's monthly updates (`label`), or the floor (None)."""
    total = Estimate()
    for g in groups:
        one = g.monthly[label] if label else g.floor_detail
        for part in ("bytes", "seconds", "layers", "unpacked"):
            setattr(total, part, getattr(total, part) + g.count * getattr(one, part))
    return total


def order_objective(plan: Plan, fleet: Fleet | None = None) -> tuple[float, float]:
    """What a plan's order of categories costs a month, in seconds, then bytes (compared as a
    pair): over the fleet's hosts (never with measured engine costs: every command gets the same
    order), or without a fleet over one reference host per kind (`monthly_by_kind`)."""
    total = fleet_total(monthly_by_kind(plan).values() if fleet is None else monthly_of_fleet(plan, fleet))
    return round(total.seconds, 6), round(total.bytes)


@dataclass
class OrderSummary:
    """`plan`'s comparison of orders of categories: per host kind, one host running every app, its
    monthly updates under each order (label -> Estimate) and the floor (bytes and seconds); with a
    fleet, the same for all the fleet's hosts; and which hosts the order was judged on."""
    orders: dict[str, tuple[str, ...]]             # label -> categories, bottom first
    applied: str                                   # the label of the order the plan uses
    monthly: dict[str, dict[str, Estimate]]        # host kind -> label -> estimate
    floor: dict[str, Estimate]                     # host kind -> the floor
    security: dict[str, dict[str, float]]          # host kind -> label -> bytes of an update of `patched` / cold pull
    reasons: dict[str, str]                        # category -> why it moved
    bandwidth_bps: float
    engine: dict[str, EngineCosts]
    patched: str = ""
    judged_on: dict = field(default_factory=dict)  # the fleet file and its groups, or the reference hosts
    fleet: dict[str, Estimate] | None = None       # label -> every host of the fleet; "floor" too
    fleet_engine: dict[str, EngineCosts] = field(default_factory=dict)   # host kind -> the fleet row's

    def to_dict(self) -> dict:
        doc = {"orders": {k: list(v) for k, v in self.orders.items()}, "applied": self.applied,
               "bandwidth_bps": self.bandwidth_bps, "reasons": self.reasons,
               "engine_costs": {k: v.to_dict() for k, v in self.engine.items()},
               "monthly": {kind: {label: e.to_dict() for label, e in by.items()}
                           | {"floor": self.floor[kind].to_dict()} for kind, by in self.monthly.items()},
               "patch_of_cold_pull": {"category": self.patched, "share": self.security},
               "judged_on": self.judged_on}
        if self.fleet is not None:
            doc["fleet_monthly"] = {label: e.to_dict() for label, e in self.fleet.items()}
            doc["fleet_engine_costs"] = {k: v.to_dict() for k, v in self.fleet_engine.items()}
        return doc


def judged_on(fleet: Fleet | None, name: str = "") -> dict:
    """The hosts the order is judged on, for `plan`: the fleet file (`name` as the stack file
    gives it) and its groups, or the reference hosts."""
    if fleet is None:
        return {"reference": "one host per kind, each running every app", "host_kinds": list(ALL_HOST_KINDS),
                "bandwidth_bps": ORDER_BANDWIDTH_BPS}
    return {"fleet": name or str(fleet.path),
            "groups": [{"name": g.name, "count": g.count, "host_kind": g.host_kind, "apps": list(g.apps),
                        "bandwidth_bps": g.bandwidth_bps} for g in fleet.groups]}


def compare_orders(plans: dict[str, Plan], applied: str, reasons: dict[str, str], patched: str,
                   engine: dict[str, EngineCosts] | None = None,
                   bandwidth_bps: float = ORDER_BANDWIDTH_BPS, fleet: Fleet | None = None,
                   measured: dict[str, dict[str, float]] | None = None, fleet_name: str = "") -> OrderSummary:
    """The same apps planned in several orders (label -> plan), per host kind and, with a fleet,
    for all its hosts (engine costs as `simulate` takes them: the fleet file's, else `measured`);
    `patched`: the category whose update is shown beside a cold pull (the security patch)."""
    engine = {kind: (engine or {}).get(kind, ASSUMED_COSTS) for kind in ALL_HOST_KINDS}
    monthly: dict[str, dict[str, Estimate]] = {kind: {} for kind in ALL_HOST_KINDS}
    floor: dict[str, Estimate] = {}
    patch: dict[str, dict[str, float]] = {kind: {} for kind in ALL_HOST_KINDS}
    on_fleet: dict[str, Estimate] | None = None if fleet is None else {}
    fleet_engine: dict[str, EngineCosts] = {}
    for label, plan in plans.items():
        costs = PlanCosts(plan)
        apps = tuple(sorted(plan.apps))
        for kind, group in monthly_by_kind(plan, bandwidth_bps, engine, costs).items():
            monthly[kind][label] = group.monthly["planned"]
            floor[kind] = group.floor_detail
            cold = costs.pull(apps, kind, PLANNED).bytes
            patch[kind][label] = round(costs.pull(apps, kind, PLANNED, patched).bytes / cold, 6) if cold else 0.0
        if on_fleet is not None:
            groups = monthly_of_fleet(plan, fleet, measured, costs)
            on_fleet[label] = fleet_total(groups)
            on_fleet["floor"] = fleet_total(groups, None)
            fleet_engine = {g.host_kind: g.costs for g in groups}
    return OrderSummary({label: tuple(c.name for c in p.categories) for label, p in plans.items()}, applied,
                        monthly, floor, patch, reasons, bandwidth_bps, engine, patched,
                        judged_on(fleet, fleet_name), on_fleet, dict(sorted(fleet_engine.items())))


# ----------------------------------------------------------------------------- real pulls

def registry_layers(ids: Ids, image: Image, unpacked: dict[str, int] | None = None) -> list[HostLayer]:
    """An image's layers as hosts pulling it see them: the blob digest, chained; `unpacked`: the
    uncompressed bytes per blob digest, when known (else the size stands for them, all inflated)."""
    unpacked = unpacked or {}
    return chained(ids, ((layer.digest, layer.digest, layer.size, unpacked[layer.digest])
                         if layer.digest in unpacked else (layer.digest, layer.digest, layer.size)
                         for layer in image.layers))


def predict_pulls(pulls: list[Image], held: list[Image], host_kind: str,
                  unpacked: dict[str, int] | None = None) -> Pull:
    """Bytes and layers a host downloads to pull the images `pulls` (from a registry, in order)
    while holding `held`: manifests and configs, and every layer its rule (`host_key`) does not let
    it reuse; and the bytes it unpacks. Exact where the cost model estimates: digests and sizes
    come from the registry. The totals are those of the stages (one pass): every blob in a registry
    has one size, and none is empty, so a layer downloaded is one of more than 0 bytes."""
    ids = Ids()
    have = holding(h for image in held for h in registry_layers(ids, image, unpacked))
    fetched: set[Key] = set()
    stages = tuple(stage_of(registry_layers(ids, image, unpacked), host_key(host_kind), have, fetched)
                   for image in pulls)
    layers = [layer for stage in stages for layer in stage]
    manifests = sum(len(image.manifest_raw or b"") + len(image.config_raw) for image in pulls)
    return Pull(manifests + sum(d for d, _, _ in layers), sum(1 for d, _, _ in layers if d),
                sum(u for _, u, _ in layers if u is not None), stages)
