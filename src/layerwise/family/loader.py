"""One family, from a stack file or from a folder `layerwise import --refactor-to` wrote.

`load_family(path)` reads either; `family_plan` turns either into the same Plan of ImageNodes, so
build, simulate and bench pull work on both. For an import folder, every base and every app is a
node: a base's steps are its Dockerfile's, an app's are its final stage's chain above the base it
starts FROM (the other stages make no layer of the final image); each node keeps the Dockerfile
and the context it is built from (`ImportedFamily.inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..importing.importer import CATEGORY_ORDER, Dockerfile, categorize, read_dockerfile
from ..importing.importfile import IMPORT_FILE, ImportSet, load_import
from ..importing.refactor import CATEGORY_OWNERS
from ..oci.reference import Reference
from ..plan.model import Category, ImageNode, Plan, sha256_text
from ..plan.planner import build_plan
from ..plan.spec import Stack, load_stack
from .generate import dockerfile_text

FAMILY_RECIPE = "layerwise-import-build/1"


@dataclass(frozen=True)
class BuildInput:
    dockerfile: Path
    context: Path | None       # None: it copies nothing from a context (an empty one is sent)


@dataclass(frozen=True)
class ImportedFamily:
    """A refactored folder, read: what each image is built from, by image key."""

    path: Path                                   # DIR/import.json: errors name it; the state file is beside it
    registry: str
    project: str
    spec: ImportSet
    dockerfiles: dict[str, Dockerfile]           # image key -> its parsed Dockerfile
    inputs: dict[str, BuildInput]                # image key -> Dockerfile and context
    apps: dict[str, str]                         # app name -> image key
    needs: dict[str, tuple[str, ...]]            # image key -> the bases its stages start FROM

    @property
    def root(self) -> Path:
        return self.path.parent

    def external_images(self) -> list[str]:
        """The images outside the family its Dockerfiles start stages FROM, sorted."""
        family_refs = {b.ref for b in self.spec.bases}
        return sorted({_from_image(s.root) for d in self.dockerfiles.values() for s in d.stages
                       if s.root is not None and _from_image(s.root) not in family_refs})


Family = Stack | ImportedFamily


def load_family(path: str | Path) -> Family:
    """A stack file (or a folder holding layerwise.yaml), or a folder with an import.json."""
    path = Path(path)
    if path.name == IMPORT_FILE and path.is_file():
        return load_imported(path.parent)
    if path.is_dir() and (path / IMPORT_FILE).exists():
        return load_imported(path)
    if path.is_dir() and not (path / "layerwise.yaml").exists():
        raise UserError("holds neither a stack file (layerwise.yaml) nor an import.json; give a stack file "
                        "or a folder `layerwise import --refactor-to` wrote", path)
    return load_stack(path)


def load_imported(folder: Path) -> ImportedFamily:
    spec = load_import(folder)
    registry, project = spec.registry, spec.project
    where = spec.dir / IMPORT_FILE
    if not isinstance(registry, str) or not isinstance(project, str):
        raise UserError("\"registry\" and \"project\" must be strings (write it again with layerwise import)", where)
    dockerfiles, inputs, apps = {}, {}, {}
    for base in spec.bases:
        dockerfiles[base.name] = _read(base.dockerfile, base.name, base.context, where)
        inputs[base.name] = BuildInput(base.dockerfile, base.context)
    for app in spec.apps:
        if app.image:   # the app is one of the bases: no image of its own
            apps[app.name] = app.image
            continue
        key = f"{project}/{app.name}"
        dockerfiles[key] = _read(app.dockerfile, app.name, app.context, where)
        inputs[key] = BuildInput(app.dockerfile, app.context)
        apps[app.name] = key
    key_of_ref = {b.ref: b.name for b in spec.bases}
    needs = {key: tuple(sorted({key_of_ref[_from_image(s.root)] for s in doc.stages
                                if s.root and _from_image(s.root) in key_of_ref}))
             for key, doc in dockerfiles.items()}
    return ImportedFamily(where, registry, project, spec, dockerfiles, inputs, apps, needs)


def _read(dockerfile: Path, name: str, context: Path | None, where: Path) -> Dockerfile:
    if not dockerfile.is_file():
        raise UserError(f"{dockerfile} is missing; write the folder again with layerwise import", where)
    if context is not None and not context.is_dir():
        raise UserError(f"the build context {context} of {name} is not a folder", where)
    return read_dockerfile(dockerfile, name, context)   # without one, COPYs are known by their text


def _from_image(root: str) -> str:
    return root.split()[-1]     # "FROM [--platform=…] IMAGE"


def family_plan(family: Family, base_digest: str | None = None,
                digests: dict[str, str] | None = None) -> Plan:
    """The family's plan. `base_digest`: a stack's OS base digest; `digests`: an import's external
    images' digests (image ref -> digest). Known digests go into the fingerprints."""
    if isinstance(family, Stack):
        return build_plan(family, base_digest)
    plan = import_plan(family, digests or {})
    if digests is None and base_digest:   # what the last build knew: exact when one OS base is used
        plan = import_plan(family, {plan.base: base_digest})
    return plan


def import_plan(family: ImportedFamily, digests: dict[str, str]) -> Plan:
    """Bases as shared nodes, apps as leaves; a node's fingerprint covers its Dockerfile's
    instructions, the files its COPYs read, its parent's fingerprint and the external images'
    digests (where known), so an unchanged image is found by its fingerprint tag."""
    key_of_ref = {b.ref: b.name for b in family.spec.bases}
    used_by = {b.name: set(b.used_by) for b in family.spec.bases}
    images: dict[str, ImageNode] = {}
    keys = list(dict.fromkeys([b.name for b in family.spec.bases] + list(family.apps.values())))   # bases first
    for key in keys:
        doc = family.dockerfiles[key]
        chain = categorize(doc.chain(len(doc.stages) - 1))
        base = _from_image(chain[0].instruction)
        parent = images.get(key_of_ref.get(base, ""))
        if base in key_of_ref and parent is None:
            raise UserError(f"{key} starts FROM {base}, a base listed after it", family.path)
        below = parent.fingerprint if parent else "base:" + digests.get(base, base)
        # A stage FROM a base changes with that base's fingerprint, one FROM an outer image with its digest.
        stage_texts = [part for s in doc.stages for part in
                       (s.from_text, _root_identity(s.root, images, key_of_ref, digests),
                        *(step.identity for step in s.steps))]
        fingerprint = sha256_text(FAMILY_RECIPE, below, *doc.global_args, *stage_texts)
        is_app = key not in used_by
        ref = Reference.parse(f"{family.registry}/{key}" if is_app else family.spec.base(key).ref)
        repository, tag = ref.name, ref.tag or "latest"
        apps = (doc.name,) if is_app else tuple(sorted(used_by[key] & set(family.apps)))
        images[key] = ImageNode(key=key, repository=repository, tag=tag, fingerprint=fingerprint,
                                parent=parent.key if parent else None, base=base,
                                owner="app-team" if is_app else "platform", kind="app" if is_app else "base",
                                apps=apps, steps=tuple(chain[1:]))
    depth = {}
    for key in keys:
        depth[key] = depth[images[key].parent] + 1 if images[key].parent else 0
    ordered = sorted(images.values(), key=lambda img: (depth[img.key], img.key))
    used = {s.category for img in ordered for s in img.steps}
    # Owners and change rates as the stack file `import -o` writes says them.
    categories = tuple(Category(c, *CATEGORY_OWNERS[c]) for c in CATEGORY_ORDER if c in used and c in CATEGORY_OWNERS)
    roots = [img.base for img in ordered if img.parent is None]
    os_base = max(sorted(set(roots)), key=roots.count) if roots else ""
    return Plan(registry=family.registry, project=family.project, base=os_base, categories=categories,
                images=tuple(ordered), apps=dict(family.apps), base_digest=digests.get(os_base))


def _root_identity(root: str | None, images: dict[str, ImageNode], key_of_ref: dict[str, str],
                   digests: dict[str, str]) -> str:
    if root is None:
        return ""
    image = _from_image(root)
    if image in key_of_ref:   # import.json lists bases before their users, so it is known by now
        return images[key_of_ref[image]].fingerprint if key_of_ref[image] in images else image
    return digests.get(image, "")


def dockerfile_of(family: Family, img: ImageNode) -> str:
    """The Dockerfile text an image is built from."""
    if isinstance(family, Stack):
        return dockerfile_text(img, family)
    return family.inputs[img.key].dockerfile.read_text(encoding="utf-8")
