"""The cost model: bytes a host pulls cold and on each update, planned vs flat, with the floor.

Planned layers are identified by their place in the tree, so apps that share an image share its
layers. Flat layers are identified per app: every app is its own build from the OS base, so even
identical content gets other digests and is pulled again (the seed's Fig. 3/5). The floor is the
content that changed, counted once. This is the Docker Engine's rule (a layer is reused only on the
same parent chain); the OS base is the same in every variant and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Plan, Step


@dataclass(frozen=True)
class HostLayer:
    place: tuple          # identity under the variant's rule (what a host can reuse)
    content: str          # identity of the content (for the floor)
    step: Step
    position: int         # index of the step in the app's full chain


def planned_layers(plan: Plan, app: str) -> list[HostLayer]:
    out, position = [], 0
    for img in plan.chain(plan.apps[app]):
        for i, step in enumerate(img.steps):
            if step.creates_layer:
                out.append(HostLayer(("planned", img.key, i), step.identity, step, position))
            position += 1
    return out


def flat_layers(plan: Plan, app: str) -> list[HostLayer]:
    return [HostLayer(("flat", app, h.position), h.content, h.step, h.position)
            for h in planned_layers(plan, app)]


def app_steps(plan: Plan, app: str) -> list[Step]:
    return [s for img in plan.chain(plan.apps[app]) for s in img.steps]


def changed_by(plan: Plan, app: str, layers: list[HostLayer], category: str) -> list[HostLayer]:
    """Layers an update of `category` replaces in this app: from its first step of it upwards."""
    steps = app_steps(plan, app)
    first = next((i for i, s in enumerate(steps) if s.category == category), None)
    return [] if first is None else [h for h in layers if h.position >= first]


def _bytes(layers, key) -> int:
    distinct = {key(h): h.step.size or 0 for h in layers}
    return sum(distinct.values())


@dataclass
class Row:
    label: str
    rate: float            # updates per month (0 for cold)
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
    scenarios: list[Scenario]
    size_sources: dict[str, int]     # how many layers got their size from where
    unknown_layers: int


def _host_rows(plan: Plan, host: tuple[str, ...]) -> list[Row]:
    planned = {a: planned_layers(plan, a) for a in host}
    flat = {a: flat_layers(plan, a) for a in host}
    place = lambda h: h.place
    content = lambda h: h.content
    all_planned = [h for a in host for h in planned[a]]
    all_flat = [h for a in host for h in flat[a]]
    rows = [Row("cold pull", 0, _bytes(all_planned, place), _bytes(all_flat, place),
                _bytes(all_planned, content))]
    for cat in plan.categories:
        p = [h for a in host for h in changed_by(plan, a, planned[a], cat.name)]
        f = [h for a in host for h in changed_by(plan, a, flat[a], cat.name)]
        floor = [h for h in p if h.step.category == cat.name]
        rows.append(Row(f"update {cat.name}", cat.changes_per_month,
                        _bytes(p, place), _bytes(f, place), _bytes(floor, content)))
    return rows


def _add_rows(a: list[Row], b: list[Row]) -> list[Row]:
    return [Row(x.label, x.rate, x.planned + y.planned, x.flat + y.flat, x.floor + y.floor)
            for x, y in zip(a, b)]


def _scenario(plan: Plan, name: str, hosts: list[tuple[str, ...]]) -> Scenario:
    rows: list[Row] | None = None
    for host in hosts:
        host_rows = _host_rows(plan, host)
        rows = host_rows if rows is None else _add_rows(rows, host_rows)
    return Scenario(name, hosts, rows or [])


def add_app_row(plan: Plan) -> Row:
    """The seed's measurement: pull one more app onto a host that already runs the others
    (averaged over the apps)."""
    apps = sorted(plan.apps)
    totals = [0, 0, 0]
    for app in apps:
        others = [a for a in apps if a != app]
        have_p = {h.place for a in others for h in planned_layers(plan, a)}
        have_c = {h.content for a in others for h in planned_layers(plan, a)}
        new_p = [h for h in planned_layers(plan, app) if h.place not in have_p]
        new_c = [h for h in planned_layers(plan, app) if h.content not in have_c]
        totals[0] += _bytes(new_p, lambda h: h.place)
        totals[1] += _bytes(flat_layers(plan, app), lambda h: h.place)
        totals[2] += _bytes(new_c, lambda h: h.content)
    n = len(apps)
    return Row("add one app (others present)", 0, totals[0] // n, totals[1] // n, totals[2] // n)


def summarize(plan: Plan) -> CostSummary:
    apps = sorted(plan.apps)
    per_app = _scenario(plan, "one host per app", [(a,) for a in apps])
    shared = _scenario(plan, "all apps on one host", [tuple(apps)])
    if len(apps) > 1:
        shared.rows.insert(1, add_app_row(plan))
    sources: dict[str, int] = {}
    unknown = 0
    for img in plan.images:
        for s in img.layers:
            sources[s.size_source] = sources.get(s.size_source, 0) + 1
            unknown += s.size is None
    return CostSummary([per_app, shared], dict(sorted(sources.items())), unknown)
