"""`layerwise affected`: which images a change forces to rebuild, parents first, and why.

A change is an image (by key, ref, repository or app name) or a path: a context file maps to every
image with a step that copies it, a Dockerfile of an import folder to its image, the stack file or
import.json to every image. What is built on an affected image (its children, and for an import
folder the apps whose other stages start FROM it) is affected too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..importing.importfile import IMPORT_FILE
from ..plan.model import ImageNode, Plan
from ..plan.spec import Stack
from .loader import Family, ImportedFamily


@dataclass
class Affected:
    key: str
    ref: str
    owner: str
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"key": self.key, "ref": self.ref, "owner": self.owner, "reasons": self.reasons}


def affected(family: Family, plan: Plan, changed: list[str]) -> list[Affected]:
    """The images to rebuild for `changed` (paths or image names), in plan order (parents first)."""
    direct: dict[str, list[str]] = {}
    for item in changed:
        for key, reason in _resolve(family, plan, item):
            direct.setdefault(key, []).append(reason)
    out: dict[str, Affected] = {}
    for img in plan.images:      # parents first, so a parent's verdict is known before its children's
        reasons = list(direct.get(img.key, []))
        reasons += [f"{'parent' if u == img.parent else 'base'} {u} rebuilt" for u in _below(family, img)
                    if u in out]
        if reasons:
            out[img.key] = Affected(img.key, img.ref, img.owner, reasons)
    return list(out.values())


def _below(family: Family, img: ImageNode) -> list[str]:
    """The images this one is built on: its parent, and (import folder) the bases its stages use."""
    needs = family.needs.get(img.key, ()) if isinstance(family, ImportedFamily) else ()
    return list(dict.fromkeys([*([img.parent] if img.parent else []), *needs]))


def _resolve(family: Family, plan: Plan, item: str) -> list[tuple[str, str]]:
    key = plan.apps.get(item) or next((i.key for i in plan.images if item in (i.key, i.ref, i.repository)), None)
    if key is not None:
        return [(key, f"{item} named as changed")]
    root = family.root.resolve()
    rel = _relative(item, root)
    if rel is None:
        raise UserError(f"--changed {item}: neither an image of the family nor a path inside {root}; "
                        f"give an image ({', '.join(i.key for i in plan.images)}) or a file the family reads")
    if isinstance(family, Stack):
        if (root / rel).resolve() == family.path.resolve():
            return [(img.key, f"the stack file {rel} changed") for img in plan.images if not img.parent]
        found = _copied_by(plan, rel, lambda img: ".")
    else:
        if rel == IMPORT_FILE:
            return [(img.key, f"{IMPORT_FILE} changed") for img in plan.images if not _below(family, img)]
        found = [(k, f"its Dockerfile {rel} changed") for k, given in sorted(family.inputs.items())
                 if _relative(str(given.dockerfile), root) == rel]
        contexts = {k: _relative(str(given.context), root) for k, given in family.inputs.items() if given.context}
        found += _copied_by(plan, rel, lambda img: contexts.get(img.key))
    if not found:
        raise UserError(f"--changed {item}: no image of the family reads {rel} (no step copies it); "
                        f"paths are relative to {root}")
    return found


def _copied_by(plan: Plan, rel: str, context_of) -> list[tuple[str, str]]:
    """Images with a step whose sources (relative to the image's context) hold `rel` or lie in it."""
    found = []
    for img in plan.images:
        context = context_of(img)
        if context is None:
            continue
        inside = rel if context == "." else (os.path.relpath(rel, context) if _under(rel, context) else None)
        if inside is None:
            continue
        step = next((s for s in img.steps for src in s.sources
                     if _under(inside, src) or _under(src, inside)), None)
        if step is not None:
            found.append((img.key, f"{rel} changed ({step.short(50)})"))
    return found


def _under(path: str, folder: str) -> bool:
    return folder in (".", "") or path == folder or path.startswith(folder.rstrip("/") + "/")


def _relative(item: str, root: Path) -> str | None:
    """`item` as a normalized path relative to root: as given relative to root, else to the current
    folder; None when it lies outside root."""
    candidates = [Path(item)] if os.path.isabs(item) else [root / item, Path.cwd() / item]
    for path in candidates:
        full = Path(os.path.normpath(path.absolute()))
        if full == root or root in full.parents:
            if path is candidates[0] or full.exists():
                return os.path.relpath(full, root)
    return None
