"""`layerwise bench pull`: real pulls through a bandwidth-limited loopback link.

Builds (or reuses) the planned family and a *flat* variant of the same apps (each app its own build
from the OS base, no shared cache, pushed by the engine as teams do without a plan), and one updated
family per category. Then, on a Docker Engine host and a containerd host of their own (`hosts`),
pulls through a throttling proxy in front of the registry (`throttle`) and records per case the
bytes that crossed the link, the bytes the cost model predicted from the manifests, and the time.
Every process it starts is stopped on the way out, Ctrl-C included; the registry is left as it was.
"""

from __future__ import annotations

import os
import shutil
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
from ..oci.policy import RegistryPolicy
from ..oci.reference import Reference
from ..oci.registry import Registry
from ..plan import contexts
from ..plan.cost import CONTAINERD, DOCKER, predict_pulls
from ..plan.model import Plan, sha256_text
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
    seconds: float = 0.0
    layers: int = 0         # layers the host downloaded (predicted)
    floor: int | None = None  # bytes of the content that changed (update cases)

    @property
    def error(self) -> float:
        return (self.measured - self.predicted) / self.measured if self.measured else 0.0


@dataclass
class BenchReport:
    bandwidth_bps: float
    cases: list[Case] = field(default_factory=list)
    engine_costs: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """`bench pull --json` and bench-pull.json."""
        return {
            "bandwidth_bps": self.bandwidth_bps,
            "engine_costs": self.engine_costs,
            "cases": [{"host_kind": c.host_kind, "variant": c.variant, "case": c.name, "pulls": c.pulls,
                       "seconds": round(c.seconds, 3), "measured_bytes": c.measured, "header_bytes": c.headers,
                       "predicted_bytes": c.predicted, "error": round(c.error, 6), "layers": c.layers,
                       "changed_bytes": c.floor} for c in self.cases],
        }


# ----------------------------------------------------------------------------- the images

def _name_tag(ref: str) -> tuple[str, str]:
    parsed = Reference.parse(ref)
    return parsed.repository, parsed.reference


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
            fp_tag = "lw-flat-" + sha256_text("flat", plan.image(plan.apps[app]).fingerprint)[:16]
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
    name, tag = _name_tag(ref)
    return f"localhost:{proxy_port}/{name}:{tag}"


def run_cases(host, proxy, registry: Registry, cases: list[Case], setups: dict[str, list[str]],
              say: Say) -> None:
    """Each case on a cold host: setup pulls straight from the registry, measured pulls through
    the throttled proxy."""
    for case in cases:
        host.wipe()
        held = setups.get(case.name + "/" + case.variant, [])
        for ref in held:
            host.pull(ref)
        predicted = predict_pulls(_images(registry, case.pulls), _images(registry, held), host.kind)
        case.predicted, case.layers = predicted.bytes, predicted.layers
        proxy.reset_counters()
        case.seconds = sum(host.pull(_via(proxy.port, ref)) for ref in case.pulls)
        traffic = proxy.reset_counters()
        case.measured = traffic.body_down
        case.headers = traffic.bytes_down - traffic.body_down
        say(f"{host.kind:<10} {case.variant:<7} {case.name:<28} {case.seconds:6.1f} s  "
            f"{case.measured:>12,} B measured, {case.predicted:>12,} B predicted")


def fit_engine_costs(cases: list[Case], bandwidth_bps: float) -> dict[str, float]:
    """Least squares for the fixed work per pull and per layer: seconds − bytes/bandwidth."""
    rows = [(len(c.pulls), c.layers, c.seconds - c.measured * 8 / bandwidth_bps) for c in cases]
    spp = sum(p * p for p, _, _ in rows)
    spl = sum(p * l for p, l, _ in rows)
    sll = sum(l * l for _, l, _ in rows)
    spr = sum(p * r for p, _, r in rows)
    slr = sum(l * r for _, l, r in rows)
    det = spp * sll - spl * spl
    if det <= 0:
        per_pull, per_layer = (spr / spp if spp else 0.0), 0.0
    else:
        per_pull = (spr * sll - slr * spl) / det
        per_layer = (spp * slr - spl * spr) / det
    if per_layer < 0:
        per_layer, per_pull = 0.0, spr / spp if spp else 0.0
    if per_pull < 0:
        per_pull, per_layer = 0.0, slr / sll if sll else 0.0
    return {"per_pull": round(max(0.0, per_pull), 4), "per_layer": round(max(0.0, per_layer), 4)}


def loopback_policy(stack: Family, flags: tuple[str, ...] = ()) -> RegistryPolicy:
    """The bench's policy: the user's when set, else loopback registries only (its hosts pull
    through a proxy on loopback, and the images it builds come from there too)."""
    chosen = RegistryPolicy.resolve(flags, stack=stack)
    if chosen.registries:
        return chosen
    return RegistryPolicy(("localhost:*", "127.0.0.1:*", "[::1]:*"), "the bench's default (loopback only)")


def bench_pull(stack_path: Path, bandwidth_bps: float, host_kinds: list[str], *,
               updates: bool = True, say: Say = print, policy: RegistryPolicy | None = None,
               options: BuildOptions | None = None) -> BenchReport:
    from .hosts import ContainerdHost, DockerHost
    from .throttle import ThrottledProxy

    stack = load_family(stack_path)
    policy = policy or loopback_policy(stack)
    say("building the planned family (layerwise build --push)")
    plan, _, results = build_family(stack, push=True, policy=policy, options=options)
    failed = [r.key for r in results if r.status not in ("built", "skipped")]
    if failed:
        raise UserError(f"the family did not build ({', '.join(failed)}); run layerwise build to see why")
    apps = sorted(plan.apps)
    layered = {a: plan.image(plan.apps[a]).ref for a in apps}
    say("building the flat variant")
    flat = build_flat(stack, plan, say, policy=policy, options=options)

    first, second = apps[0], apps[-1]
    cases = [Case(f"cold {second}", "layered", "", [layered[second]]),
             Case(f"cold {second}", "flat", "", [flat[second]])]
    setups: dict[str, list[str]] = {}
    if first != second:
        warm = f"warm {second} (has {first})"
        cases += [Case(warm, "layered", "", [layered[second]]), Case(warm, "flat", "", [flat[second]])]
        setups[warm + "/layered"] = [layered[first]]
        setups[warm + "/flat"] = [flat[first]]

    work = Path(tempfile.mkdtemp(prefix="layerwise-bench-"))
    try:
        if updates and isinstance(stack, ImportedFamily):
            say("no update cases for an import folder (they change a stack file's steps): cold and warm only")
        elif updates:
            for cat in plan.categories:
                if not any(s.category == cat.name for img in plan.images for s in img.steps):
                    continue
                say(f"building the family after an update of {cat.name}")
                upd_path = updated_stack(stack, cat.name, work / f"upd-{cat.name}")
                upd_stack = load_stack(upd_path)
                upd_plan, _, upd_results = build_family(upd_stack, push=True, policy=policy, options=options)
                if any(r.status not in ("built", "skipped") for r in upd_results):
                    raise UserError(f"the family updated in {cat.name} did not build")
                name = f"update {cat.name}"
                case = Case(name, "layered", "", [upd_plan.image(upd_plan.apps[a]).ref for a in apps])
                case.floor = _changed_bytes(stack, upd_stack)
                cases.append(case)
                setups[name + "/layered"] = [layered[a] for a in apps]

        report = BenchReport(bandwidth_bps)
        with Registry(registry_host(stack)) as registry:
            host_of = {DOCKER: DockerHost, CONTAINERD: ContainerdHost}
            with ThrottledProxy(target=_loopback(stack.registry), bandwidth_bps=bandwidth_bps) as proxy:
                for kind in host_kinds:
                    kind_cases = [Case(c.name, c.variant, kind, c.pulls, floor=c.floor) for c in cases]
                    say(f"pulling on a {kind} host through {bandwidth_bps / 1e6:g} Mbit/s")
                    with host_of[kind]() as host:
                        run_cases(host, proxy, registry, kind_cases, setups, say)
                    report.cases += kind_cases
                    report.engine_costs[kind] = fit_engine_costs(kind_cases, bandwidth_bps)
        with locked(stack.path):      # not while a build of the stack writes it
            state = load_state(stack.path)
            state.pull_costs.update(report.engine_costs)
            state.save()
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _changed_bytes(before: Stack, after: Stack) -> int:
    """Compressed bytes of content the update really changed: layers of the updated family whose
    blobs the family did not have before, counted once. (A step rebuilt with unchanged output is
    not new: layerwise's layers are reproducible.)"""
    known = {l.digest for rec in load_state(before.path).images.values() for l in rec.layers}
    new = {l.digest: l.size for rec in load_state(after.path).images.values() for l in rec.layers
           if l.digest not in known}
    return sum(new.values())


def _loopback(registry: str) -> tuple[str, int]:
    """The registry's address for the proxy to forward to; the bench only works on loopback."""
    where = Reference.parse(registry + "/x")
    if not where.is_loopback():
        raise UserError(f"bench pull needs the registry on loopback, not {registry}")
    _, _, port = where.registry.rpartition(":")
    return "127.0.0.1", int(port) if port.isdigit() else 80
