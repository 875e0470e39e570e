"""Names of extracted base images, chosen from what they hold, the same on every run.

For each base, the first of these that applies:
1. it is an app: the base's steps are an app's whole final stage, so the base *is* that app and
   takes its name (no second image that is only `FROM` it);
2. its stage has a telling name: the FROM image's name and the stage's (`golang` + `builder` →
   `go-builder`); an unnamed last stage of a multi-stage Dockerfile is the `runtime`;
3. the part the names of the apps using it have in common (`alpine3-23` for `3-12-alpine3-23`, …);
4. the FROM image's name and the category of its top layer (`debian-tools`).
Clashes, among bases or with an app's image, are told apart by the top layer's category, then the
FROM image's tag, then `-2`, `-3`, … in the order of the apps using them. `--name OLD=NEW` wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

# Image names that say little alone: the folder above them is added (`dotnet/sdk` → `dotnet-sdk`).
_GENERIC_IMAGES = {"sdk", "runtime", "runtime-deps", "aspnet", "base", "core", "servercore", "nanoserver"}
_IMAGE_WORDS = {"golang": "go"}
# Stage names that say nothing of what the stage holds.
_GENERIC_STAGES = {"base", "stage", "final", "image", "default"}
_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")


@dataclass(frozen=True)
class Candidate:
    """What is known of one base for naming it."""

    key: int                       # its place in the prefix tree (any stable order)
    app: str | None                # the app it is (its whole final stage), if any
    from_image: str                # the external image its chain starts FROM
    stage: str | None              # the name of the stage its top step belongs to
    runtime: bool                  # that stage is an unnamed last stage of a multi-stage Dockerfile
    users: tuple[str, ...]         # the apps built on it, sorted
    category: str                  # the category of its top layer


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def image_word(ref: str) -> str:
    """A short name for an image reference: its last path part without registry, tag or digest."""
    parts = ref.split("@")[0].split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    last = parts[-1].split(":")[0]
    if last in _GENERIC_IMAGES and len(parts) > 1:
        last = f"{parts[-2]}-{last}"
    return slug(_IMAGE_WORDS.get(last, last)) or "image"


def image_tag(ref: str) -> str:
    name = ref.split("@")[0]
    return slug(name.rsplit(":", 1)[1]) if ":" in name.rsplit("/", 1)[-1] else ""


def common_part(names: tuple[str, ...]) -> str:
    """The longest run of words (split at '-') every name holds, or '' when it is shorter than 4
    characters or only numbers (`3-10`… says which version, not what is shared)."""
    words = [n.split("-") for n in names]
    best = ""
    first = words[0]
    for i in range(len(first)):
        for j in range(len(first), i, -1):
            run = first[i:j]
            text = "-".join(run)
            if len(text) <= len(best):
                break
            if all(_holds(w, run) for w in words[1:]):
                best = text
                break
    return best if len(best) >= 4 and not best.replace("-", "").isdigit() else ""


def _holds(words: list[str], run: list[str]) -> bool:
    return any(words[k:k + len(run)] == run for k in range(len(words) - len(run) + 1))


def first_choice(c: Candidate) -> str:
    if c.app:
        return c.app
    image = image_word(c.from_image)
    stage = slug(c.stage or "")
    if stage and stage not in _GENERIC_STAGES:
        return stage if image in stage else f"{image}-{stage}"
    if c.runtime:
        return f"{image}-runtime"
    common = common_part(c.users)
    if common:
        return common if image.split("-")[0] in common else f"{image}-{common}"
    return f"{image}-{c.category}"


def choose_names(candidates: list[Candidate], app_names: set[str],
                 overrides: dict[str, str] | None = None) -> dict[int, str]:
    """A unique name per base (by `key`), none equal to an app's image but the app it is."""
    names = {c.key: first_choice(c) for c in candidates}
    by_key = {c.key: c for c in candidates}
    fixed = {c.key for c in candidates if c.app}
    reserved = app_names - {c.app for c in candidates if c.app}   # apps that keep an image of their own
    for qualify in (_by_category, _by_tag, _by_order):
        for name, group in _clashes(names, fixed, reserved):
            keep_first = name not in reserved and not any(names[k] == name for k in fixed)
            qualify([by_key[k] for k in group], names, keep_first)
    return _override(names, overrides or {}, app_names - reserved)


def _clashes(names: dict[int, str], fixed: set[int], reserved: set[str]) -> list[tuple[str, list[int]]]:
    """Per name held twice (or by an app): the bases that must change (never an app's own base)."""
    groups: dict[str, list[int]] = {}
    for key in sorted(names):
        groups.setdefault(names[key], []).append(key)
    out = []
    for name, keys in sorted(groups.items()):
        movable = [k for k in keys if k not in fixed]
        if movable and (len(keys) > 1 or name in reserved):
            out.append((name, movable))
    return out


def _by_category(group: list[Candidate], names: dict[int, str], keep_first: bool) -> None:
    if len({c.category for c in group}) == len(group):
        for c in group:
            if not names[c.key].endswith("-" + c.category):
                names[c.key] += "-" + c.category


def _by_tag(group: list[Candidate], names: dict[int, str], keep_first: bool) -> None:
    tags = [image_tag(c.from_image) for c in group]
    if all(tags) and len(set(tags)) == len(group) and not any(t in names[c.key] for c, t in zip(group, tags)):
        for c, tag in zip(group, tags):
            names[c.key] += "-" + tag


def _by_order(group: list[Candidate], names: dict[int, str], keep_first: bool) -> None:
    """`-2`, `-3`, … in the order of the apps using them; the first keeps the name when it may."""
    taken = set(names.values())
    number = 1
    for n, c in enumerate(sorted(group, key=lambda c: (c.users, c.key))):
        if n == 0 and keep_first:
            continue
        stem = names[c.key]
        number += 1
        while f"{stem}-{number}" in taken:
            number += 1
        names[c.key] = f"{stem}-{number}"
        taken.add(names[c.key])


def _override(names: dict[int, str], overrides: dict[str, str], app_bases: set[str]) -> dict[int, str]:
    """`--name OLD=NEW`: OLD is a name chosen above (with or without the project)."""
    out = dict(names)
    for old, new in overrides.items():
        key = next((k for k, v in names.items() if v == old.rsplit("/", 1)[-1]), None)
        if key is None:
            raise UserError(f"--name {old}={new}: no base image is called {old!r} "
                            f"(bases: {', '.join(sorted(names.values()))})")
        if not _NAME.fullmatch(new):
            raise UserError(f"--name {old}={new}: use lower-case letters, digits, '.', '_' and '-'")
        if names[key] in app_bases:
            raise UserError(f"--name {old}={new}: {old} is an app's own image; rename the app's folder instead")
        out[key] = new
    clash = [n for n in set(out.values()) if list(out.values()).count(n) > 1]
    if clash:
        raise UserError(f"--name: two base images would be called {sorted(clash)[0]!r}; choose another name")
    return out
