"""The state file next to the stack file: what was built and pushed, with measured layer sizes.

`layerwise.state.json` records, per image, the fingerprint it was built at, what its steps were
(to say *why* an image is rebuilt), and after a push its manifest digest and each own layer's
compressed size and digest. `plan` uses those measured sizes in place of hints.

Only one build of a stack writes it at a time: `locked` holds an flock on `layerwise.state.json.lock`
beside it (the kernel drops it when the holder dies, so a killed build never leaves it stuck).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..atomic import write_atomically
from ..errors import UserError
from ..jsonout import json_text
from ..plan.model import ImageNode, Plan

STATE_SCHEMA = "layerwise.state/v1"
STATE_FILE = "layerwise.state.json"
LOCK_SUFFIX = ".lock"


@dataclass
class LayerRecord:
    step: str          # identity of the step that made it
    digest: str        # compressed blob digest in the registry
    size: int          # compressed bytes
    diff_id: str = ""  # digest of the uncompressed tar
    unpacked: int | None = None   # bytes of the uncompressed tar, where layerwise wrote it


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

    def measured_sizes(self) -> dict[str, tuple[int, int | None]]:
        """Step identity → (compressed bytes, uncompressed bytes or None) of the layer it made, from
        every pushed image."""
        return {l.step: (l.size, l.unpacked) for rec in self.images.values() for l in rec.layers}

    def unpacked_sizes(self) -> dict[str, int]:
        """Blob digest → bytes of the uncompressed tar, where known."""
        return {l.digest: l.unpacked for rec in self.images.values() for l in rec.layers if l.unpacked is not None}

    def save(self) -> None:
        doc = {"schema": STATE_SCHEMA, "base_digest": self.base_digest, "pull_costs": self.pull_costs,
               "images": {k: asdict(v) for k, v in sorted(self.images.items())}}
        write_atomically(self.path, json_text(doc))


def state_path(stack_path: Path) -> Path:
    return stack_path.parent / STATE_FILE


def load_state(stack_path: Path) -> State:
    """The state file beside the stack file (empty when there is none). One that is not what
    layerwise writes (cut, edited by hand, another schema) stops the command with the way out."""
    path = state_path(stack_path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return State(path)
    except OSError as e:
        raise UserError(f"cannot read the state file ({e.strerror or e}); fix its permissions or delete it",
                        path) from None
    try:
        doc = json.loads(raw)
    except UnicodeDecodeError:
        raise _broken(path, "it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _broken(path, f"it is not valid JSON ({e.msg})", e.lineno) from None
    except RecursionError:
        raise _broken(path, "it is nested too deep") from None
    if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise _broken(path, f"its schema is {found!r}, not {STATE_SCHEMA!r}")
    return _parse_state(path, doc)


def _parse_state(path: Path, doc: dict) -> State:
    from pydantic import TypeAdapter, ValidationError  # only when there is a state file to check

    def check(key: str, kind, default):
        try:
            return TypeAdapter(kind).validate_python(default if doc.get(key) is None else doc[key])
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in (key, *first["loc"]))
            raise _broken(path, f"{where}: {first['msg']}") from None

    images = check("images", dict[str, ImageRecord], {})
    pull_costs = check("pull_costs", dict[str, dict[str, float]], {})
    base_digest = check("base_digest", str | None, None)
    return State(path, images, base_digest, pull_costs)


def _broken(path: Path, why: str, line: int | None = None) -> UserError:
    return UserError(f"not a state file layerwise wrote: {why}; delete it (the next build finds what is "
                     "already built by its fingerprint tags and records it again)", path, line)


@contextmanager
def locked(stack_path: Path, wait: bool = True, say=None) -> Iterator[None]:
    """Hold the stack's state lock while the block runs: a second build of the same stack waits for
    the first (saying so), or with wait=False stops with a clear error."""
    path = state_path(stack_path).with_name(STATE_FILE + LOCK_SUFFIX)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot open the build lock ({e.strerror or e})", path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                raise UserError(f"another build of this stack is running ({holder}); run again once it is "
                                "done, or without --no-wait to wait for it", path) from None
            (say or (lambda line: print(line, file=sys.stderr)))(
                f"layerwise: waiting for another build of this stack to finish ({holder}; lock {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)     # drops the lock


def with_measured_sizes(plan: Plan, sizes: dict[str, tuple[int, int | None]]) -> Plan:
    """The plan with each layer's size replaced by its measured compressed size where known, and its
    unpacked size by the measured one (a state file written before layerwise recorded it has none:
    the size from hints or files then stays as the unpacked size)."""
    if not sizes:
        return plan

    def measured(s):
        size, unpacked = sizes[s.identity]
        return replace(s, size=size, size_source="measured",
                       unpacked_size=unpacked if unpacked is not None else s.unpacked)

    images = tuple(
        replace(img, steps=tuple(measured(s) if s.creates_layer and s.identity in sizes else s
                                 for s in img.steps))
        for img in plan.images)
    return replace(plan, images=images)
