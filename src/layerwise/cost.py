"""The cost model: bytes a host pulls cold, when an app arrives, and on each update.

Every layer of an app gets three identities:
- `chain`: the layer with everything below it. The **Docker Engine** reuses a layer only when it
  holds the same chain; from the first miss on it downloads everything.
- `blob`: the compressed blob. **containerd** reuses any blob it holds, whatever sits below it.
- `content`: what the step put there, for the **floor** (only the changed content, counted once).

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Plan, Step, sha256_text

DOCKER, CONTAINERD = "docker", "containerd"
HOST_KINDS = (DOCKER, CONTAINERD)
PLANNED, FLAT, TREE = "planned", "flat", "tree"


@dataclass(frozen=True)
class HostLayer:
    chain: str
    blob: str
    content: str
    step: Step

    def key(self, host_kind: str) -> str:
        return self.chain if host_kind == DOCKER else self.blob

    @property
    def size(self) -> int:
        return self.step.size or 0


def app_steps(plan: Plan, app: str) -> list[Step]:
    return [s for img in plan.chain(plan.apps[app]) for s in img.steps]


def app_layers(plan: Plan, app: str, variant: str = PLANNED, updated: str | None = None) -> list[HostLayer]:
    """The app's layers, bottom first, after an update of category `updated` (None: as built)."""
    steps = app_steps(plan, app)
    first = next((i for i, s in enumerate(steps) if s.category == updated), None) if updated else None
    out: list[HostLayer] = []
    chain = below = ""
    for i, step in enumerate(steps):
        changed = step.category == updated
        rebuilt = first is not None and i >= first
        content = sha256_text(step.identity, "updated" if changed else "")
        below = sha256_text(below, content)      # everything the step ran on, as content
        if not step.creates_layer:
            continue
        if variant == PLANNED:
            blob = content if step.keyword in ("COPY", "ADD") else below
        elif variant == TREE:   # shared where the tree shares, new on every rebuild
            blob = sha256_text("tree", below, "rebuilt" if rebuilt else "")
        else:   # a build of its own, not reproducible: a fresh blob per app and per rebuild
            blob = sha256_text("flat", app, str(i), "rebuilt" if rebuilt else "")
        chain = sha256_text(chain, blob)
        out.append(HostLayer(chain, blob, content, step))
    return out


def distinct_bytes(layers: list[HostLayer], key) -> int:
    """Bytes of the layers, each counted once by `key` (chain: Docker Engine, blob: containerd)."""
    return sum({key(h): h.size for h in layers}.values())


def _count(layers: list[HostLayer], key) -> int:
    return len({key(h) for h in layers})


@dataclass
class Pull:
    """What one host downloads in one case."""
    bytes: int
    layers: int


def pull_cost(plan: Plan, apps: tuple[str, ...], host_kind: str, variant: str,
              *, updated: str | None = None, arriving: str | None = None) -> Pull:
    """Bytes and layers a host running `apps` downloads:
    cold (neither `updated` nor `arriving`), when `arriving` joins the others, or on an update."""
    key = lambda h: h.key(host_kind)
    if arriving:
        held = {key(h) for a in apps if a != arriving for h in app_layers(plan, a, variant)}
        new = [h for h in app_layers(plan, arriving, variant) if key(h) not in held]
    elif updated:
        held = {key(h) for a in apps for h in app_layers(plan, a, variant)}
        new = [h for a in apps for h in app_layers(plan, a, variant, updated) if key(h) not in held]
    else:
        new = [h for a in apps for h in app_layers(plan, a, variant)]
    return Pull(distinct_bytes(new, key), _count(new, key))


def floor_cost(plan: Plan, apps: tuple[str, ...], *, updated: str | None = None,
               arriving: str | None = None) -> int:
    """The least any scheme could send: content the host lacks, counted once."""
    content = lambda h: h.content
    if arriving:
        held = {h.content for a in apps if a != arriving for h in app_layers(plan, a)}
        return distinct_bytes([h for h in app_layers(plan, arriving) if h.content not in held], content)
    if updated:
        return distinct_bytes([h for a in apps for h in app_layers(plan, a, PLANNED, updated)
                       if h.step.category == updated], content)
    return distinct_bytes([h for a in apps for h in app_layers(plan, a)], content)


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
class CostSummary:
    host_kind: str
    scenarios: list[Scenario]
    size_sources: dict[str, int]     # how many layers got their size from where
    unknown_layers: int


def _rows(plan: Plan, hosts: list[tuple[str, ...]], host_kind: str, with_arrival: bool) -> list[Row]:
    def total(**case) -> tuple[int, int, int]:
        return (sum(pull_cost(plan, h, host_kind, PLANNED, **case).bytes for h in hosts),
                sum(pull_cost(plan, h, host_kind, FLAT, **case).bytes for h in hosts),
                sum(floor_cost(plan, h, **case) for h in hosts))

    rows = [Row("cold pull", 0, *total())]
    if with_arrival:
        apps = hosts[0]
        sums = [0, 0, 0]
        for app in apps:
            for i, v in enumerate(total(arriving=app)):
                sums[i] += v
        rows.append(Row("add one app (others present)", 0, *(v // len(apps) for v in sums)))
    for cat in plan.categories:
        rows.append(Row(f"update {cat.name}", cat.changes_per_month, *total(updated=cat.name)))
    return rows


def summarize(plan: Plan, host_kind: str = DOCKER) -> CostSummary:
    apps = tuple(sorted(plan.apps))
    per_app = Scenario("one host per app", [(a,) for a in apps])
    per_app.rows = _rows(plan, per_app.hosts, host_kind, with_arrival=False)
    shared = Scenario("all apps on one host", [apps])
    shared.rows = _rows(plan, shared.hosts, host_kind, with_arrival=len(apps) > 1)
    sources: dict[str, int] = {}
    unknown = 0
    for img in plan.images:
        for s in img.layers:
            sources[s.size_source] = sources.get(s.size_source, 0) + 1
            unknown += s.size is None
    return CostSummary(host_kind, [per_app, shared], dict(sorted(sources.items())), unknown)


# ----------------------------------------------------------------------------- fleet simulation

@dataclass(frozen=True)
class EngineCosts:
    """Fixed work per pull and per layer downloaded, beside the bytes."""
    per_pull: float
    per_layer: float
    source: str          # "fleet file", "measured" or "assumed"


# Used only when neither the fleet file nor a bench measurement gives them; said so in the output.
ASSUMED_COSTS = EngineCosts(per_pull=0.3, per_layer=0.05, source="assumed")


@dataclass
class Estimate:
    bytes: float = 0.0
    seconds: float = 0.0
    layers: float = 0.0

    def add(self, pull: Pull, pulls: int, rate: float, bandwidth_bps: float, costs: EngineCosts) -> None:
        self.bytes += rate * pull.bytes
        self.layers += rate * pull.layers
        if pull.layers:
            self.seconds += rate * (pull.bytes * 8 / bandwidth_bps + pull.layers * costs.per_layer
                                    + pulls * costs.per_pull)


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


def simulate_group(plans: dict[str, tuple[Plan, str]], name: str, count: int, apps: tuple[str, ...],
                   host_kind: str, bandwidth_bps: float, rates: dict[str, float],
                   costs: EngineCosts) -> GroupResult:
    """One host of the group, per variant. `plans`: label -> (plan, variant rule)."""
    cold: dict[str, Estimate] = {}
    monthly: dict[str, Estimate] = {}
    first_plan = next(iter(plans.values()))[0]
    for label, (plan, variant) in plans.items():
        cold[label] = Estimate()
        cold[label].add(pull_cost(plan, apps, host_kind, variant), len(apps), 1, bandwidth_bps, costs)
        monthly[label] = Estimate()
        for category, rate in rates.items():
            if rate:
                pulls = sum(any(s.category == category for s in app_steps(plan, a)) for a in apps)
                monthly[label].add(pull_cost(plan, apps, host_kind, variant, updated=category), pulls,
                                   rate, bandwidth_bps, costs)
    floor_monthly = sum(rate * floor_cost(first_plan, apps, updated=c) for c, rate in rates.items())
    return GroupResult(name, count, apps, host_kind, bandwidth_bps, cold, monthly,
                       floor_cost(first_plan, apps), floor_monthly, costs)


# ----------------------------------------------------------------------------- real pulls

def predict_pulls(pulls: list, held: list, host_kind: str) -> Pull:
    """Bytes and layers a host downloads to pull the images `pulls` (registry manifests, in order)
    while holding `held`: manifests and configs, and every layer its rule does not let it reuse.

    Exact where the cost model estimates: digests and sizes come from the registry.
    """
    chains: set[str] = set()
    blobs: set[str] = set()

    def walk(manifest):
        chain = ""
        for layer in manifest.layers:
            chain = sha256_text(chain, layer.digest)
            yield layer, chain

    for m in held:
        for layer, chain in walk(m):
            chains.add(chain)
            blobs.add(layer.digest)
    total = Pull(0, 0)
    for m in pulls:
        total.bytes += len(m.raw) + m.config_size
        missed = False
        for layer, chain in walk(m):
            if host_kind == DOCKER:
                missed = missed or chain not in chains   # from the first miss on, everything
                fetch = missed
            else:
                fetch = layer.digest not in blobs
            if fetch:
                total.bytes += layer.size
                total.layers += 1
            chains.add(chain)
            blobs.add(layer.digest)
    return total
