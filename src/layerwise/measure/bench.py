"""`layerwise bench pull`: real pulls through a bandwidth-limited loopback link.

Builds (or reuses) the planned family and a *flat* variant of the same apps (each app its own build
from the OS base, no shared cache, pushed by the engine as teams do without a plan), and one updated
family per category; for a stack file, all of that twice: in the order it asks for and in the
order the planner recommends (a copy under `<project>-opt`, unless the two are the same). Then, on
hosts of their own (`hosts`: Docker Engine, Docker Engine on the containerd image store,
containerd), pulls through a throttling proxy in front of the registry (`throttle`) and records per
case the bytes that crossed the link, the bytes and unpacked bytes the cost model predicted from the
manifests, and the median time of `runs` pulls. It fits each kind's costs per pull and per layer and
its unpack rate to those times, and gives every case the seconds the fitted model predicts.
Every process it starts is stopped on the way out, Ctrl-C included; the registry is left as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..dockerfiles import render_dockerfile
from ..errors import UserError
from ..family.build import build_family, connect, registry_host
from ..family.loader import Family, ImportedFamily, load_family
from ..family.state import LOCK_SUFFIX, STATE_FILE, load_state, locked
from ..oci.engine import BuildOptions
from ..oci.images import RegistryImage
from ..oci.mediatypes import OCI_MANIFEST
from ..oci.mutate import config_bytes
from ..oci.policy import RegistryPolicy
from ..oci.reference import Reference
from ..oci.registry import Registry
from ..plan import contexts
from ..plan.cost import (
    CONTAINERD,
    DOCKER,
    DOCKER_CONTAINERD,
    PIPELINES,
    EngineCosts,
    Pull,
    Stage,
    download_done,
    predict_pulls,
    pull_seconds,
)
from ..plan.model import Plan, sha256_text
from ..plan.planner import choose_order, order_of
from ..plan.spec import Stack, load_stack, read_yaml

Say = Callable[[str], None]


@dataclass
class Case:
    name: str
    variant: str            # layered | flat
    host_kind: str
    pulls: list[str]        # image refs pulled (registry names)
    predicted: int = 0      # bytes: manifests, configs and the layers the host's rule fetches
    measured: int = 0       # bytes that crossed the link (HTTP bodies; headers apart)
    headers: int = 0        # HTTP header bytes that crossed the link
    seconds: float = 0.0    # the median of the runs
    layers: int = 0         # layers the host downloaded (predicted)
    floor: int | None = None  # bytes of the content that changed (update cases)
    order: str = "stack"    # the layered family's order of categories: stack | recommended
    unpacked: int = 0       # uncompressed bytes of the layers whose chain the host lacked (predicted)
    floor_unpacked: int | None = None   # uncompressed bytes of the content that changed
    runs: list[float] = field(default_factory=list)   # seconds of each run
    predicted_seconds: float = 0.0      # the fitted time model's
    floor_digests: list[str] = field(default_factory=list)   # the blobs of the content that changed
    stages: tuple[Stage, ...] = ()      # per image pulled, the layers it downloads or unpacks (predicted)

    @property
    def error(self) -> float:
        return (self.measured - self.predicted) / self.measured if self.measured else 0.0

    @property
    def seconds_error(self) -> float:
        return (self.seconds - self.predicted_seconds) / self.seconds if self.seconds else 0.0

    @property
    def family(self) -> str:
        return self.variant if self.variant == "flat" or self.order == "stack" else f"{self.variant} ({self.order})"

    @property
    def pull(self) -> Pull:
        return Pull(self.predicted, self.layers, self.unpacked, self.stages)


@dataclass
class BenchReport:
    bandwidth_bps: float
    cases: list[Case] = field(default_factory=list)
    engine_costs: dict[str, dict[str, float]] = field(default_factory=dict)
    orders: dict[str, list[str]] = field(default_factory=dict)    # stack | recommended -> categories
    rates: dict[str, float] = field(default_factory=dict)         # category -> changes per month
    not_run: dict[str, str] = field(default_factory=dict)         # host kind -> why this machine cannot

    def goals(self) -> dict:
        """Per host kind and order: monthly update bytes and seconds (the stack file's rates) against
        the floor, and the patch of the first category against a cold pull; measured and predicted.
        The floor's seconds are measured too: pulls of the changed layers alone (`floor_images`)."""
        out: dict = {}
        first = next(iter(self.orders.get("stack", [])), None)
        for kind in sorted({c.host_kind for c in self.cases}):
            for order in self.orders:
                cases = {c.name: c for c in self.cases
                         if c.host_kind == kind and c.variant == "layered" and c.order == order}
                updates = [(self.rates.get(n.split(" ", 1)[1], 0.0), c) for n, c in cases.items()
                           if n.startswith("update ")]
                floors = [(self.rates.get(n.split(" ", 1)[1], 0.0), c) for n, c in cases.items()
                          if n.startswith("floor ")]
                if not updates:
                    continue
                fitted = self.engine_costs.get(kind)
                costs = EngineCosts.of(fitted, "measured") if fitted else None
                floor_bytes = sum(r * (c.floor or 0) for r, c in updates)
                floor_unpack, unpack = _unpacking(costs, floors), _unpacking(costs, updates)
                cold = next((c for n, c in cases.items() if n.startswith("cold ")), None)
                patch = cases.get(f"update {first}")
                out.setdefault(kind, {})[order] = {
                    "monthly_bytes": {"measured": round(sum(r * c.measured for r, c in updates)),
                                      "predicted": round(sum(r * c.predicted for r, c in updates)),
                                      "floor": round(floor_bytes)},
                    "monthly_seconds": {"measured": round(sum(r * c.seconds for r, c in updates), 3),
                                        "predicted": round(sum(r * c.predicted_seconds for r, c in updates), 3),
                                        "floor_measured": round(sum(r * c.seconds for r, c in floors), 3),
                                        "floor_predicted": round(sum(r * c.predicted_seconds for r, c in floors), 3),
                                        "floor_unpack": round(floor_unpack, 6), "unpack": round(unpack, 6)},
                    "patch_of_cold": ({"category": first, "measured": round(patch.measured / cold.measured, 6),
                                       "predicted": round(patch.predicted / cold.predicted, 6)}
                                      if patch and cold and cold.measured and cold.predicted else None),
                }
        return out

    def to_dict(self) -> dict:
        """`bench pull --json` and bench-pull.json."""
        return {
            "bandwidth_bps": self.bandwidth_bps,
            "engine_costs": self.engine_costs,
            "orders": self.orders,
            "rates": self.rates,
            "not_run": self.not_run,
            "goals": self.goals(),
            "cases": [{"host_kind": c.host_kind, "variant": c.variant, "order": c.order, "case": c.name,
                       "pulls": c.pulls, "seconds": round(c.seconds, 3), "runs": [round(r, 3) for r in c.runs],
                       "predicted_seconds": round(c.predicted_seconds, 3),
                       "seconds_error": round(c.seconds_error, 6),
                       "measured_bytes": c.measured, "header_bytes": c.headers,
                       "predicted_bytes": c.predicted, "error": round(c.error, 6), "layers": c.layers,
                       "unpacked_bytes": c.unpacked, "changed_bytes": c.floor,
                       "changed_unpacked_bytes": c.floor_unpacked,
                       "stages": [[list(layer) for layer in stage] for stage in c.stages]} for c in self.cases],
        }


# ----------------------------------------------------------------------------- the images

def _unpacking(costs: EngineCosts | None, rated: list[tuple[float, Case]]) -> float:
    """Monthly seconds the time model gives these (rate, case) pairs' layers to unpack."""
    if costs is None:
        return 0.0
    return sum(r * costs.unpack_seconds(u, k) for r, c in rated for stage in c.stages for _, u, k in stage
               if u is not None)


def _name_tag(ref: str) -> tuple[str, str]:
    parsed = Reference.parse(ref)
    return parsed.repository, parsed.reference


def flat_tag(plan: Plan, app: str) -> str:
    """The flat variant's tag for this content: lw-flat-<hash of the app image's fingerprint>."""
    return "lw-flat-" + sha256_text("flat", plan.image(plan.apps[app]).fingerprint)[:16]


def flat_refs(plan: Plan) -> dict[str, str]:
    """Where the flat variant of each app lives: <registry>/<project>-flat/<app>:latest."""
    return {app: f"{plan.registry}/{plan.project}-flat/{app}:latest" for app in plan.apps}


def build_flat(stack: Family, plan: Plan, say: Say, *, policy: RegistryPolicy | None = None,
               options: BuildOptions | None = None) -> dict[str, str]:
    """Each app in one Dockerfile from the OS base, built alone without cache and pushed by the
    engine: identical content in two apps gets different digests, as in the seed's Fig. 3/5.
    (For an import folder: each app's original Dockerfile, as the team built it before.)
    Skipped when the registry already holds it for this content (tag lw-flat-<fingerprint>)."""
    engine, registry = connect(stack, push=True, policy=policy)
    engine.options = options or engine.options
    refs = flat_refs(plan)
    last_build = -10.0
    try:
        if engine.inspect(plan.base) is None:
            base = Reference.parse(plan.base)
            engine.pull(base.name, base.reference)
        for app, ref in sorted(refs.items()):
            repo = Reference.parse(ref).name
            name, _ = _name_tag(ref)
            fp_tag = flat_tag(plan, app)
            if registry.manifest_digest(name, fp_tag):
                say(f"flat {app}: present ({fp_tag})")
                if registry.manifest_digest(name, "latest") != registry.manifest_digest(name, fp_tag):
                    present = RegistryImage(f"{repo}:{fp_tag}", registry=registry)
                    registry.put_manifest_bytes(name, "latest", present.manifest_raw, present.manifest_media_type)
                continue
            # Teams' separate builds happen at different times; the legacy builder stamps
            # whole seconds, so two builds within one second could match by accident.
            time.sleep(max(0.0, last_build + 1.1 - time.monotonic()))
            started = last_build = time.monotonic()
            if isinstance(stack, ImportedFamily):
                _build_original(engine, stack, app, f"{repo}:{fp_tag}")
            else:
                _build_flat_stack(engine, stack, plan, app, f"{repo}:{fp_tag}")
            engine.push(repo, fp_tag)
            engine.tag(f"{repo}:{fp_tag}", repo, "latest")
            engine.push(repo, "latest")
            say(f"flat {app}: built and pushed in {time.monotonic() - started:.1f} s")
    finally:
        registry.close()
        engine.close()
    return refs


def _build_original(engine, family: ImportedFamily, app: str, tag: str) -> None:
    spec = next(a for a in family.spec.apps if a.name == app)
    if spec.context is None:
        raise UserError(f"app {app} came without its build context: its original cannot be built "
                        "(import it again with its context)", family.path)
    engine.build(spec.context, tag, {}, nocache=True, dockerfile=spec.original)


def _build_flat_stack(engine, stack: Stack, plan: Plan, app: str, tag: str) -> None:
    steps = [s for img in plan.chain(plan.apps[app]) for s in img.steps]
    with tempfile.TemporaryDirectory(prefix="layerwise-flat-") as tmp:
        for s in steps:
            contexts.copy_reproducibly(stack.root.resolve(), list(s.sources), Path(tmp))
        (Path(tmp) / "Dockerfile").write_text(render_dockerfile(
            plan.base, [(s.category, s.instruction) for s in steps],
            [f"flat variant of {app}: every step from the OS base, one build"]))
        engine.build(Path(tmp), tag, {}, nocache=True)


def updated_stack(stack: Stack, category: str, dest: Path) -> Path:
    """A copy of the stack whose `category` changed in every app, under names of its own.

    COPY sources of the category get new content (a file added to a folder, bytes appended to a
    file); a category without COPY gets one more RUN. Everything else stays byte-identical.
    """
    # Hard links keep a copy of a large context cheap; a file about to change is unlinked first.
    shutil.copytree(stack.root, dest, copy_function=os.link,
                    ignore=shutil.ignore_patterns(STATE_FILE, STATE_FILE + LOCK_SUFFIX,   # its own state
                                                  ".*.tmp-*", ".*.tmp"))  # half-written
    doc, _ = read_yaml(stack.path)     # the loader with the limits, as every YAML reader
    prefix = f"{stack.project}-upd-{category}"
    doc["project"] = prefix
    _keep_fleet(stack, doc)
    for entry in (doc.get("images") or {}).values():
        entry["name"] = f"{prefix}/{entry['name']}"
    touched: set[str] = set()
    for app, steps in stack.apps.items():
        copies = [s for s in steps if s.category == category and s.sources]
        for step in copies:
            for rel in step.sources:
                if rel in touched:
                    continue
                touched.add(rel)
                target = dest / rel
                if target.is_dir():
                    (target / "layerwise-update.txt").write_text(f"update of {category}\n")
                else:
                    _unshare(target)
                    with open(target, "ab") as f:
                        f.write(f"\n# layerwise bench: update of {category}\n".encode())
        if not copies and any(s.category == category for s in steps):
            value = doc["apps"][app][category]
            if isinstance(value, dict):
                value = dict(value, steps=_as_list(value["steps"]) + [_update_run(category)])
            else:
                value = _as_list(value) + [_update_run(category)]
            doc["apps"][app][category] = value
    path = dest / stack.path.name
    _unshare(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _keep_fleet(stack: Stack, doc: dict) -> None:
    """A copy elsewhere names the same fleet file (`fleet:` is relative to the stack file)."""
    if getattr(stack, "fleet", None) is not None:
        doc["fleet"] = str(stack.fleet.path.resolve())


def _unshare(path: Path) -> None:
    """Give a hard-linked copy its own inode, so changing it leaves the original alone."""
    tmp = path.with_name(path.name + ".lw-tmp")
    shutil.copy2(path, tmp)
    os.replace(tmp, path)


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def _update_run(category: str) -> str:
    return f"RUN echo 'update of {category}' > /etc/layerwise-update-{category}"


# ----------------------------------------------------------------------------- the pulls

def _images(registry: Registry, refs: list[str]) -> list[RegistryImage]:
    return [RegistryImage(r, registry=registry) for r in refs]


def _via(proxy_port: int, ref: str) -> str:
    parsed = Reference.parse(ref)
    at = f"@{parsed.digest}" if parsed.digest else f":{parsed.reference}"
    return f"localhost:{proxy_port}/{parsed.repository}{at}"


def _pinned(registry: Registry, repository: str, tag: str) -> str:
    """repository@digest of what `tag` names now: the bench pulls by digest, so that nobody pushing
    to the same tag meanwhile (the registry is shared) changes what is measured."""
    name = Reference.parse(repository + ":x").repository
    digest = registry.manifest_digest(name, tag)
    if not digest:
        raise UserError(f"{repository}:{tag} is not in the registry after the bench built it")
    return f"{repository}@{digest}"


def _app_refs(registry: Registry, plan: Plan) -> dict[str, str]:
    """Each app's image, by the digest its fingerprint tag names (unique to its content)."""
    out = {}
    for app, key in plan.apps.items():
        img = plan.image(key)
        out[app] = _pinned(registry, img.repository, img.fingerprint_tag)
    return out


def uncompressed_sizes(registry: Registry, refs: list[str]) -> dict[str, int]:
    """Blob digest -> uncompressed bytes of every layer of `refs`: what a host unpacks. Read by
    streaming each blob once through gunzip (registries list only compressed sizes)."""
    out: dict[str, int] = {}
    for image in _images(registry, refs):
        for i, layer in enumerate(image.layers):
            if layer.digest in out:
                continue
            total = 0
            with image.open_layer(i) as stored:
                stream = gzip.GzipFile(fileobj=stored, mode="rb") if layer.compression == "gzip" else stored
                while chunk := stream.read(1 << 20):
                    total += len(chunk)
            out[layer.digest] = total
    return out


def floor_images(registry: Registry, refs: list[str], changed: set[str]) -> list[str]:
    """The floor of an update as images to pull: per app in turn, the changed layers (blob digests)
    no earlier one carries, alone on an empty root filesystem, in the app's own repository (which
    holds the blobs) and pushed by digest, no tag. On a cold host they cost what any scheme must:
    the changed content downloaded and unpacked once, and a pull of each app that has some."""
    out: list[str] = []
    taken: set[str] = set()
    for ref, image in zip(refs, _images(registry, refs), strict=True):
        picked = [layer for layer in image.layers if layer.digest in changed and layer.digest not in taken]
        if not picked:
            continue
        taken.update(layer.digest for layer in picked)
        name = Reference.parse(ref).repository
        source = json.loads(image.config_raw)
        config = config_bytes({"architecture": source.get("architecture", "amd64"),
                               "os": source.get("os", "linux"), "config": {},
                               "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in picked]}})
        config_digest = registry.push_bytes(name, config)
        manifest = json.loads(image.manifest_raw or b"{}")
        media_type = manifest.get("mediaType") or OCI_MANIFEST
        descriptors = {d["digest"]: d for d in manifest.get("layers", [])}
        raw = json.dumps({"schemaVersion": 2, "mediaType": media_type,
                          "config": {**manifest["config"], "digest": config_digest, "size": len(config)},
                          "layers": [descriptors[layer.digest] for layer in picked]}).encode()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        registry.put_manifest_bytes(name, digest, raw, media_type)
        out.append(f"{Reference.parse(ref).registry}/{name}@{digest}")
    return out


SHORT_CASE_SECONDS = 1.0     # a case this quick gets three times the runs: its noise is a larger share


def run_cases(host, proxy, registry: Registry, cases: list[Case], setups: dict[str, list[str]],
              say: Say, runs: int = 1, unpacked: dict[str, int] | None = None) -> None:
    """Each case `runs` times on a cold host (three times that for a case under SHORT_CASE_SECONDS):
    setup pulls straight from the registry, measured pulls through the throttled proxy; the case's
    seconds are the median of its runs. The runs go in rounds over all the cases, not one case's
    runs in a row: the machine drifts (seen: identical 0.1 s pulls 20 % apart for minutes), and in
    rounds a drift falls on every case alike. Before each measured pull the host's disk is synced,
    so that no case pays for the writeback of the one before or of its own setup."""
    held = {id(case): setups.get(f"{case.name}/{case.variant}/{case.order}", []) for case in cases}
    for case in cases:
        predicted = predict_pulls(_images(registry, case.pulls), _images(registry, held[id(case)]), host.kind,
                                  unpacked)
        case.predicted, case.layers, case.unpacked = predicted.bytes, predicted.layers, predicted.unpacked
        case.stages = predicted.stages
        case.runs = []
    wanted = {id(case): runs for case in cases}
    for round_ in range(1, 3 * runs + 1):
        todo = [case for case in cases if len(case.runs) < wanted[id(case)]]
        if not todo:
            break
        say(f"{host.kind}: round {round_}, {len(todo)} case(s)")
        for case in todo:
            case.runs.append(_run_once(host, proxy, case, held[id(case)]))
            if len(case.runs) == runs and statistics.median(case.runs) < SHORT_CASE_SECONDS:
                wanted[id(case)] = 3 * runs
    for case in cases:
        case.seconds = statistics.median(case.runs)
        say(f"{host.kind:<17} {case.family:<22} {case.name:<28} {case.seconds:6.1f} s (median of "
            f"{len(case.runs)})  {case.measured:>12,} B measured, {case.predicted:>12,} B predicted")


def _run_once(host, proxy, case: Case, held: list[str]) -> float:
    """One run of a case: the host wiped, given what the case holds, synced; the pulls timed."""
    host.wipe()
    for ref in held:
        host.pull(ref)
    os.sync()
    proxy.reset_counters()
    seconds = sum(host.pull(_via(proxy.port, ref)) for ref in case.pulls)
    traffic = proxy.reset_counters()
    case.measured = max(case.measured, traffic.body_down)
    case.headers = max(case.headers, traffic.bytes_down - traffic.body_down)
    return seconds


def fit_engine_costs(cases: list[Case], bandwidth_bps: float, host_kind: str) -> dict[str, float]:
    """The engine costs that make the time model (`EngineCosts.seconds`, through the kind's pipeline)
    fit these pulls best: per pull, per layer unpacked, the unpack rate (bytes written) and the
    inflate rate (bytes decoded from coded gzip blocks), none negative.

    The errors minimized are relative (each case's error over its measured seconds): the model is
    judged in per cent of each case, and an absolute fit lets the 10-second pulls set a per-pull cost
    that triples a 0.1-second one. The rates and the per-layer cost sit inside the pipeline (an
    unpack waits for its download), so they are searched on a grid, coarse then fine; for each
    point the per-pull cost, linear, is solved exactly."""
    pipeline = PIPELINES[host_kind]
    bytes_per_second = bandwidth_bps / 8
    # What does not depend on the costs, once: when each layer's download ends, and the link time of
    # the bytes outside the layers.
    prepared = []
    for c in cases:
        staged = sum(d for stage in c.stages for d, _, _ in stage)
        done = [download_done([d for d, _, _ in stage], bytes_per_second, pipeline.downloads)
                for stage in c.stages]
        prepared.append((c, max(0, c.predicted - staged) / bytes_per_second, done, 1 / max(c.seconds, 0.01)))

    def fitted(point: tuple[float, float, float]) -> tuple[float, float]:
        """(residual, per pull) for this (unpack rate, inflate rate, cost per layer)."""
        costs = EngineCosts(0.0, point[2], "fit", point[0], point[1])
        rows = []
        for c, extra, done, weight in prepared:
            model = extra + sum(pull_seconds(stage, bandwidth_bps, pipeline, costs, ends)
                                for stage, ends in zip(c.stages, done, strict=True))
            rows.append((len(c.pulls) * weight, (c.seconds - model) * weight))
        squares = sum(x * x for x, _ in rows)
        per_pull = max(0.0, sum(x * y for x, y in rows) / squares) if squares else 0.0
        return sum((y - per_pull * x) ** 2 for x, y in rows), per_pull

    def best_of(unpacks: list[float], inflates: list[float], per_layers: list[float], best: tuple) -> tuple:
        for point in itertools.product(unpacks, inflates, per_layers):
            residual, per_pull = fitted(point)
            if residual < best[0] - 1e-12:
                best = (residual, per_pull, point)
        return best

    # Rates from 10 MB/s to 10 GB/s (0: no time of theirs), per layer 0 to 0.2 s; then around the
    # best point, in steps halved each round.
    rates = [0.0] + [10e6 * 1.3 ** i for i in range(27)]
    best = best_of(rates, rates, [0.01 * i for i in range(21)], (float("inf"), 0.0, (0.0, 0.0, 0.0)))
    for round_ in range(1, 8):
        unpack, inflate, per_layer = best[2]
        ratio, step = 1.3 ** (1 / 2 ** round_), 0.01 / 2 ** round_
        best = best_of(_around(unpack, ratio), _around(inflate, ratio),
                       [per_layer + step * i for i in range(-3, 4) if per_layer + step * i >= 0], best)
    _, per_pull, (unpack, inflate, per_layer) = best
    return {"per_pull": round(per_pull, 4), "per_layer": round(per_layer, 4), "unpack_rate": round(unpack),
            "inflate_rate": round(inflate)}


def _around(rate: float, ratio: float) -> list[float]:
    return [rate * ratio ** i for i in range(-3, 4)] if rate else [0.0]


def predict_seconds(cases: list[Case], costs: dict[str, float], bandwidth_bps: float, host_kind: str) -> None:
    """Each case's seconds as the time model gives them with the fitted costs."""
    model = EngineCosts.of(costs, "measured")
    for c in cases:
        c.predicted_seconds = model.seconds(c.pull, len(c.pulls), bandwidth_bps, host_kind)


def loopback_policy(stack: Family, flags: tuple[str, ...] = ()) -> RegistryPolicy:
    """The bench's policy: the user's when set, else loopback registries only (its hosts pull
    through a proxy on loopback, and the images it builds come from there too)."""
    chosen = RegistryPolicy.resolve(flags, stack=stack)
    if chosen.registries:
        return chosen
    return RegistryPolicy(("localhost:*", "127.0.0.1:*", "[::1]:*"), "the bench's default (loopback only)")


def ordered_stack(stack: Stack, order: tuple[str, ...], dest: Path) -> Path:
    """A copy of the stack planned in `order`, under names of its own (`<project>-opt`)."""
    shutil.copytree(stack.root, dest, copy_function=os.link,
                    ignore=shutil.ignore_patterns("layerwise.state.json", ".*.tmp-*", ".*.tmp", "bench-pull"))
    doc = yaml.safe_load(stack.path.read_text())
    prefix = f"{stack.project}-opt"
    doc["project"] = prefix
    _keep_fleet(stack, doc)
    for entry in (doc.get("images") or {}).values():
        entry["name"] = f"{prefix}/{entry['name']}"
    doc["order"] = list(order)
    path = dest / stack.path.name
    _unshare(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _host_class(kind: str):
    from .hosts import ContainerdHost, DockerContainerdHost, DockerHost
    return {DOCKER: DockerHost, DOCKER_CONTAINERD: DockerContainerdHost, CONTAINERD: ContainerdHost}[kind]


def _layered_cases(stack: Stack, plan: Plan, order: str, updates: bool, work: Path, say: Say,
                   policy: RegistryPolicy, options: BuildOptions | None,
                   setups: dict[str, list[str]], registry: Registry) -> list[Case]:
    """Cold, warm and (with updates) one case per category of the layered family in one order."""
    apps = sorted(plan.apps)
    layered = _app_refs(registry, plan)
    first, second = apps[0], apps[-1]
    cases = [Case(f"cold {second}", "layered", "", [layered[second]], order=order)]
    if first != second:
        warm = f"warm {second} (has {first})"
        cases.append(Case(warm, "layered", "", [layered[second]], order=order))
        setups[f"{warm}/layered/{order}"] = [layered[first]]
    if not updates:
        return cases
    for cat in plan.categories:
        if not any(s.category == cat.name for img in plan.images for s in img.steps):
            continue
        say(f"building the family ({order} order) after an update of {cat.name}")
        upd_path = updated_stack(stack, cat.name, work / f"upd-{order}-{cat.name}")
        upd_stack = load_stack(upd_path)
        upd_plan, _, upd_results = build_family(upd_stack, push=True, policy=policy, options=options)
        if any(r.status not in ("built", "skipped") for r in upd_results):
            raise UserError(f"the family updated in {cat.name} did not build")
        name = f"update {cat.name}"
        upd_refs = _app_refs(registry, upd_plan)
        case = Case(name, "layered", "", [upd_refs[a] for a in apps], order=order)
        changed = _changed_layers(stack, upd_stack)
        case.floor, case.floor_digests = sum(changed.values()), sorted(changed)
        cases.append(case)
        setups[f"{name}/layered/{order}"] = [layered[a] for a in apps]
        floor = floor_images(registry, case.pulls, set(changed))
        if floor:       # pulled on a cold host: the changed content alone
            cases.append(Case(f"floor {cat.name}", "layered", "", floor, order=order))
    return cases


def bench_pull(stack_path: Path, bandwidth_bps: float, host_kinds: list[str], *,
               updates: bool = True, say: Say = print, policy: RegistryPolicy | None = None,
               options: BuildOptions | None = None, runs: int = 3, orders: bool = True,
               order: str | None = None) -> BenchReport:
    """`order`: `stack` or `optimize` in place of the stack file's `order:`."""
    from dataclasses import replace

    from .hosts import HostUnsupported
    from .throttle import ThrottledProxy

    stack = load_family(stack_path)
    if order is not None and isinstance(stack, Stack):
        stack = replace(stack, order=order)
    policy = policy or loopback_policy(stack)
    say("building the planned family (layerwise build --push)")
    plan, _, results = build_family(stack, push=True, policy=policy, options=options)
    failed = [r.key for r in results if r.status not in ("built", "skipped")]
    if failed:
        raise UserError(f"the family did not build ({', '.join(failed)}); run layerwise build to see why")
    apps = sorted(plan.apps)
    say("building the flat variant")
    flat = build_flat(stack, plan, say, policy=policy, options=options)
    report = BenchReport(bandwidth_bps)
    report.rates = {c.name: c.changes_per_month for c in plan.categories}
    report.orders["stack"] = [c.name for c in plan.categories]

    first, second = apps[0], apps[-1]
    setups: dict[str, list[str]] = {}
    work = Path(tempfile.mkdtemp(prefix="layerwise-bench-"))
    pins = Registry(registry_host(stack))
    try:
        flat = {a: _pinned(pins, Reference.parse(ref).name, flat_tag(plan, a)) for a, ref in flat.items()}
        if updates and isinstance(stack, ImportedFamily):
            say("no update cases for an import folder (they change a stack file's steps): cold and warm only")
        is_stack = not isinstance(stack, ImportedFamily)
        cases = _layered_cases(stack, plan, "stack", updates and is_stack, work, say, policy, options, setups,
                               pins)
        cases.append(Case(f"cold {second}", "flat", "", [flat[second]]))
        if first != second:
            warm = f"warm {second} (has {first})"
            cases.append(Case(warm, "flat", "", [flat[second]]))
            setups[f"{warm}/flat/stack"] = [flat[first]]
        if orders and is_stack:
            recommended = choose_order(stack).recommended
            if recommended != order_of(stack):
                say(f"building the family in the recommended order: {' → '.join(recommended)}")
                opt_stack = load_stack(ordered_stack(stack, recommended, work / "opt"))
                opt_plan, _, opt_results = build_family(opt_stack, push=True, policy=policy, options=options)
                if any(r.status not in ("built", "skipped") for r in opt_results):
                    raise UserError("the family in the recommended order did not build")
                report.orders["recommended"] = list(recommended)
                cases += _layered_cases(opt_stack, opt_plan, "recommended", updates, work, say, policy,
                                        options, setups, pins)
            else:
                say("the recommended order is the stack file's: one order to measure")

        with Registry(registry_host(stack)) as registry:
            say("reading the layers' uncompressed sizes from the registry")
            unpacked = uncompressed_sizes(registry, sorted({r for c in cases for r in c.pulls}
                                                           | {r for refs in setups.values() for r in refs}))
            for c in cases:
                if c.floor is not None:
                    c.floor_unpacked = sum(unpacked.get(d, 0) for d in c.floor_digests)
            with ThrottledProxy(target=_loopback(stack.registry), bandwidth_bps=bandwidth_bps) as proxy:
                for kind in host_kinds:
                    kind_cases = [Case(c.name, c.variant, kind, c.pulls, floor=c.floor, order=c.order,
                                       floor_unpacked=c.floor_unpacked) for c in cases]
                    say(f"pulling on a {kind} host through {bandwidth_bps / 1e6:g} Mbit/s, {runs} run(s) a case")
                    try:
                        with _host_class(kind)() as host:
                            run_cases(host, proxy, registry, kind_cases, setups, say, runs, unpacked)
                    except HostUnsupported as e:
                        say(f"{kind}: not run on this machine: {e}")
                        report.not_run[kind] = str(e)
                        continue
                    report.cases += kind_cases
                    report.engine_costs[kind] = fit_engine_costs(kind_cases, bandwidth_bps, kind)
                    predict_seconds(kind_cases, report.engine_costs[kind], bandwidth_bps, kind)
        with locked(stack.path):      # not while a build of the stack writes it
            state = load_state(stack.path)
            state.pull_costs.update(report.engine_costs)
            state.save()
        return report
    finally:
        pins.close()
        shutil.rmtree(work, ignore_errors=True)


def _changed_bytes(before: Stack, after: Stack) -> int:
    """Compressed bytes of content the update really changed: layers of the updated family whose
    blobs the family did not have before, counted once. (A step rebuilt with unchanged output is
    not new: layerwise's layers are reproducible.)"""
    return sum(_changed_layers(before, after).values())


def _changed_layers(before: Stack, after: Stack) -> dict[str, int]:
    known = {l.digest for rec in load_state(before.path).images.values() for l in rec.layers}
    return {l.digest: l.size for rec in load_state(after.path).images.values() for l in rec.layers
            if l.digest not in known}


def _loopback(registry: str) -> tuple[str, int]:
    """The registry's address for the proxy to forward to; the bench only works on loopback."""
    where = Reference.parse(registry + "/x")
    if not where.is_loopback():
        raise UserError(f"bench pull needs the registry on loopback, not {registry}")
    _, _, port = where.registry.rpartition(":")
    return "127.0.0.1", int(port) if port.isdigit() else 80
