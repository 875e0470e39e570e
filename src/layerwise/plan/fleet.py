"""The fleet file for `layerwise simulate`: host groups, the apps each runs, links and update rates.

    bandwidth: 100Mbit            # default link of every host
    host_kind: docker             # docker (chain rule) or containerd (blob rule)
    groups:
      inference: {count: 40, apps: [app1, app2]}
      batch:     {count: 10, apps: [app2], bandwidth: 1Gbit, host_kind: containerd}
    updates: {code: 30}           # changes per month, overriding the stack file's
    per_pull: 0.3s                # engine costs; measured by `layerwise bench pull` when left out
    per_layer: 50ms
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..units import parse_bandwidth, parse_duration
from .cost import ASSUMED_COSTS, EngineCosts
from .model import Plan
from .spec import read_yaml, validate_model


class GroupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(default=1, ge=0)
    apps: list[str] = Field(min_length=1)
    bandwidth: str | float | None = None
    host_kind: Literal["docker", "containerd"] | None = None


class FleetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bandwidth: str | float = "100Mbit"
    host_kind: Literal["docker", "containerd"] = "docker"
    per_pull: str | float | None = None
    per_layer: str | float | None = None
    groups: dict[str, GroupSpec] = Field(min_length=1)
    updates: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class HostGroup:
    name: str
    count: int
    apps: tuple[str, ...]
    bandwidth_bps: float
    host_kind: str


@dataclass(frozen=True)
class Fleet:
    path: Path
    groups: tuple[HostGroup, ...]
    updates: dict[str, float]            # category -> changes per month (overrides)
    per_pull: float | None               # seconds, when the fleet file sets them
    per_layer: float | None

    def engine_costs(self, host_kind: str, measured: dict[str, dict[str, float]]) -> EngineCosts:
        """The fixed costs per pull and per layer: the fleet file's, else the bench's, else assumed."""
        if self.per_pull is not None or self.per_layer is not None:
            return EngineCosts(self.per_pull if self.per_pull is not None else ASSUMED_COSTS.per_pull,
                               self.per_layer if self.per_layer is not None else ASSUMED_COSTS.per_layer,
                               "fleet file")
        if host_kind in measured:
            return EngineCosts(**measured[host_kind], source="measured")
        return ASSUMED_COSTS


def load_fleet(path: str | Path, plan: Plan) -> Fleet:
    path = Path(path)
    data, lines = read_yaml(path)
    spec = validate_model(FleetSpec, data, path, lines, "with groups: of hosts and the apps they run")

    def parsed(parse, value, where):
        try:
            return parse(value)
        except ValueError as e:
            raise UserError(str(e), path, lines.at(where)) from None

    default_bw = parsed(parse_bandwidth, spec.bandwidth, ("bandwidth",))
    groups = []
    for name, g in spec.groups.items():
        for i, app in enumerate(g.apps):
            if app not in plan.apps:
                raise UserError(f"group {name!r} runs {app!r}, which is not an app of the stack file "
                                f"(apps: {', '.join(sorted(plan.apps))})", path, lines.at(("groups", name, "apps", i)))
        bw = (parsed(parse_bandwidth, g.bandwidth, ("groups", name, "bandwidth")) if g.bandwidth is not None
              else default_bw)
        groups.append(HostGroup(name, g.count, tuple(sorted(set(g.apps))), bw, g.host_kind or spec.host_kind))
    categories = {c.name for c in plan.categories}
    for cat, rate in spec.updates.items():
        if cat not in categories:
            raise UserError(f"updates.{cat}: not a category of the stack file ({', '.join(sorted(categories))})",
                            path, lines.at(("updates", cat)))
        if rate < 0:
            raise UserError(f"updates.{cat}: a rate cannot be negative", path, lines.at(("updates", cat)))
    return Fleet(
        path=path, groups=tuple(groups), updates=dict(spec.updates),
        per_pull=parsed(parse_duration, spec.per_pull, ("per_pull",)) if spec.per_pull is not None else None,
        per_layer=parsed(parse_duration, spec.per_layer, ("per_layer",)) if spec.per_layer is not None else None,
    )

