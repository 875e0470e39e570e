"""`layerwise build`: build and push the planned family in dependency order, incrementally.

`decide` is pure: from the plan, which fingerprint tags already exist, and the state file, it says
per image build or skip and why. `Builder` carries the decisions out on the real engine and registry:
parents before children, independent subtrees in parallel, a failure stopping only its own subtree,
and a human tag moved only after the image is pushed under its fingerprint tag.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..dockerfiles import parse_instructions
from ..errors import UserError
from ..oci.engine import ENGINE_LOST, BuildFailed, BuildOptions, ChosenBuilder, Engine, check_dockerfile, choose_builder
from ..oci.images import EngineImage, Image, RegistryImage
from ..oci.mediatypes import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST
from ..oci.mutate import NormalizedLayer, config_bytes, normalize_config, normalize_layer
from ..oci.policy import RegistryPolicy
from ..oci.reference import Reference
from ..oci.registry import Registry
from ..plan.model import ImageNode, Plan
from ..plan.planner import build_plan
from ..plan.spec import Stack
from .generate import BASE_NAME_LABEL, FINGERPRINT_LABEL, write_tree
from .loader import Family, ImportedFamily, dockerfile_of, family_plan
from .state import ImageRecord, LayerRecord, State, load_state, locked

BASE_DIGEST_LABEL = "org.opencontainers.image.base.digest"

BUILD, SKIP, NOT_SELECTED = "build", "skip", "not selected"


class Interrupted(Exception):
    """A worker's build stopped because the whole build was interrupted (Ctrl-C, SIGTERM)."""


@dataclass(frozen=True)
class Decision:
    key: str
    action: str          # build | skip | not selected
    reason: str


def short_name(plan: Plan, key: str) -> str:
    img = plan.image(key)
    if img.kind == "app" and len(img.apps) >= 1 and key.endswith("/" + img.apps[0]):
        return img.apps[0]
    return key.rsplit("/", 1)[-1]


def _why_changed(plan: Plan, img: ImageNode, before: ImageRecord | None) -> str:
    if before is None:
        return "not built before"
    if before.fingerprint == img.fingerprint:
        return "fingerprint tag missing"
    now = ImageRecord.of(plan, img)
    changed = [c for c in img.categories if now.category_steps.get(c) != before.category_steps.get(c)]
    changed += [c for c in before.category_steps if c not in now.category_steps]
    reasons = []
    if changed:
        reasons.append(f"{', '.join(changed)} of {short_name(plan, img.key)} changed")
    if img.parent and now.parent_fingerprint != before.parent_fingerprint:
        reasons.append(f"parent {short_name(plan, img.parent)} rebuilt")
    if not img.parent and (img.base, now.parent_fingerprint) != (before.base, before.parent_fingerprint):
        reasons.append(f"base image {img.base} changed")
    return "; ".join(reasons) or "fingerprint changed"


def check_buildable(plan: Plan, stack: Family, policy: RegistryPolicy | None = None,
                    chosen: ChosenBuilder | None = None) -> None:
    """Refuse, before anything reaches the daemon, what the chosen builder (default: legacy) cannot
    build and any image the registry policy does not allow: the OS base, and whatever each
    Dockerfile reads (FROM, --from images, a `# syntax=` frontend)."""
    policy = policy or RegistryPolicy()
    policy.check(f"{registry_host(stack)}/{stack.project}", "registry:", stack.path)   # its own images come from there
    if isinstance(stack, Stack):
        policy.check(stack.base, "base:", stack.path)
    for img in plan.images:
        text = dockerfile_of(stack, img)
        check_dockerfile(text, img.key, stack.path, chosen or ChosenBuilder("legacy"), policy)
        if isinstance(stack, ImportedFamily) and stack.inputs[img.key].context is None:
            _check_needs_no_context(text, img.key, stack.inputs[img.key].dockerfile)


def _check_needs_no_context(text: str, key: str, dockerfile: Path) -> None:
    """An image imported without its build context can be built only if it copies nothing from one."""
    for ins in parse_instructions(text, file=str(dockerfile)):
        if ins.copy_sources:
            raise UserError(f"cannot build {key}: it copies {', '.join(ins.copy_sources)} from a build context "
                            "it was imported without (its folder lacked some COPY source); import it again "
                            "from a folder holding every file it copies, or with --context DIR",
                            dockerfile, ins.line)


def select(plan: Plan, only: list[str] | None, family: Family | None = None) -> set[str]:
    """Keys to consider: all, or the named images (by key, ref or app name) and what they need."""
    if not only:
        return {img.key for img in plan.images}
    keys: set[str] = set()
    for name in only:
        key = plan.apps.get(name) or next(
            (i.key for i in plan.images if name in (i.key, i.ref, i.repository)), None)
        if key is None:
            raise UserError(f"--only {name}: no such image or app in the plan "
                            f"(images: {', '.join(i.key for i in plan.images)})")
        todo = [key]
        while todo:   # the image, its ancestors, and (imported) the bases its other stages use
            k = todo.pop()
            if k not in keys:
                keys.add(k)
                todo += needed_images(plan, family, k)
    return keys


def needed_images(plan: Plan, family: Family | None, key: str) -> list[str]:
    """Parent first, then (for an import folder) the other bases the image's Dockerfile uses."""
    parent = plan.image(key).parent
    others = family.needs.get(key, ()) if isinstance(family, ImportedFamily) else ()
    return list(dict.fromkeys([*([parent] if parent else []), *others]))


def decide(plan: Plan, present: set[str], state: State, selected: set[str]) -> list[Decision]:
    """Build or skip each image, parents first. `present`: keys whose fingerprint tag exists."""
    decisions: dict[str, Decision] = {}
    for img in plan.images:
        if img.key not in selected:
            decisions[img.key] = Decision(img.key, NOT_SELECTED, "not selected by --only")
            continue
        if img.key in present:
            decisions[img.key] = Decision(img.key, SKIP, f"unchanged ({img.fingerprint_tag} exists)")
        else:
            decisions[img.key] = Decision(img.key, BUILD, _why_changed(plan, img, state.images.get(img.key)))
    return [decisions[img.key] for img in plan.images]


# ----------------------------------------------------------------------------- execution

def connect(stack: Family, push: bool, policy: RegistryPolicy | None = None) -> tuple[Engine, Registry | None]:
    """The engine, and with --push the stack's registry; a clear error when either is down."""
    policy = policy or RegistryPolicy.resolve(stack=stack)
    registry = None
    if push:
        host = registry_host(stack)
        policy.check(f"{host}/x", "registry:", stack.path)
        registry = Registry(host)
        registry.ping()
    return Engine(policy=policy), registry


def registry_host(stack: Stack) -> str:
    """The host of the stack's `registry:` (which may carry a path prefix)."""
    return Reference.parse(stack.registry + "/x").registry


def resolve_base(engine: Engine, stack: Stack) -> str:
    """The digest of the OS base, from its registry (wherever it is), else the local engine.

    It goes into the fingerprints, so a new OS image under the same tag rebuilds the family.
    """
    return resolve_image(engine, stack.base, stack.path, "change 'base:'")


def resolve_image(engine: Engine, image: str, path: Path, what_to_do: str) -> str:
    """The digest of an image the family builds on, from its registry or the local engine."""
    wanted = Reference.parse(image)
    if wanted.digest:
        return wanted.digest
    asked = ""
    try:
        with Registry(wanted.registry) as reg:
            digest = reg.manifest_digest(wanted.repository, wanted.reference)
        if digest:
            return digest
        asked = f"{wanted.registry} does not have it"
    except UserError as e:
        asked = str(e)
    local = engine.inspect(image)
    if local is None:
        raise UserError(f"base image {image} is not in the local engine, and {asked}; push it there, "
                        f"or {what_to_do}", path)
    return next((rd.split("@")[1] for rd in local.repo_digests
                 if Reference.parse(rd).name == wanted.name), local.id)


@dataclass
class Result:
    key: str
    status: str                   # built | skipped | failed | not attempted | not selected
    reason: str
    seconds: float = 0.0
    digest: str | None = None
    new_bytes: int = 0            # compressed bytes of the image's own layers, pushed
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)
    builder: str = ""             # which builder built it (BuildKit via which CLI, or legacy)


Progress = Callable[[str, str, dict], None]   # (image key, phase, event)


class Builder:
    def __init__(self, stack: Family, plan: Plan, state: State, engine: Engine, registry: Registry | None,
                 *, parallel: int = 2, no_cache: bool = False, progress: Progress | None = None,
                 options: BuildOptions | None = None):
        self.stack, self.plan, self.state = stack, plan, state
        self.engine, self.registry = engine, registry
        self.options = options or BuildOptions()
        self._sources: dict[str, Registry] = {}    # registries of a foreign OS base, by host
        self.push = registry is not None
        self.no_cache = no_cache
        self.parallel = max(1, parallel)
        self._report = progress or (lambda key, phase, event: None)
        self._cancelled = threading.Event()     # set on Ctrl-C / SIGTERM: workers stop at their next event
        self._lock = threading.Lock()
        # key -> manifest digest (pushed) or image ID (local); "" is the OS base
        self._digests: dict[str, str] = {"": plan.base_digest or ""}
        self._unpacked: dict[str, int] = {}    # blob digest -> uncompressed bytes, of the layers written here

    def progress(self, key: str, phase: str, event: dict) -> None:
        """Pass an event on; in a worker of an interrupted build, stop here instead."""
        if self._cancelled.is_set():
            raise Interrupted(key)
        self._report(key, phase, event)

    def cancel(self) -> None:
        """Stop the builds under way: workers end at their next event, the engine's builds and pulls
        are cut (the daemon then drops their containers)."""
        self._cancelled.set()
        self.engine.cancel()

    # -- what exists

    def present(self) -> set[str]:
        found = set()
        for img in self.plan.images:
            if self.push:
                digest = self.registry.manifest_digest(_name(img.repository), img.fingerprint_tag)
            else:
                local = self.engine.inspect(f"{img.repository}:{img.fingerprint_tag}")
                digest = local.id if local else None
            if digest:
                found.add(img.key)
                self._digests[img.key] = digest
        return found

    def ensure_base_local(self, keys: set[str]) -> None:
        """Root images build FROM the OS base (an import's, FROM theirs): pull it from its registry
        if the engine lacks it."""
        for base in sorted({self.plan.image(k).base for k in keys if not self.plan.image(k).parent}):
            if self.engine.inspect(base) is None:
                ref = Reference.parse(base)
                self.engine.pull(ref.name, ref.reference)

    def needs(self, key: str) -> list[str]:
        """The images that must exist before this one builds: its parent, and for an imported app
        every base another of its stages starts FROM."""
        return needed_images(self.plan, self.stack, key)

    def build_input(self, img: ImageNode, workdir: Path) -> tuple[Path, Path | None]:
        """Context folder and Dockerfile (None: the context's own) an image is built from."""
        if isinstance(self.stack, ImportedFamily):
            given = self.stack.inputs[img.key]
            return given.context or workdir, given.dockerfile   # the empty workdir as a context
        return workdir / img.key, None

    # -- doing it
    def run(self, decisions: list[Decision]) -> list[Result]:
        results: dict[str, Result] = {}
        to_build = {d.key for d in decisions if d.action == BUILD}
        by_key = {d.key: d for d in decisions}
        self.ensure_base_local(to_build)
        workdir = Path(tempfile.mkdtemp(prefix="layerwise-build-"))
        try:
            if to_build and isinstance(self.stack, Stack):
                write_tree(self.plan, self.stack, workdir)   # contexts with fixed mtimes
            for d in decisions:
                if d.action == SKIP:
                    results[d.key] = self._skip(d, needed_locally=any(
                        d.key in self.needs(k) for k in to_build))
                elif d.action == NOT_SELECTED:
                    results[d.key] = Result(d.key, "not selected", d.reason)
            self._build_all(to_build, by_key, results, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            self.state.save()
        return [results[img.key] for img in self.plan.images]

    def _skip(self, d: Decision, needed_locally: bool) -> Result:
        img = self.plan.image(d.key)
        fp_ref = f"{img.repository}:{img.fingerprint_tag}"
        if needed_locally and self.engine.inspect(fp_ref) is None:
            self.progress(img.key, "pull", {"status": f"pulling {fp_ref} for its children"})
            self.engine.pull(img.repository, img.fingerprint_tag)
        if needed_locally or self.engine.inspect(fp_ref):
            self.engine.tag(fp_ref, img.repository, img.tag)
        if self.push:
            self._publish(img)   # a rerun after an interrupted push moves the human tag now
        return Result(img.key, "skipped", d.reason, digest=self._digests.get(img.key))

    def _build_all(self, to_build: set[str], by_key: dict[str, Decision], results: dict[str, Result],
                   workdir: Path) -> None:
        pending = set(to_build)
        running: dict[Future, str] = {}
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            try:
                self._schedule(pool, pending, running, by_key, results, workdir)
            except BaseException:      # Ctrl-C, SIGTERM, a lost engine: end the other builds first
                self.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def _schedule(self, pool: ThreadPoolExecutor, pending: set[str], running: dict[Future, str],
                  by_key: dict[str, Decision], results: dict[str, Result], workdir: Path) -> None:
        """Start each image once what it needs is there; collect results as builds end."""
        while pending or running:
            for key in sorted(pending):
                needs = self.needs(key)
                if any(n in pending or n in running.values() for n in needs):
                    continue
                pending.discard(key)
                broken = [n for n in needs if results[n].status not in ("built", "skipped")]
                if broken:
                    what = "parent" if broken[0] == self.plan.image(key).parent else "base"
                    results[key] = Result(key, "not attempted", by_key[key].reason,
                                          error=f"{what} {short_name(self.plan, broken[0])} "
                                                f"{results[broken[0]].status}")
                    continue
                running[pool.submit(self._build_one, key, by_key[key].reason, workdir)] = key
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                key = running.pop(future)
                results[key] = future.result()

    def _build_one(self, key: str, reason: str, workdir: Path) -> Result:
        img = self.plan.image(key)
        started = time.monotonic()
        parent_digest = self._digests.get(img.parent or "", "")
        labels = {FINGERPRINT_LABEL: img.fingerprint, BASE_NAME_LABEL: img.base,
                  BASE_DIGEST_LABEL: parent_digest}
        fp_ref = f"{img.repository}:{img.fingerprint_tag}"
        chosen = self.engine.builder(self.options)
        _, network_note = self.engine.network(self.options)
        try:
            note = "".join(f"; {n}" for n in (chosen.note, network_note) if n)
            self.progress(key, "build", {"status": f"{reason} (with {chosen.name}{note})"})
            context, dockerfile = self.build_input(img, workdir)
            image_id = self.engine.build(context, fp_ref, labels, lambda e: self.progress(key, "build", e),
                                         nocache=self.no_cache, dockerfile=dockerfile, options=self.options)
        except BuildFailed as e:
            if not self.engine.answers():    # not the image's fault: the daemon went away under it
                raise self.engine.lost(f"building {key}") from None
            self.progress(key, "failed", {"error": str(e)})
            return Result(key, "failed", reason, time.monotonic() - started, error=str(e),
                          log_tail=e.log[-15:], builder=chosen.name)
        self.engine.tag(image_id, img.repository, img.tag)
        digest, new_bytes = image_id, 0
        if self.push:
            new_bytes = self._push_reproducible(img, image_id)
            digest, _ = self._publish(img)
            # Children build on what the registry holds: the normalized image.
            self.engine.pull(img.repository, img.fingerprint_tag)
            self.engine.tag(fp_ref, img.repository, img.tag)
        else:
            with self._lock:
                self.state.images[key] = ImageRecord.of(self.plan, img)
        with self._lock:
            self._digests[key] = digest
        self.progress(key, "done", {"status": "built"})
        return Result(key, "built", reason, time.monotonic() - started, digest=digest, new_bytes=new_bytes,
                      builder=chosen.name)

    def _lower(self, img: ImageNode) -> tuple[Registry, str, RegistryImage]:
        """Where the image's lower layers live: registry, repository, image. A root image's are
        the OS base's, on whatever registry it lives (an index: the linux/amd64 image)."""
        if img.parent:
            parent = self.plan.image(img.parent)
            source, ref = self.registry, f"{parent.repository}:{parent.fingerprint_tag}"
        else:   # a root image: FROM the OS base (an imported one: FROM its own)
            base = Reference.parse(img.base)
            source = self.registry if base.registry == self.registry.host else self._foreign(base.registry)
            ref = img.base
        return source, Reference.parse(ref).repository, RegistryImage(ref, registry=source)

    def _foreign(self, host: str) -> Registry:
        with self._lock:
            if host not in self._sources:
                self._sources[host] = Registry(host)
            return self._sources[host]

    def close(self) -> None:
        for registry in self._sources.values():
            registry.close()

    def _push_reproducible(self, img: ImageNode, image_id: str) -> int:
        """Push the built image with its own layers normalized (mtimes clamped, config times fixed),
        by digest under the fingerprint tag. Returns the compressed bytes uploaded."""
        name = _name(img.repository)
        source, lower_name, lower = self._lower(img)
        lower_diff_ids = lower.diff_ids
        self.progress(img.key, "push", {"status": "normalizing layers"})
        uploaded = 0
        with tempfile.TemporaryDirectory(prefix="layerwise-save-") as tmp:
            config, own = normalized_own_layers(self.engine, image_id, lower_diff_ids, Path(tmp))
            if config["rootfs"]["diff_ids"][:len(lower_diff_ids)] != lower_diff_ids:
                raise UserError(f"{img.key} was not built on the registry's {lower_name}: the local "
                                "parent differs; run the build again")
            for i, layer in enumerate(lower.layers):
                if self.registry.has_blob(name, layer.digest):
                    continue
                if source is self.registry and self.registry.mount_blob(name, layer.digest, lower_name):
                    continue
                # Not linkable (another registry, or a registry without cross-repository mounts): copy it.
                with lower.open_layer(i) as blob:
                    self.registry.upload_blob(name, layer.digest, blob, layer.size)
            with self._lock:
                self._unpacked.update((layer.digest, layer.unpacked) for layer, _ in own)
            for layer, blob in own:
                if not self.registry.has_blob(name, layer.digest):
                    report = lambda done, total, d=layer.digest: self.progress(
                        img.key, "push", {"id": d[7:19], "progressDetail": {"current": done, "total": total}})
                    with open(blob, "rb") as f:   # a file, not a stream: a broken upload can be sent again
                        self.registry.upload_blob(name, layer.digest, f, layer.size, progress=report)
                    uploaded += layer.size
        config_raw = config_bytes(normalize_config(config, lower_diff_ids + [layer.diff_id for layer, _ in own]))
        config_digest = self.registry.push_bytes(name, config_raw)
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config_raw), "digest": config_digest},
            "layers": [{"mediaType": l.media_type or DOCKER_LAYER, "size": l.size, "digest": l.digest}
                       for l in lower.layers]
                      + [{"mediaType": DOCKER_LAYER, "size": layer.size, "digest": layer.digest}
                         for layer, _ in own],
        }
        raw = json.dumps(manifest, indent=3).encode()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        self.registry.put_manifest_bytes(name, digest, raw, DOCKER_MANIFEST)      # by digest first,
        self.registry.put_manifest_bytes(name, img.fingerprint_tag, raw, DOCKER_MANIFEST)  # then the tag
        return uploaded

    def _publish(self, img: ImageNode) -> tuple[str, int]:
        """Point the human tag at the fingerprint tag's manifest and record the measured layers."""
        name = _name(img.repository)
        pushed = RegistryImage(f"{img.repository}:{img.fingerprint_tag}", registry=self.registry)
        digest = pushed.manifest_digest
        if self.registry.manifest_digest(name, img.tag) != digest:   # the same bytes, so the same digest
            self.registry.put_manifest_bytes(name, img.tag, pushed.manifest_raw, pushed.manifest_media_type)
        record = ImageRecord.of(self.plan, img)
        record.digest = digest
        with self._lock:
            record.layers = _own_layers(img, pushed, {**self.state.unpacked_sizes(), **self._unpacked})
            self.state.images[img.key] = record
            self._digests[img.key] = digest
        return digest, sum(l.size for l in record.layers)


def build_family(stack: Family, *, push: bool, parallel: int = 2, only: list[str] | None = None,
                 no_cache: bool = False, progress: Progress | None = None, dry_run: bool = False,
                 options: BuildOptions | None = None, policy: RegistryPolicy | None = None,
                 wait: bool = True) -> tuple[Plan, list[Decision], list[Result]]:
    """Plan, decide and (unless dry_run) build the family (a stack's, or an import folder's); the
    state file is updated. One build of a stack at a time: a second one waits for the lock beside
    the state file (wait=False: refuses)."""
    policy = policy or RegistryPolicy.resolve(stack=stack)
    options = options or BuildOptions()
    check_buildable(family_plan(stack), stack, policy, choose_builder(options.builder))   # before the daemon
    with contextlib.nullcontext() if dry_run else locked(stack.path, wait=wait):
        return _build_locked(stack, push=push, parallel=parallel, only=only, no_cache=no_cache,
                             progress=progress, dry_run=dry_run, options=options, policy=policy)


def _build_locked(stack: Family, *, push: bool, parallel: int, only: list[str] | None, no_cache: bool,
                  progress: Progress | None, dry_run: bool, options: BuildOptions, policy: RegistryPolicy,
                  ) -> tuple[Plan, list[Decision], list[Result]]:
    state = load_state(stack.path)
    engine, registry = connect(stack, push, policy)
    engine.options = options
    try:
        if isinstance(stack, ImportedFamily):
            digests = {ref: resolve_image(engine, ref, stack.path, "change its FROM")
                       for ref in stack.external_images()}
            plan = family_plan(stack, digests=digests)
            state.base_digest = plan.base_digest
        else:
            state.base_digest = resolve_base(engine, stack)
            plan = build_plan(stack, state.base_digest)
        builder = Builder(stack, plan, state, engine, registry, parallel=parallel, no_cache=no_cache,
                          progress=progress, options=options)
        decisions = decide(plan, builder.present(), state, select(plan, only, stack))
        try:
            results = [] if dry_run else builder.run(decisions)
        except ENGINE_LOST as e:    # the daemon died or restarted under a build, a pull or a tag
            raise engine.lost(f"building ({type(e).__name__})") from None
        finally:
            builder.close()
    finally:
        if registry:
            registry.close()
        engine.close()
    return plan, decisions, results


def normalized_own_layers(engine: Engine, image_id: str, lower_diff_ids: list[str],
                          tmp: Path) -> tuple[dict, list[tuple[NormalizedLayer, Path]]]:
    """Read a built image from the engine (as audit does, in place) and write its own layers (those
    above the lower ones) normalized, as gzip blobs in tmp. Returns the built config and (layer,
    blob path) per own layer."""
    tmp.mkdir(parents=True, exist_ok=True)
    own = []
    with EngineImage(image_id, engine=engine) as built:
        for i in range(len(lower_diff_ids), len(built.layers)):
            blob = tmp / f"layer-{i - len(lower_diff_ids)}.tar.gz"
            with _uncompressed(built, i) as src, open(blob, "wb") as dst:
                own.append((normalize_layer(src, dst), blob))
        return built.config, own


@contextmanager
def _uncompressed(image: Image, i: int) -> Iterator[BinaryIO]:
    """Layer i of an image as a plain tar stream: Docker 20.10 saves plain tars, a newer engine
    may save a compressed blob."""
    compression = image.layers[i].compression
    with image.open_layer(i) as stored:
        if compression is None:
            yield stored
        elif compression == "gzip":
            with gzip.GzipFile(fileobj=stored, mode="rb") as plain:
                yield plain
        else:
            raise UserError(f"layer {i + 1} of the built image {image.name} is {compression}-compressed; "
                            "layerwise normalizes plain or gzip layers — build with the legacy builder")


def _name(repository: str) -> str:
    """The repository path of a plan image's repository (its registry host dropped)."""
    return Reference.parse(repository).repository


def _own_layers(img: ImageNode, image: RegistryImage, unpacked: dict[str, int]) -> list[LayerRecord]:
    """Match the image's own layers (the top of the manifest) to the steps that made them;
    `unpacked`: the uncompressed bytes of the blobs layerwise wrote (this build, or recorded before).

    The config's history has one entry per instruction, parents first; entries with
    `empty_layer` made no layer. The layerwise labels add one empty entry at the end.
    """
    history = image.config.get("history") or []
    layers = image.layers
    layer_steps = [s for s in img.steps if s.creates_layer]
    nonempty = [h for h in history if not h.get("empty_layer")]
    own = layers[len(layers) - len(layer_steps):] if layer_steps else ()
    if len(nonempty) != len(layers) or len(own) != len(layer_steps):
        return []   # an unexpected shape: better no measurement than a wrong one
    return [LayerRecord(step=s.identity, digest=l.digest, size=l.size, diff_id=l.diff_id,
                        unpacked=unpacked.get(l.digest)) for s, l in zip(layer_steps, own)]
