"""`import.json` (`layerwise.import/v1`): what `import --refactor-to` wrote and `verify` builds.

The file names the registry and project, the extracted base images (parents first, each with its
Dockerfile and context folder inside the refactored folder) and the apps (each with its original
Dockerfile and context, its refactored Dockerfile and the bases it uses). Paths are written as given
(relative ones are relative to the refactored folder); reading resolves them against that folder and
checks every field, anything wrong being one UserError naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..jsonout import json_text
from ..plan.spec import NAME, REPOSITORY

IMPORT_SCHEMA = "layerwise.import/v1"
IMPORT_FILE = "import.json"
MAX_IMPORT_BYTES = 64 << 20     # a family of thousands of apps writes a few MB


@dataclass(frozen=True)
class ImportedBase:
    name: str
    ref: str
    dockerfile: Path
    context: Path | None            # None: the base copies nothing
    parent: str | None
    used_by: tuple[str, ...] = ()   # the apps built on it, directly or through a child base
    steps: tuple[dict, ...] = ()    # informative: {instruction, category} per step (import writes it)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "dockerfile": str(self.dockerfile),
                "context": _text_or_none(self.context), "parent": self.parent, "used_by": list(self.used_by),
                "steps": list(self.steps)}

    @classmethod
    def from_dict(cls, b: dict, where: str, root: Path, path: Path) -> "ImportedBase":
        used_by = b.get("used_by", [])
        if not isinstance(used_by, list) or not all(isinstance(u, str) for u in used_by):
            raise UserError(f"{where}: \"used_by\" must be a list of app names", path)
        return cls(_name(b, "name", where, path, REPOSITORY), _text(b, "ref", where, path),
                   _path(b, "dockerfile", where, root, path), _path(b, "context", where, root, path, True),
                   _text(b, "parent", where, path, True), tuple(used_by))


@dataclass(frozen=True)
class ImportedApp:
    name: str
    original: Path                  # the Dockerfile it was imported from
    context: Path | None            # None: imported without its build context
    dockerfile: Path                # the refactored Dockerfile
    bases: tuple[str, ...]
    unbuildable: str | None = None  # why the legacy builder cannot build the original, as import found
    image: str | None = None        # the base this app is (its whole final stage): no image of its own;
                                    # `dockerfile` is then that base's
    moves: tuple[dict, ...] = ()    # informative: steps import moved (see importer.Move)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "original": str(self.original), "context": _text_or_none(self.context),
                "dockerfile": str(self.dockerfile), "bases": list(self.bases), "unbuildable": self.unbuildable,
                "image": self.image, "moves": list(self.moves)}

    @classmethod
    def from_dict(cls, a: dict, where: str, root: Path, path: Path) -> "ImportedApp":
        bases = a.get("bases", [])
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise UserError(f"{where}: \"bases\" must be a list of base names", path)
        unbuildable = a.get("unbuildable")
        return cls(_name(a, "name", where, path, NAME), _path(a, "original", where, root, path),
                   _path(a, "context", where, root, path, True), _path(a, "dockerfile", where, root, path),
                   tuple(bases), unbuildable if isinstance(unbuildable, str) else None,
                   _text(a, "image", where, path, True))


@dataclass(frozen=True)
class ImportSet:
    dir: Path                       # the refactored folder
    bases: tuple[ImportedBase, ...]
    apps: tuple[ImportedApp, ...]
    registry: str | None = None
    project: str | None = None

    def base(self, name: str) -> ImportedBase:
        return next(b for b in self.bases if b.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": IMPORT_SCHEMA, "registry": self.registry, "project": self.project,
                "bases": [b.to_dict() for b in self.bases], "apps": [a.to_dict() for a in self.apps]}

    def to_json(self) -> str:
        return json_text(self.to_dict())


def is_import_output(folder: Path) -> bool:
    path = folder / IMPORT_FILE
    if not path.is_file():    # a FIFO would block the read
        return False
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(MAX_IMPORT_BYTES)).get("schema") == IMPORT_SCHEMA
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def load_import(directory: Path) -> ImportSet:
    """Read and check DIR/import.json; anything wrong is one UserError naming the file."""
    path = Path(directory) / IMPORT_FILE
    if not path.is_file():
        raise UserError(f"{directory} holds no import.json; write one with "
                        "`layerwise import DOCKERFILE... --refactor-to DIR`")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_IMPORT_BYTES + 1)
        if len(raw) > MAX_IMPORT_BYTES:
            raise UserError(f"larger than {MAX_IMPORT_BYTES >> 20} MiB: not an import.json layerwise wrote", path)
        doc = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"not valid JSON: {e.msg}", path, e.lineno) from None
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text (byte 0x{raw[e.start]:02x}); is it a binary file?", path,
                        raw.count(b"\n", 0, e.start) + 1) from None
    except RecursionError:
        raise UserError("nested too deep to be an import description", path) from None
    except OSError as e:
        raise UserError(f"cannot read it ({e.strerror or e})", path) from None
    if not isinstance(doc, dict) or doc.get("schema") != IMPORT_SCHEMA:
        raise UserError(f"not an import description: \"schema\" must be {IMPORT_SCHEMA!r}", path)
    root = path.parent.resolve()
    bases = tuple(ImportedBase.from_dict(b, f"bases[{i}]", root, path)
                  for i, b in enumerate(_list(doc, "bases", path)))
    apps = tuple(ImportedApp.from_dict(a, f"apps[{i}]", root, path)
                 for i, a in enumerate(_list(doc, "apps", path)))
    _check_names(bases, apps, path)
    return ImportSet(root, bases, apps, _optional_text(doc, "registry"), _optional_text(doc, "project"))


def _list(doc: dict, key: str, path: Path) -> list[dict]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UserError(f"\"{key}\" must be a list of objects", path)
    return value


def _text(obj: dict, key: str, where: str, path: Path, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise UserError(f"{where}: \"{key}\" must be a non-empty string" + (" or null" if optional else ""), path)
    return value


def _name(obj: dict, key: str, where: str, path: Path, pattern: str) -> str:
    """An app or base name: it becomes part of image names, so `../x` or `/x` is refused here."""
    value = _text(obj, key, where, path)
    if not re.match(pattern, value):
        raise UserError(f"{where}: \"{key}\" {value[:100]!r} is not a name `import` writes "
                        "(lower-case letters, digits, '.', '_', '-', '/' between parts)", path)
    return value


def _path(obj: dict, key: str, where: str, root: Path, path: Path, optional: bool = False) -> Path | None:
    """A file or folder the entry names (an absolute value stays as it is). It may be missing (verify
    says so per app), but a FIFO or device where a Dockerfile should be would block or never end."""
    value = _text(obj, key, where, path, optional)
    if value is None:
        return None
    full = root / value
    wanted = "folder" if key == "context" else "file"
    if full.exists() and not (full.is_dir() if wanted == "folder" else full.is_file()):
        raise UserError(f"{where}: \"{key}\" {value[:200]!r} is not a {wanted}", path)
    return full


def _optional_text(doc: dict, key: str) -> str | None:
    """Informative fields, read as they are: verify does not use them."""
    value = doc.get(key)
    return value if isinstance(value, str) else None


def _text_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _check_names(bases: tuple[ImportedBase, ...], apps: tuple[ImportedApp, ...], path: Path) -> None:
    """Unique names, and every base named (as parent or by an app) listed before it is needed."""
    seen: set[str] = set()
    for b in bases:
        if b.name in seen:
            raise UserError(f"base {b.name!r} is listed twice", path)
        if b.parent is not None and b.parent not in seen:
            raise UserError(f"base {b.name!r}: its parent {b.parent!r} is not a base listed before it", path)
        seen.add(b.name)
    names: set[str] = set()
    for a in apps:
        if a.name in names:
            raise UserError(f"app {a.name!r} is listed twice", path)
        names.add(a.name)
        for name in a.bases + ((a.image,) if a.image else ()):
            if name not in seen:
                raise UserError(f"app {a.name!r} uses base {name!r}, which is not listed", path)
