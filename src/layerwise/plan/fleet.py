"""The fleet file for `layerwise simulate`: host groups, the apps each runs, links and update rates.

    bandwidth: 100Mbit            # default link of every host
    host_kind: docker             # docker (classic store), docker-containerd (containerd image store), containerd
    groups:
      inference: {count: 40, apps: [app1, app2]}
      batch:     {count: 10, apps: [app2], bandwidth: 1Gbit, host_kind: containerd}
    updates: {code: 30}           # changes per month, overriding the stack file's
    per_pull: 0.3s                # engine costs; measured by `layerwise bench pull` when left out
    per_layer: 50ms
    unpack_rate: 60MB/s           # uncompressed bytes written per second
    inflate_rate: 150MB/s         # bytes decoded from coded gzip blocks per second (left out: in unpack_rate)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..units import parse_bandwidth, parse_duration
from .cost import ALL_HOST_KINDS, ASSUMED_COSTS, EngineCosts
from .model import Plan
from .spec import Stack, read_yaml, validate_model

HostKind = Literal["docker", "docker-containerd", "containerd"]
assert set(HostKind.__args__) == set(ALL_HOST_KINDS)


class GroupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(default=1, ge=0)
    apps: list[str] = Field(min_length=1)
    bandwidth: str | float | None = None
    host_kind: HostKind | None = None


class FleetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bandwidth: str | float = "100Mbit"
    host_kind: HostKind = "docker"
    per_pull: str | float | None = None
    per_layer: str | float | None = None
    unpack_rate: str | float | None = None
    inflate_rate: str | float | None = None
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
    unpack_rate: float | None = None     # bytes per second, when the fleet file sets it
    inflate_rate: float | None = None

    def engine_costs(self, host_kind: str, measured: dict[str, dict[str, float]]) -> EngineCosts:
        """The costs per pull, per layer and of unpacking: the fleet file's, else the bench's, else assumed."""
        given = {k: v for k, v in (("per_pull", self.per_pull), ("per_layer", self.per_layer),
                                   ("unpack_rate", self.unpack_rate), ("inflate_rate", self.inflate_rate))
                 if v is not None}
        if given:
            return replace(ASSUMED_COSTS, **given, source="fleet file")
        if host_kind in measured:
            return EngineCosts.of(measured[host_kind], "measured")
        return ASSUMED_COSTS


def load_fleet(path: str | Path, plan: Plan | Stack) -> Fleet:
    """The fleet file, its apps and categories checked against those of `plan` (or of a stack
    file naming it under `fleet:`)."""
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
        unpack_rate=(parsed(lambda t: _rate(t, "unpack_rate"), spec.unpack_rate, ("unpack_rate",))
                     if spec.unpack_rate is not None else None),
        inflate_rate=(parsed(lambda t: _rate(t, "inflate_rate"), spec.inflate_rate, ("inflate_rate",))
                      if spec.inflate_rate is not None else None),
    )


def _rate(text: str | float, key: str) -> float:
    """Bytes per second from "60MB/s" (any bandwidth unit, converted) or a plain number of bytes/s."""
    try:
        rate = (float(text) if isinstance(text, (int, float)) and not isinstance(text, bool)
                else parse_bandwidth(text) / 8)
    except ValueError:
        rate = 0.0
    if rate <= 0:
        raise ValueError(f"{key} must be a rate above zero, such as 150MB/s: {text!r}")
    return rate

