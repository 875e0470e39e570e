"""The plan as plain data: steps, image nodes, the plan itself, and its stable JSON form."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from ..dockerfiles import LAYER_KEYWORDS
from ..jsonout import dumps_json

PLAN_SCHEMA = "layerwise.plan/v1"
FINGERPRINT_TAG_PREFIX = "lw-"


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


class cached:
    """A property computed on first use and kept in the instance (as functools.cached_property,
    without the per-access lock it has before Python 3.12: a plan's steps are read millions of times)."""

    def __init__(self, compute):
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.compute(obj)
        return value


def inflated_bytes(compressed: int, unpacked: int | None) -> int:
    """The bytes of a layer that come out of coded gzip blocks: unpacking them costs an engine
    decoding time, while stored blocks (data that does not compress: models, archives, wheels) are
    only copied. Known from the two sizes alone: a layer that shrinks by s bytes holds at least 2s
    bytes of data that compresses to half or less, as coded data commonly does; the rest is taken
    as stored. Without the uncompressed size (`compressed` is then all that is known), all of it."""
    if unpacked is None:
        return compressed
    return min(unpacked, 2 * max(0, unpacked - compressed))


@dataclass(frozen=True)
class Category:
    name: str
    owner: str
    changes_per_month: float = 0.0
    merge: bool = False
    needs: tuple[str, ...] = ()     # categories whose steps must lie below this one's (any order)


@dataclass(frozen=True)
class Step:
    """One instruction of an image and what identifies its result.

    `identity` covers the normalized text and the digest of the files it copies; what comes
    before it (build args in scope, the parent) is covered by the prefix tree, where steps are
    only equal under equal parents.
    """

    instruction: str
    category: str
    context_digest: str | None = None   # "sha256:..." of the files a COPY/ADD reads
    sources: tuple[str, ...] = ()        # those files, relative to the stack file's folder
    size: int | None = None              # bytes the layer adds, when known
    size_source: str = "unknown"         # hint | context | measured | unknown | empty
    unpacked_size: int | None = None     # uncompressed bytes, when `size` is compressed (measured)

    # Computed once per step: plans of thousands of apps ask for them millions of times.
    @cached
    def keyword(self) -> str:
        return self.instruction.split(None, 1)[0]

    @cached
    def creates_layer(self) -> bool:
        return self.keyword in LAYER_KEYWORDS

    @property
    def unpacked(self) -> int:
        """Bytes the layer takes once unpacked: hints and file sizes are uncompressed already."""
        return self.unpacked_size if self.unpacked_size is not None else (self.size or 0)

    @cached
    def inflated(self) -> int:
        """Bytes of it an engine decodes (`inflated_bytes`); until measured, all of it."""
        return inflated_bytes(self.size or 0, self.unpacked_size)

    @cached
    def identity(self) -> str:
        return sha256_text(self.instruction, self.context_digest or "")

    def short(self, width: int = 60) -> str:
        text = self.instruction
        return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class ImageNode:
    """One image of the family: a parent (or the OS base), its own steps, a name and an owner."""

    key: str                      # repository path without registry: "ai-tools/env-anaconda"
    repository: str               # "localhost:5000/ai-tools/env-anaconda"
    tag: str                      # the human tag: "12"
    fingerprint: str              # sha256 hex of parent fingerprint (or base) and steps
    parent: str | None            # key of the parent image, None when built on the OS base
    base: str                     # what FROM names: the parent's ref or the OS base
    owner: str
    kind: str                     # "base" (shared) or "app"
    apps: tuple[str, ...]         # apps whose image is this one or built on it
    steps: tuple[Step, ...]
    named_by: str | None = None   # "images.<category>" when the stack file named it

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def fingerprint_tag(self) -> str:
        return FINGERPRINT_TAG_PREFIX + self.fingerprint[:16]

    @property
    def layers(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.creates_layer)

    @property
    def categories(self) -> tuple[str, ...]:
        seen: list[str] = []
        for s in self.steps:
            if s.category not in seen:
                seen.append(s.category)
        return tuple(seen)


def _step_dict(s: Step) -> dict:
    # Field by field rather than asdict(), which deep-copies: plans hold a hundred thousand steps.
    return {"instruction": s.instruction, "category": s.category, "context_digest": s.context_digest,
            "sources": list(s.sources), "size": s.size, "size_source": s.size_source,
            "unpacked_size": s.unpacked_size, "creates_layer": s.creates_layer}


@dataclass(frozen=True)
class Plan:
    registry: str
    project: str
    base: str
    categories: tuple[Category, ...]
    images: tuple[ImageNode, ...]         # parents before children, then by key
    apps: dict[str, str] = field(default_factory=dict)   # app -> key of its image
    base_digest: str | None = None        # the OS base's digest, when the fingerprints used it

    @cached
    def _by_key(self) -> dict[str, ImageNode]:
        return {img.key: img for img in self.images}

    @cached
    def _children(self) -> dict[str | None, list[ImageNode]]:
        out: dict[str | None, list[ImageNode]] = {}
        for img in self.images:
            out.setdefault(img.parent, []).append(img)
        return out

    def image(self, key: str) -> ImageNode:
        return self._by_key[key]

    def children(self, key: str | None) -> list[ImageNode]:
        return list(self._children.get(key, ()))

    def chain(self, key: str) -> list[ImageNode]:
        """The image and its ancestors, root first."""
        out = []
        node: str | None = key
        while node is not None:
            img = self.image(node)
            out.append(img)
            node = img.parent
        return out[::-1]

    def category(self, name: str) -> Category:
        for c in self.categories:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "schema": PLAN_SCHEMA,
            "registry": self.registry,
            "project": self.project,
            "base": self.base,
            "base_digest": self.base_digest,
            "categories": [asdict(c) for c in self.categories],
            "images": [
                {
                    "key": img.key,
                    "repository": img.repository,
                    "tag": img.tag,
                    "ref": img.ref,
                    "fingerprint": img.fingerprint,
                    "fingerprint_tag": img.fingerprint_tag,
                    "parent": img.parent,
                    "from": img.base,
                    "owner": img.owner,
                    "kind": img.kind,
                    "named_by": img.named_by,
                    "apps": list(img.apps),
                    "steps": [_step_dict(s) for s in img.steps],
                }
                for img in self.images
            ],
            "apps": dict(sorted(self.apps.items())),
        }

    def to_json(self) -> str:
        return dumps_json(self.to_dict(), ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if data.get("schema") != PLAN_SCHEMA:
            raise ValueError(f"not a {PLAN_SCHEMA} document (schema={data.get('schema')!r})")
        images = tuple(
            ImageNode(
                key=i["key"], repository=i["repository"], tag=i["tag"], fingerprint=i["fingerprint"],
                parent=i["parent"], base=i["from"], owner=i["owner"], kind=i["kind"],
                apps=tuple(i["apps"]), named_by=i.get("named_by"),
                steps=tuple(
                    Step(instruction=s["instruction"], category=s["category"],
                         context_digest=s["context_digest"], sources=tuple(s["sources"]),
                         size=s["size"], size_source=s["size_source"], unpacked_size=s.get("unpacked_size"))
                    for s in i["steps"]
                ),
            )
            for i in data["images"]
        )
        return cls(
            registry=data["registry"], project=data["project"], base=data["base"],
            categories=tuple(Category(**{**c, "needs": tuple(c.get("needs", ()))}) for c in data["categories"]),
            images=images, apps=dict(data["apps"]), base_digest=data.get("base_digest"),
        )
