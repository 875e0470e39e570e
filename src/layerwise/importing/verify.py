"""`layerwise verify`: prove that refactored images are equivalent to the originals they replace.

Input is what `layerwise import --refactor-to DIR` writes, `DIR/import.json` (read by `importfile`):
base images (built parents first, each from its own folder in DIR, tagged with its `ref`) and apps,
each with its original Dockerfile, its build context and its refactored Dockerfile (FROM a base).
Per app, the original and the refactored Dockerfile are built with the real engine on the same
context, and the two final images are compared:
- the file tree as the container sees it (whiteouts and opaque directories applied): per path the
  type, mode, owner, content hash and link target; mtimes are ignored, as a rebuild changes them;
- the runtime config (Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Labels but layerwise's
  own provenance labels, Volumes, Healthcheck, StopSignal, Shell, OnBuild).
Three parts, one job each: `image_facts` reads an image (through `images` and `layerindex`),
`compare` is a pure function of two facts, and `verify` builds and drives them. Rendering is in
`report`.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from ..dockerfiles import parse_instructions
from ..errors import UserError
from ..oci.engine import BuildFailed, Engine
from ..oci.images import open_image
from ..oci.layerindex import Cache, LayerIndex, effective_tree, index_layers, layer_jobs
from .importfile import ImportedApp, ImportedBase, ImportSet, load_import

OWN_LABEL_PREFIXES = ("io.layerwise.", "org.opencontainers.image.base.")
# Runtime config compared; Env and Labels entry by entry.
CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Labels", "Volumes",
               "Healthcheck", "StopSignal", "Shell", "OnBuild")
VERIFY_REPOSITORY = "layerwise-verify"

Progress = Callable[[str, str, dict], None]     # (key, phase, event), as build's progress displays take


# -------------------------------------------------------------------------------------------------
# facts of one image


class FileFacts(NamedTuple):
    """What a container sees of one path (no mtime: a rebuild changes it and nothing reads it)."""
    type: str
    mode: int
    uid: int
    gid: int
    sha256: str | None
    link: str | None


@dataclass(frozen=True)
class ImageFacts:
    files: dict[str, FileFacts]
    config: dict[str, Any]


def config_subset(config: dict) -> dict[str, Any]:
    """The runtime part of an image config (`config["config"]`), in a form that compares by meaning:
    Env as a mapping (its order does not matter to a process), ports and volumes as sorted lists,
    an empty string as no value, layerwise's own labels dropped (they name the build, not the image)."""
    runtime = config.get("config") or {}
    out: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        value = runtime.get(key)
        if key == "Env":
            value = dict(_env_pair(item) for item in value or ())
        elif key == "Labels":
            value = {k: v for k, v in (value or {}).items() if not k.startswith(OWN_LABEL_PREFIXES)}
        elif key in ("ExposedPorts", "Volumes"):
            value = sorted(value or ())
        elif value == "":
            value = None
        out[key] = value
    return out


def _env_pair(item: str) -> tuple[str, str | None]:
    name, eq, value = item.partition("=")
    return name, value if eq else None


def facts_from(layers: list[LayerIndex], config: dict) -> ImageFacts:
    """Facts from an image's layer indexes (base first) and its config."""
    files = {path: FileFacts(e.type, e.mode, e.uid, e.gid, e.sha256, e.link)
             for path, (_, e) in effective_tree(layers).items()}
    return ImageFacts(files, config_subset(config))


def image_facts(ref: str, *, cache: Cache | None = None, processes: int | None = None) -> ImageFacts:
    """Facts of an image of the local engine; the layers are indexed once per diff_id with a cache."""
    with open_image(f"docker://{ref}") as image:
        results = index_layers(layer_jobs(image, ref), processes=processes, cache=cache)
        for result in results:
            if result.error:
                raise result.error
        return facts_from([r.index for r in results], image.config)


# -------------------------------------------------------------------------------------------------
# comparing two images (pure)

FILE_FIELDS = FileFacts._fields


@dataclass(frozen=True)
class Difference:
    kind: str                   # missing (only in the original), extra (only in the refactored),
                                # changed (a file field), or config
    where: str                  # the absolute path, or the config key (`Env:NAME`, `Labels:NAME` per entry)
    field: str | None = None    # for `changed`: type, mode, uid, gid, sha256 or link
    original: Any = None
    refactored: Any = None

    def to_dict(self) -> dict:
        shown = _shown if self.field == "mode" else (lambda v: v)
        return {"kind": self.kind, "where": self.where, "field": self.field,
                "original": shown(self.original), "refactored": shown(self.refactored)}

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"{self.where} ({self.original}) is missing"
        if self.kind == "extra":
            return f"{self.where} ({self.refactored}) is extra"
        if self.kind == "changed":
            d = self.to_dict()
            if self.field == "sha256":      # enough of a content hash to tell the two apart
                d = {k: (v or "")[:12] for k, v in d.items()}
            return f"{self.where}: {self.field} {d['original']} → {d['refactored']}"
        return f"config {self.where}: {json.dumps(self.original)} → {json.dumps(self.refactored)}"


def _shown(mode: int | None) -> str | None:
    return None if mode is None else f"{mode:04o}"


def compare(original: ImageFacts, refactored: ImageFacts) -> list[Difference]:
    """Every difference between two images, files (by path) first, then config (by key)."""
    return _compare_files(original.files, refactored.files) + _compare_config(original.config, refactored.config)


def _compare_files(a: dict[str, FileFacts], b: dict[str, FileFacts]) -> list[Difference]:
    out: list[Difference] = []
    for path in sorted(a.keys() | b.keys()):
        old, new, where = a.get(path), b.get(path), "/" + path     # as a container names it
        if new is None:
            out.append(Difference("missing", where, original=old.type))
        elif old is None:
            out.append(Difference("extra", where, refactored=new.type))
        elif old != new:
            out += [Difference("changed", where, name, x, y)
                    for name, x, y in zip(FILE_FIELDS, old, new, strict=True) if x != y]
    return out


def _compare_config(a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    out: list[Difference] = []
    for key in sorted(a.keys() | b.keys()):
        old, new = a.get(key), b.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += [Difference("config", f"{key}:{name}", original=old.get(name), refactored=new.get(name))
                    for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]
        elif old != new:
            out.append(Difference("config", key, original=old, refactored=new))
    return out


# -------------------------------------------------------------------------------------------------
# choosing apps


def apps_for(spec: ImportSet, originals: list[Path]) -> list[str] | None:
    """The apps whose original Dockerfile is one of `originals` or lies in one of them (folders);
    None (all apps) when none are given. An ORIGINAL matching no app is bad input."""
    if not originals:
        return None
    chosen: set[str] = set()
    for given in originals:
        if not given.exists():
            raise UserError(f"{given}: no such file or folder")
        where = given.resolve()
        matched = {a.name for a in spec.apps
                   if a.original.resolve() == where or (where.is_dir() and where in a.original.resolve().parents)}
        if not matched:
            raise UserError(f"{given} is the original of no app in {spec.dir / 'import.json'}")
        chosen |= matched
    return [a.name for a in spec.apps if a.name in chosen]


# -------------------------------------------------------------------------------------------------
# building and comparing


@dataclass
class AppResult:
    app: str
    verdict: str                     # equivalent, different, refused (never built) or failed
    differences: list[Difference] = field(default_factory=list)
    reason: str | None = None        # why refused or failed
    original: str | None = None      # the two image tags compared
    refactored: str | None = None
    seconds: float = 0.0
    log_tail: list[str] = field(default_factory=list)

    @property
    def equivalent(self) -> bool:
        return self.verdict == "equivalent"

    def to_dict(self) -> dict:
        return {"app": self.app, "verdict": self.verdict, "equivalent": self.equivalent, "reason": self.reason,
                "original": self.original, "refactored": self.refactored, "seconds": round(self.seconds, 2),
                "differences": [d.to_dict() for d in self.differences], "log_tail": self.log_tail}


def verify_dict(results: list[AppResult], against: Path) -> dict:
    """`verify --json` (`layerwise.verify/v1`): the verdict over all apps, then each app's result."""
    return {"schema": "layerwise.verify/v1", "against": str(against),
            "equivalent": all(r.equivalent for r in results), "apps": [r.to_dict() for r in results]}


def verify(import_dir: Path, engine: Engine, only: list[str] | None = None, progress: Progress | None = None,
           cache: Cache | None = None, no_cache: bool = False) -> list[AppResult]:
    """Per app (all, or those named in `only`): build the bases it needs, its original and its
    refactored image, and compare them. One app's failure never stops the others.

    With the engine's build cache, an original often reuses the very layers its base was built
    with; `no_cache` builds every step anew, so only the contents can make the images equal."""
    spec = load_import(import_dir)
    unknown = sorted(set(only or ()) - {a.name for a in spec.apps})
    if unknown:
        raise UserError(f"no app {', '.join(unknown)} in {spec.dir / 'import.json'}")
    apps = [a for a in spec.apps if only is None or a.name in only]
    report = progress or (lambda key, phase, event: None)
    refusals = {a.name: _refusal(a, engine) for a in apps}
    needed = _bases_needed(spec, [a for a in apps if refusals[a.name] is None])
    broken = _build_bases(needed, engine, report, no_cache)
    return [_verify_app(a, refusals[a.name], broken, engine, report, cache, no_cache) for a in apps]


def _refusal(app: ImportedApp, engine: Engine) -> str | None:
    """Why an app cannot be verified at all, found before anything is built."""
    if app.context is None:
        return ("its Dockerfile came without its build context; verify builds the original and needs it "
                "(import again with the context)")
    if not app.context.is_dir():
        return f"its build context {app.context} is not a folder"
    for what, dockerfile in (("original", app.original), ("refactored", app.dockerfile)):
        try:   # what the engine's builder cannot build, and images the registry policy refuses
            engine.check_dockerfile(dockerfile.read_text(encoding="utf-8"), f"{app.name} {what}", dockerfile)
        except (OSError, UnicodeDecodeError) as e:
            return f"cannot read the {what} Dockerfile {dockerfile} ({e})"
        except UserError as e:
            return f"the {what} Dockerfile {dockerfile} cannot be built here: {e.message}"
    return None


def _bases_needed(spec: ImportSet, apps: list[ImportedApp]) -> list[ImportedBase]:
    """The bases these apps use and their ancestors, parents first (import.json's order)."""
    wanted: set[str] = set()
    for name in (n for a in apps for n in a.bases):
        while name is not None and name not in wanted:
            wanted.add(name)
            name = spec.base(name).parent
    return [b for b in spec.bases if b.name in wanted]


def _build_bases(bases: list[ImportedBase], engine: Engine, report: Progress, no_cache: bool) -> dict[str, str]:
    """Build each base, tagged with its ref (children find it locally); returns why each base that
    could not be built failed (its own error, or its parent's)."""
    broken: dict[str, str] = {}
    for base in bases:
        key = f"base {base.name}"
        if base.parent in broken:
            broken[base.name] = f"base {base.name} not built: its parent {broken[base.parent]}"
            continue
        try:
            with _base_context(base) as context:
                engine.build(context, base.ref, {}, lambda e, key=key: report(key, "build", e),
                             nocache=no_cache, dockerfile=base.dockerfile)
            report(key, "done", {"status": "built"})
        except (BuildFailed, UserError) as e:
            broken[base.name] = f"base {base.name} failed to build: {e}"
            report(key, "failed", {"error": str(e)})
    return broken


@contextmanager
def _base_context(base: ImportedBase) -> Iterator[Path]:
    """A base's own context folder, or an empty one when it copies nothing (context null)."""
    if base.context is not None:
        if not base.context.is_dir():
            raise UserError(f"its context {base.context} is not a folder")
        yield base.context
        return
    with tempfile.TemporaryDirectory(prefix="layerwise-verify-") as tmp:
        yield Path(tmp)


def image_tag(app: str, which: str) -> str:
    """`layerwise-verify/<app>:original|refactored`; the app name made a valid repository name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", app.lower()).strip("._-") or "app"
    return f"{VERIFY_REPOSITORY}/{name}:{which}"


def _verify_app(app: ImportedApp, refusal: str | None, broken: dict[str, str], engine: Engine, report: Progress,
                cache: Cache | None, no_cache: bool) -> AppResult:
    if refusal:
        report(app.name, "done", {"status": f"refused: {refusal}"})
        return AppResult(app.name, "refused", reason=refusal)
    failed_bases = [broken[b] for b in app.bases if b in broken]
    if failed_bases:
        report(app.name, "failed", {"error": failed_bases[0]})
        return AppResult(app.name, "failed", reason=failed_bases[0])
    result = AppResult(app.name, "failed", original=image_tag(app.name, "original"),
                       refactored=image_tag(app.name, "refactored"))
    started = time.monotonic()
    try:
        # Read by image ID, not tag: another run verifying an app of the same name may retag meanwhile.
        original, refactored = _build_app(app, result, engine, report, no_cache)
        result.differences = compare(image_facts(original, cache=cache), image_facts(refactored, cache=cache))
        result.verdict = "different" if result.differences else "equivalent"
    except UserError as e:
        result.reason = str(e)
    result.seconds = time.monotonic() - started
    if result.reason:
        report(app.name, "failed", {"error": result.reason})
    else:
        count = len(result.differences)
        report(app.name, "done", {"status": f"{result.verdict} ({count} difference{'s' * (count != 1)})"})
    return result


def _build_app(app: ImportedApp, result: AppResult, engine: Engine, report: Progress,
               no_cache: bool) -> tuple[str, str]:
    """Build the original and the refactored image on the same context; returns their image IDs.
    A failed build leaves the end of its log in `result` and ends in a UserError."""
    ids = []
    for which, dockerfile, tag in (("original", app.original, result.original),
                                   ("refactored", app.dockerfile, result.refactored)):
        key = f"{app.name} {which}"
        try:
            ids.append(engine.build(app.context, tag, {}, lambda e, key=key: report(key, "build", e),
                                    nocache=no_cache, dockerfile=dockerfile))
        except BuildFailed as e:
            result.log_tail = [line for line in e.log if line.strip()][-15:]
            raise UserError(f"the {which} build failed: {e}") from None
    return ids[0], ids[1]


def measured_base_bytes(spec: ImportSet, engine: Engine) -> dict[str, int]:
    """Uncompressed bytes of each built base's own layers, from the engine's history (the legacy
    builder writes one history entry per instruction): what the import could only estimate."""
    out = {}
    for base in spec.bases:
        image = engine.inspect(base.ref)
        if image is None or not image.history:
            continue
        own = len(parse_instructions(base.dockerfile.read_text(encoding="utf-8"))) - 1   # all but FROM
        out[base.name] = sum(int(h.get("Size") or 0) for h in image.history[len(image.history) - own:])
    return out


def measured_saving(spec: ImportSet, sizes: dict[str, int]) -> int:
    """Bytes a host running every app no longer pulls: each measured base once, not once per app."""
    return sum(size * max(len(base.used_by) - 1, 0)
               for base in spec.bases if (size := sizes.get(base.name)) is not None)


def verify_and_measure(import_dir: Path, *, only: list[str] | None = None, no_cache: bool = False,
                       progress: Progress | None = None, options=None, policy=None) -> tuple[list[AppResult], dict]:
    """Verify the apps on the local engine, then measure the bases that were built (sizes the
    import could not know): the results, and {measured_base_bytes, measured_saving}."""
    from ..oci.policy import RegistryPolicy

    engine = Engine(policy=policy or RegistryPolicy.resolve(), options=options)
    try:
        results = verify(import_dir, engine, only=only, progress=progress, cache=Cache(), no_cache=no_cache)
        spec = load_import(import_dir)
        sizes = measured_base_bytes(spec, engine)
    finally:
        engine.close()
    return results, {"measured_base_bytes": sizes, "measured_saving": measured_saving(spec, sizes)}
