"""The state file next to the stack file: what was built and pushed, with measured layer sizes.

`layerwise.state.json` records, per image, the fingerprint it was built at, what its steps were
(to say *why* an image is rebuilt), and after a push its manifest digest and each own layer's
compressed size and digest. `plan` uses those measured sizes in place of hints.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..atomic import write_atomically
from ..jsonout import json_text
from ..plan.model import ImageNode, Plan

STATE_SCHEMA = "layerwise.state/v1"
STATE_FILE = "layerwise.state.json"


@dataclass
class LayerRecord:
    step: str          # identity of the step that made it
    digest: str        # compressed blob digest in the registry
    size: int          # compressed bytes
    diff_id: str = ""  # digest of the uncompressed tar


@dataclass
class ImageRecord:
    fingerprint: str
    parent_fingerprint: str | None     # the parent's fingerprint; for a root image the OS base digest
    base: str
    category_steps: dict[str, list[str]]     # category -> step identities, in order
    digest: str | None = None                # manifest digest once pushed
    layers: list[LayerRecord] = field(default_factory=list)   # the image's own layers

    @classmethod
    def of(cls, plan: Plan, img: ImageNode) -> "ImageRecord":
        steps: dict[str, list[str]] = {}
        for s in img.steps:
            steps.setdefault(s.category, []).append(s.identity)
        below = plan.image(img.parent).fingerprint if img.parent else plan.base_digest
        return cls(img.fingerprint, below, img.base, steps)


@dataclass
class State:
    path: Path
    images: dict[str, ImageRecord] = field(default_factory=dict)
    base_digest: str | None = None     # the OS base's digest at the last build
    pull_costs: dict[str, dict[str, float]] = field(default_factory=dict)   # host kind -> measured

    def measured_sizes(self) -> dict[str, int]:
        """Step identity → compressed bytes of the layer it made, from every pushed image."""
        return {l.step: l.size for rec in self.images.values() for l in rec.layers}

    def save(self) -> None:
        doc = {"schema": STATE_SCHEMA, "base_digest": self.base_digest, "pull_costs": self.pull_costs,
               "images": {k: asdict(v) for k, v in sorted(self.images.items())}}
        write_atomically(self.path, json_text(doc))


def state_path(stack_path: Path) -> Path:
    return stack_path.parent / STATE_FILE


def load_state(stack_path: Path) -> State:
    path = state_path(stack_path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return State(path)
    except (OSError, ValueError):
        return State(path)   # an unreadable state only costs a rebuild; it is rewritten after one
    if doc.get("schema") != STATE_SCHEMA:
        return State(path)
    images = {}
    for key, rec in doc.get("images", {}).items():
        layers = [LayerRecord(**l) for l in rec.pop("layers", [])]
        images[key] = ImageRecord(**rec, layers=layers)
    return State(path, images, doc.get("base_digest"), doc.get("pull_costs") or {})


def with_measured_sizes(plan: Plan, sizes: dict[str, int]) -> Plan:
    """The plan with each layer's size replaced by its measured compressed size where known (the
    size it had, from hints or files, stays as its unpacked size)."""
    if not sizes:
        return plan
    images = tuple(
        replace(img, steps=tuple(
            replace(s, size=sizes[s.identity], size_source="measured", unpacked_size=s.unpacked)
            if s.creates_layer and s.identity in sizes else s
            for s in img.steps))
        for img in plan.images)
    return replace(plan, images=images)
