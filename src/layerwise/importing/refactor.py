"""Writing an imported family: the refactored folder (`--refactor-to`) and a stack file (`-o`).

The folder holds per extracted base `bases/<name>/Dockerfile` and, beside it, `context/` with the
files its COPYs read (apart, so a copied file named Dockerfile cannot clash with it); one
rewritten Dockerfile per app under `apps/` (built with the app's original context); and
`import.json`, which says what to build in which order: `layerwise verify` and `layerwise build`
read it; and `docker-bake.hcl`, the same family for `docker buildx bake`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import yaml

from ..atomic import replace_folder
from ..dockerfiles import parse_instructions, render_dockerfile
from ..errors import UserError
from ..plan import contexts
from .categories import CATEGORY_ORDER, CATEGORY_OWNERS
from .importer import BaseImage, Dockerfile, Family, Refactored, categorize, in_category_order, renumber_stages
from .importfile import IMPORT_FILE, ImportedApp, ImportedBase, ImportSet, is_import_output

# ----------------------------------------------------------------------------- refactored folder

def base_folder(base: BaseImage) -> str:
    return "bases/" + base.name.split("/", 1)[1]


def base_context(base: BaseImage) -> str:
    return base_folder(base) + "/context"


def base_dockerfile(base: BaseImage) -> str:
    header = [f"base image {base.ref}, extracted by layerwise import",
              *([f"the image of app {base.app} (its whole final stage)"] if base.app else []),
              f"used by: {', '.join(base.used_by)}"]
    return render_dockerfile(base.from_ref, [(s.category, s.instruction) for s in base.steps], header)


def relative(path: Path, folder: Path) -> Path:
    """`path` as seen from `folder` (`../src/a/Dockerfile`): the same inputs and output moved to
    another place give the same text."""
    return Path(os.path.relpath(path.resolve(), folder.resolve()))


def app_dockerfile(item: Refactored, family: Family, out: Path | None = None) -> str:
    """The original Dockerfile with each stage that begins with a base's steps starting FROM it,
    and without the stages nothing uses any more (stage numbers in from= flags follow). `out`: the
    refactored folder, which the original's path is written relative to (else its name alone)."""
    doc = item.source
    source = relative(doc.path, out) if out is not None else Path(doc.path.name)
    lines = [f"# {doc.name}: rewritten by layerwise import from {source.as_posix()}"]
    lines += list(doc.global_args)
    kept = item.kept_stages()
    new_index = {old: new for new, old in enumerate(kept)}
    for i in kept:
        stage = doc.stages[i]
        lines.append("")
        if i in item.stage_bases:
            ref = family.base(item.stage_bases[i]).ref
            lines.append(f"FROM {ref}" + (f" AS {stage.name}" if stage.name else ""))
        else:
            lines.append(stage.from_text)
        lines += [renumber_stages(s.instruction, new_index) for s in item.steps(i)]
    return "\n".join(lines) + "\n"


def import_set(family: Family, root: Path, out: Path | None = None) -> ImportSet:
    """What import.json says of the refactored folder `root` (to be renamed `out`): every path
    relative to it, so the file does not depend on where the inputs and the folder lie."""
    out = out or root
    bases = tuple(ImportedBase(b.name, b.ref, Path(base_folder(b)) / "Dockerfile",
                               Path(base_context(b)) if b.buildable else None, b.parent, tuple(b.used_by),
                               tuple({"instruction": s.instruction, "category": s.category} for s in b.steps))
                  for b in family.bases)
    apps = []
    for r in family.refactored:
        context = r.source.context if r.source.context and not r.source.text_only else None
        # An app that is a base is built from the base's Dockerfile (verify compares it with its original).
        folder = Path(base_folder(family.base(r.image))) if r.image else Path("apps") / r.source.name
        dockerfile = folder / "Dockerfile"
        apps.append(ImportedApp(r.source.name, relative(r.source.path, out),
                                relative(context, out) if context else None, dockerfile, tuple(r.bases),
                                r.source.unbuildable, r.image, tuple(m.to_dict() for m in r.moves)))
    return ImportSet(root, bases, tuple(apps), family.registry, family.project)


def bake_target(name: str) -> str:
    """A bake target name (letters, digits, '_' and '-') for a base or an app."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def bake_file(family: Family, out: Path) -> str:
    """`docker buildx bake` for the family, run from the folder: a target per base and per app;
    `contexts` point each `FROM <base ref>` at the base's target, so bake builds bases first and
    apps on them. Apps build with their original context and their Dockerfile here (paths relative
    to the folder, as import.json says them; bake reads a dockerfile relative to its context); an app
    that is a base is that base's target."""
    def target(base_name: str) -> str:
        return "base_" + bake_target(base_name.split("/", 1)[-1])

    def hcl_map(items: dict[str, str]) -> str:
        return "{\n" + "".join(f"    {json.dumps(k)} = {json.dumps(v)}\n" for k, v in items.items()) + "  }"

    targets: list[tuple[str, dict[str, str], dict[str, str]]] = []   # (name, settings, contexts)
    for b in family.bases:
        uses = {family.base(b.parent).ref: "target:" + target(b.parent)} if b.parent else {}
        targets.append((target(b.name), {"context": base_context(b), "dockerfile": "../Dockerfile", "tag": b.ref},
                        uses))
    for r in family.refactored:
        if r.image:
            continue
        dockerfile = out / "apps" / r.source.name / "Dockerfile"
        context = r.source.context.resolve() if r.source.context else dockerfile.parent
        uses = {family.base(n).ref: "target:" + target(n) for n in r.bases}
        targets.append(("app_" + bake_target(r.source.name),
                        {"context": relative(context, out).as_posix(),
                         "dockerfile": relative(dockerfile, context).as_posix(),
                         "tag": f"{family.registry}/{family.project}/{r.source.name}:latest"}, uses))
    lines = ["# written by layerwise import: run `docker buildx bake` in this folder",
             'group "default" {',
             "  targets = [" + ", ".join(json.dumps(t) for t, _, _ in targets) + "]",
             "}"]
    for name, settings, uses in targets:
        lines += ["", f"target {json.dumps(name)} {{",
                  f"  context    = {json.dumps(settings['context'])}",
                  f"  dockerfile = {json.dumps(settings['dockerfile'])}",
                  f"  tags       = [{json.dumps(settings['tag'])}]"]
        if uses:
            lines.append(f"  contexts   = {hcl_map(uses)}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def _fill(family: Family, root: Path, out: Path) -> None:
    for base in family.bases:
        folder = root / base_folder(base)
        (root / base_context(base)).mkdir(parents=True)
        if base.buildable and base.context is not None:
            ignore = contexts.dockerignore(base.context)
            for step in base.steps:
                contexts.copy_reproducibly(base.context.resolve(), list(step.sources), root / base_context(base),
                                           ignore)
        (folder / "Dockerfile").write_text(base_dockerfile(base))
    for item in family.refactored:
        if item.image:   # the app is a base: no second image that is only FROM it
            continue
        folder = root / "apps" / item.source.name
        folder.mkdir(parents=True)
        (folder / "Dockerfile").write_text(app_dockerfile(item, family, out))
    (root / "docker-bake.hcl").write_text(bake_file(family, out))
    (root / IMPORT_FILE).write_text(import_set(family, root, out).to_json())


def write_refactored(family: Family, out: Path, *, force: bool = False) -> Path:
    """Write the refactored folder atomically (beside, then renamed into place)."""
    return replace_folder(out, lambda tmp: _fill(family, tmp, out.resolve()), force=force,
                          is_ours=is_import_output, marker=IMPORT_FILE)


# ----------------------------------------------------------------------------- stack file

def _stack_chain(doc: Dockerfile) -> tuple[str | None, list, str | None]:
    """The final stage as (base image, steps) for a stack file, or why it cannot be one."""
    chain = in_category_order(categorize(doc.chain(len(doc.stages) - 1)))
    if any((s.context_digest or "").startswith("stage:") for s in chain):
        return None, [], "copies from another stage (multi-stage builds need the refactored folder)"
    words = chain[0].instruction.split()[1:]
    if any(w.startswith("--") for w in words):
        return None, [], f"its FROM has flags ({' '.join(words[:-1])}), which a stack file's base cannot say"
    return words[-1], chain[1:], None


def _copy_from(step, doc: Dockerfile, stack_dir: Path) -> str:
    """A COPY/ADD with its context paths made relative to the stack file's folder."""
    ins = parse_instructions(step.instruction)[0]
    if not ins.copy_sources:
        return step.instruction
    context = (doc.context or doc.path.parent).resolve()
    sources = [os.path.relpath(context / s.lstrip("/"), stack_dir) for s in ins.args[:-1]]
    return " ".join([ins.keyword, *ins.flags, json.dumps([*sources, ins.args[-1]])])


def stack_text(family: Family, stack_path: Path, base: str | None = None) -> tuple[str, list[str]]:
    """A stack file for the Dockerfiles whose final stage is one chain on the chosen base (by
    default the most common one), and a note per Dockerfile left out."""
    stack_dir = stack_path.resolve().parent
    chains, notes = {}, []
    for doc in family.dockerfiles:
        image, steps, why = _stack_chain(doc)
        if why:
            notes.append(f"{doc.name}: left out: {why}")
        else:
            chains[doc.name] = (doc, image, steps)
    if not chains:
        raise UserError("no Dockerfile can be written as a stack file; use --refactor-to", stack_path)
    counts = Counter(image for _, image, _ in chains.values())
    chosen = base or sorted(counts, key=lambda b: (-counts[b], b))[0]
    if chosen not in counts:
        raise UserError(f"--base {chosen}: no Dockerfile's final stage starts FROM it "
                        f"(bases: {', '.join(sorted(counts))})")
    apps, used = {}, set()
    for name, (doc, image, steps) in sorted(chains.items()):
        if image != chosen:
            notes.append(f"{name}: left out: built FROM {image}, not {chosen} (import it with --base {image})")
            continue
        app: dict[str, list[str]] = {}
        for step in steps:
            text = _copy_from(step, doc, stack_dir) if step.keyword in ("COPY", "ADD") else step.instruction
            app.setdefault(step.category, []).append(text)
            used.add(step.category)
        apps[name] = app
    categories = [{"name": c, "owner": CATEGORY_OWNERS[c][0], "changes_per_month": CATEGORY_OWNERS[c][1]}
                  for c in CATEGORY_ORDER if c in used]
    doc = {"registry": family.registry, "project": family.project, "base": chosen,
           "categories": categories, "apps": apps}
    header = ["# Written by `layerwise import`. Categories come from simple rules (see the README):",
              "# move steps between them and set owners as you like. COPY paths are relative to this file."]
    if any('"../' in t or '["..' in t for app in apps.values() for texts in app.values() for t in texts):
        header.append("# Some COPY sources lie outside this file's folder: plan and build read them only "
                      "under it, so move this file to a folder above every build context.")
    header += [f"# {n}" for n in notes]
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body, notes
