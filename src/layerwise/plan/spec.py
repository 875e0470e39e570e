"""The stack file (`layerwise.yaml`): schema, loading, and validation with file:line errors.

Loading ends in `Stack`: the validated settings plus, per app, its steps in category order with
COPY sources digested. Everything after this module works on that and never reads YAML.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..dockerfiles import parse_fragment, prefetch
from ..errors import UserError
from ..oci.reference import Reference
from ..units import parse_size
from . import contexts
from .model import Category, Step

if TYPE_CHECKING:   # a type only: fleet.py reads its YAML with this module's loader
    from .fleet import Fleet

NAME = r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$"
REPOSITORY = r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$"
TAG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
APP_KEYS = ("tag", "entrypoint", "cmd", "env", "workdir", "user", "expose")


class CategorySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    owner: str = Field(min_length=1)
    changes_per_month: float = Field(default=0.0, ge=0)
    merge: bool = False
    # The categories whose steps this one's steps use (a venv, a tool): they stay below it whatever
    # order is chosen. Steps of one category always keep their order.
    needs: list[str] = Field(default_factory=list)

    @field_validator("owner")
    @classmethod
    def _one_line(cls, owner: str) -> str:   # written into CODEOWNERS and Dockerfile comments
        if re.search(r"[\x00-\x1f\x7f]", owner):
            raise ValueError("an owner is one line of text, a team such as app-team")
        return owner


class ImageNameSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=REPOSITORY)
    tag: str = Field(default="latest", pattern=TAG)


class AppSpec(BaseModel):
    """App-level settings; every other key is a category and is checked by `_category_steps`."""

    model_config = ConfigDict(extra="allow")
    tag: str = Field(default="latest", pattern=TAG)
    entrypoint: str | list[str] | None = None
    cmd: str | list[str] | None = None
    env: dict[str, str | int | float | bool] = Field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    expose: list[int | str] | int | str | None = None


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    registries: list[str] = Field(min_length=1)   # the registries images may come from (policy.py)


class StackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: PolicySpec | None = None
    # The order of the categories in every image chain: `stack` (as listed under categories:),
    # `optimize` (the order the planner finds cheapest for monthly updates, see planner.choose_order),
    # or the category names in the order wanted (bottom first).
    order: Literal["stack", "optimize"] | list[str] = "stack"
    # The team's own fleet (a fleet file, as `simulate --fleet` reads; relative to this file):
    #     fleet: fleet.yaml
    # When given, `order: optimize` and the order `plan` recommends are judged on it: the monthly
    # update seconds of every group's hosts (their kind, link, apps and the fleet's update rates;
    # the fleet file's engine costs, else the assumed ones, never measured ones, so that every
    # command gets the same order), then bytes. Without it: one reference host per kind.
    fleet: str | None = None
    registry: str = Field(min_length=1)
    project: str = Field(pattern=REPOSITORY)
    base: str = Field(min_length=1)
    categories: list[CategorySpec] = Field(min_length=1)
    images: dict[str, ImageNameSpec] = Field(default_factory=dict)
    apps: dict[str, AppSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Stack:
    """A loaded, validated stack file."""

    path: Path
    registry: str
    project: str
    base: str
    categories: tuple[Category, ...]
    names: dict[str, tuple[str, str]]     # category -> (repository path, tag)
    apps: dict[str, tuple[Step, ...]]      # app -> its steps in category order, not yet merged
    app_tags: dict[str, str]               # app -> the human tag of its image
    allowed_registries: tuple[str, ...] = ()   # `policy: {registries: [...]}`; empty: no policy here
    policy_line: int | None = None
    order: str | tuple[str, ...] = "stack"     # "stack", "optimize" or category names, bottom first
    settings_steps: dict[str, int] = field(default_factory=dict)   # app -> its last steps that come
    #                                          from app settings (ENV, ENTRYPOINT...): they stay last
    fleet: Fleet | None = None             # `fleet:`, the hosts the order of categories is judged on

    @property
    def root(self) -> Path:
        return self.path.parent


# ----------------------------------------------------------------------------- YAML with lines

def _line_map(node: yaml.Node, path: tuple, lines: dict, texts: dict, depth: int = 0) -> None:
    """Record the 1-based line of every key and item (`lines`) and of the first character of every
    scalar's content (`texts`), keyed by its path in the loaded data: one walk of the node tree."""
    if depth > 50:
        return
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode):
        texts.setdefault(path, _first_text_line(node))
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            lines.setdefault(sub, key.start_mark.line + 1)
            _line_map(value, sub, lines, texts, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(path + (i,), item.start_mark.line + 1)
            _line_map(item, path + (i,), lines, texts, depth + 1)


def _first_text_line(node: yaml.Node) -> int:
    """Line of a scalar's first character of content (block scalars start on the next line)."""
    line = node.start_mark.line + 1
    return line + 1 if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">") else line


class Lines:
    def __init__(self, lines: dict, text_lines: dict):
        self._lines = lines
        self._text = text_lines

    def at(self, path: tuple) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get((), None)

    def text_line(self, path: tuple) -> int | None:
        return self._text.get(path) or self.at(path)


# Hostile input stays bounded: a stack or fleet file is at most MAX_YAML_BYTES (the largest family
# measured, 5,000 apps of 100 steps, is 27 MB and takes 1.2 GB to plan: the whole tree is needed in
# memory, so streaming would not bound it), nests at most MAX_YAML_DEPTH levels, and its aliases may
# expand it to at most MAX_YAML_VALUES values, or ALIAS_FACTOR times the values written, if more
# (a "billion laughs" file of ten lines would otherwise expand to 9^8 values).
MAX_YAML_BYTES = 32 << 20
MAX_YAML_DEPTH = 100
MAX_YAML_VALUES = 1_000_000
ALIAS_FACTOR = 10


class _Refused(yaml.MarkedYAMLError):
    """A YAML file layerwise will not expand: too deep, recursive, or an alias bomb."""


class _LocatingConstructor:
    """A value the safe constructor cannot make (`2001-13-45` as a date, `!!int abc`) is a
    ConstructorError at its node's line, not a bare ValueError without one."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a scalar's constructor raises is bad input
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({e})", node.start_mark) from None


class _PythonLoader(_LocatingConstructor, yaml.SafeLoader):
    """PyYAML's pure-Python loader, refusing nesting beyond MAX_YAML_DEPTH before Python's own
    recursion limit (about 300 levels) turns it into a RecursionError."""

    _depth = 0

    def compose_node(self, parent, index):
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels; "
                           "a stack file needs a handful", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# libyaml's C parser when PyYAML was built with it (15× faster on large stack files), else Python's.
_LOADER = getattr(yaml, "CSafeLoader", _PythonLoader)


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _check_shape(root: yaml.Node) -> None:
    """Refuse a node graph that is recursive, nests too deep, or expands (an alias repeats the node
    it names, not a copy) to too many values. One walk over the distinct nodes, without recursion;
    scalars, most of the nodes, are counted where their parent is."""
    scalar = yaml.ScalarNode
    size: dict[int, int] = {}      # id(collection) -> values in it once aliases are expanded
    height: dict[int, int] = {}
    written = 1
    path: set[int] = set()         # collections whose children are being walked
    todo: list[tuple[yaml.Node, bool]] = [] if root.__class__ is scalar else [(root, False)]
    while todo:
        node, finished = todo.pop()
        key = id(node)
        if finished:
            total, tallest = 1, 1
            for kid in _children(node):
                written += 1
                if kid.__class__ is scalar:
                    total += 1
                else:
                    total += size[id(kid)]
                    tallest = max(tallest, height[id(kid)])
            size[key], height[key] = total, tallest + 1
            path.discard(key)
        elif key in path:
            raise _Refused(None, None, "an alias refers to a node that contains it (a recursive alias); "
                           "write the content out instead", node.start_mark)
        elif key not in size:
            path.add(key)
            todo.append((node, True))
            todo += [(kid, False) for kid in _children(node) if kid.__class__ is not scalar]
    limit = max(MAX_YAML_VALUES, ALIAS_FACTOR * written)
    for measure, most, what in (
            (height, MAX_YAML_DEPTH, f"nested deeper than {MAX_YAML_DEPTH} levels; a stack file needs a handful"),
            (size, limit, f"the aliases under this node expand to more than {limit:,} values "
                          "(an alias bomb?); write the content out or use fewer nested aliases")):
        if measure.get(id(root), 1) > most:
            node = root      # the deepest node still over the limit says where
            while over := [k for k in _children(node) if measure.get(id(k), 1) > most]:
                node = max(over, key=lambda k: measure[id(k)])
            raise _Refused(None, None, what, node.start_mark)


def _parse(text: str, loader_class) -> tuple[yaml.Node | None, Any]:
    """One parse: the node tree (for the lines) and the data constructed from that same tree."""
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_shape(root)
        try:
            return root, loader.construct_document(root)
        except yaml.YAMLError:
            raise
        except Exception as e:  # noqa: BLE001 - the Python loader parses again to say where
            raise yaml.constructor.ConstructorError(None, None, f"cannot read a value ({e})") from None
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, refusing more than MAX_YAML_BYTES (read no further than that)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise UserError("file not found; check the path", path) from None
    except IsADirectoryError:
        raise UserError("is a folder; give the YAML file in it", path) from None
    except OSError as e:
        raise UserError(f"cannot read the file: {e.strerror}", path) from None
    if len(data) > MAX_YAML_BYTES:
        raise UserError(f"larger than {MAX_YAML_BYTES >> 20} MiB, the most layerwise reads as a YAML file; "
                        "is it the right file? (a 5,000-app family is 27 MB)", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                        "a YAML file must be UTF-8: is it a binary file, or saved in another encoding?",
                        path, line) from None


def _yaml_error(e: yaml.YAMLError, text: str, path: Path) -> UserError:
    """One line naming the line and what is wrong."""
    if isinstance(e, yaml.reader.ReaderError):    # a character YAML does not allow; no mark, a position
        line = text.count("\n", 0, e.position) + 1
        code = ord(e.character) if isinstance(e.character, str) else e.character
        return UserError(f"invalid YAML: character #x{code:04x} is not allowed in YAML text; "
                         "is it a binary file?", path, line)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    context = getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if context is not None and mark is not None and context.line != mark.line:
        problem += f" ({getattr(e, 'context', None) or 'started'} at line {context.line + 1})"
    prefix = "" if isinstance(e, _Refused) else "invalid YAML: "
    return UserError(prefix + " ".join(problem.split()), path, mark.line + 1 if mark else None)


def read_yaml(path: Path) -> tuple[Any, "Lines"]:
    text = _read_text(path)
    try:
        root, data = _parse(text, _LOADER)
    except _Refused as e:
        raise _yaml_error(e, text, path) from None
    except yaml.YAMLError as e:
        # The pure-Python parser says what is wrong in more words (the character, the token);
        # bad input is rare, so it parses again to give that message, at the same line.
        try:
            _parse(text, _PythonLoader)
        except yaml.YAMLError as better:
            raise _yaml_error(better, text, path) from None
        raise _yaml_error(e, text, path) from None
    lines: dict = {}
    texts: dict = {}
    if root is not None:
        _line_map(root, (), lines, texts)
    return data, Lines(lines, texts)


# ----------------------------------------------------------------------------- validation

def _data_path(data: Any, loc: tuple) -> tuple:
    """The part of a pydantic error location that indexes into the data (drops union tags)."""
    out = []
    for i, part in enumerate(loc):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            if isinstance(data, dict) and i == len(loc) - 1:
                out.append(part)  # the missing or unknown key itself
            break
        out.append(part)
    return tuple(out)


def _explain(err: dict, path: tuple) -> str:
    where = ".".join(str(p) for p in path) or "the stack file"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {where!r}; check the spelling (see the stack file format in the README)"
    if kind == "missing":
        return f"missing key {where!r}"
    return f"{where}: {err['msg']}"


def validate_model(model: type[BaseModel], data: Any, path: Path, lines: Lines, what: str):
    """Validate loaded YAML against a pydantic model; the first problem becomes a file:line error."""
    if not isinstance(data, dict):
        raise UserError(f"the file must be a mapping ({what})", path, 1)
    try:
        # Top-level `x-` keys hold YAML anchors for reuse, as in compose files.
        return model.model_validate({k: v for k, v in data.items() if not str(k).startswith("x-")})
    except ValidationError as e:
        err = e.errors()[0]
        where = _data_path(data, tuple(err["loc"]))
        raise UserError(_explain(err, where), path, lines.at(where)) from None


# ----------------------------------------------------------------------------- steps

def _category_texts(value: Any, where: tuple, path: Path,
                    lines: Lines) -> tuple[list[tuple[str, int | None]], int | None]:
    """Instruction texts (with their lines) and the size hint of one category value."""
    size = None
    if isinstance(value, dict):
        unknown = set(value) - {"steps", "size"}
        if unknown or "steps" not in value:
            key = sorted(unknown, key=str)[0] if unknown else None   # keys may be any YAML scalar
            msg = (f"unknown key {key!r} in a category value; use 'steps' and 'size'" if unknown
                   else "a category mapping needs 'steps:' (instruction text or a list of it)")
            raise UserError(msg, path, lines.at(where + ((key,) if unknown else ())))
        if "size" in value:
            try:
                size = parse_size(value["size"])
            except ValueError as e:
                raise UserError(str(e), path, lines.at(where + ("size",))) from None
        where = where + ("steps",)
        value = value["steps"]
    items = value if isinstance(value, list) else [value]
    texts = []
    for i, item in enumerate(items):
        item_where = where + (i,) if isinstance(value, list) else where
        if not isinstance(item, str) or not item.strip():
            raise UserError("a step must be Dockerfile instruction text, e.g. 'RUN make install'",
                            path, lines.at(item_where))
        texts.append((item, lines.text_line(item_where)))
    return texts, size


def _app_config_texts(app: AppSpec) -> list[str]:
    """Dockerfile text for the app-level settings, in a fixed order."""
    out = []
    if app.env:
        out.append("ENV " + " ".join(f"{k}={json.dumps(_env_str(v), ensure_ascii=False)}" for k, v in app.env.items()))
    if app.workdir:
        out.append(f"WORKDIR {app.workdir}")
    if app.user:
        out.append(f"USER {app.user}")
    if app.expose is not None:
        ports = app.expose if isinstance(app.expose, list) else [app.expose]
        out.append("EXPOSE " + " ".join(str(p) for p in ports))
    for key in ("entrypoint", "cmd"):
        value = getattr(app, key)
        if value is not None:
            out.append(f"{key.upper()} " + (json.dumps(value) if isinstance(value, list) else value))
    return out


def _env_str(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _steps_of(texts, category: str, size_hint: int | None, stack_root: Path, path: Path,
              files: dict | None = None) -> list[Step]:
    """Steps of one category. `files`: COPY sources already resolved and digested in this load,
    by their text (a family repeats the same COPY in many apps)."""
    files = {} if files is None else files
    file = str(path)
    found = []     # (instruction text, digest, sources, size, size source), as the files say
    for text, line in texts:
        first = line or 1
        for ins in parse_fragment(text, file=file, first_line=first):
            at = first + ins.line - 1
            if ins.keyword == "FROM":
                raise UserError("FROM is not allowed in a category: the plan chooses each image's "
                                "parent; put the OS image in 'base:'", path, at)
            digest, sources, size, source = None, (), None, "unknown"
            if ins.copy_sources:
                if ins.copy_sources not in files:
                    rels = contexts.resolve_sources(stack_root, ins.copy_sources, file=file, line=at)
                    files[ins.copy_sources] = (tuple(rels), contexts.digest_files(stack_root.resolve(), rels))
                sources, digested = files[ins.copy_sources]
                digest, size, source = digested.digest, digested.size, "context"
            if not ins.creates_layer:
                size, source = 0, "empty"
            found.append((ins.text, digest, sources, size, source))
    if size_hint is not None:
        found = _apply_hint(found, size_hint)
    return [Step(instruction=text, category=category, context_digest=digest, sources=sources,
                 size=size, size_source=source) for text, digest, sources, size, source in found]


def _apply_hint(found: list[tuple], hint: int) -> list[tuple]:
    """A category's `size:` is what its layers of unknown size add (RUN output), shared evenly;
    when every layer's size is known from its files, the hint replaces those sizes.
    `found`: (text, digest, sources, size, size source) per step."""
    layers = [i for i, f in enumerate(found) if f[4] != "empty"]
    targets = [i for i in layers if found[i][3] is None] or layers
    out = list(found)
    for n, i in enumerate(targets):
        share = hint // len(targets) if n < len(targets) - 1 else hint - hint // len(targets) * n
        out[i] = found[i][:3] + (share, "hint")
    return out


def _all_texts(apps: dict, declared: list[str]):
    """Every step text of the stack file, read leniently (validation comes later, in order)."""
    for app in apps.values():
        for cat in declared:
            value = (app.model_extra or {}).get(cat)
            if isinstance(value, dict):
                value = value.get("steps")
            yield from (t for t in (value if isinstance(value, list) else [value]) if isinstance(t, str))
        yield from _app_config_texts(app)


def _check_references(spec: StackSpec, path: Path, lines: Lines) -> None:
    """`base` is an image reference and `registry` a place to push to, before either is written
    into a Dockerfile's FROM line (a newline in one would add an instruction)."""
    try:
        Reference.parse(spec.base)
    except UserError as e:
        raise UserError(f"base: {e.message}", path, lines.at(("base",))) from None
    try:
        Reference.parse(f"{spec.registry.rstrip('/')}/{spec.project}/app")
    except UserError:
        raise UserError(f"registry: {spec.registry!r} is not a registry; write HOST[:PORT] (optionally "
                        "followed by /PATH), e.g. localhost:5000", path, lines.at(("registry",))) from None


def load_stack(path: str | Path) -> Stack:
    """Read, validate and digest a stack file. Raises UserError with file:line on bad input."""
    path = Path(path)
    if path.is_dir():
        path = path / "layerwise.yaml"
    data, lines = read_yaml(path)
    spec = validate_model(StackSpec, data, path, lines,
                          "registry, project, base, categories and apps")

    _check_references(spec, path, lines)
    names_seen: set[str] = set()
    for cat_index, cat in enumerate(spec.categories):
        if cat.name in names_seen:
            raise UserError(f"category {cat.name!r} is declared twice", path,
                            lines.at(("categories", cat_index)))
        if cat.name in APP_KEYS:
            raise UserError(f"{cat.name!r} is an app setting and cannot be a category name", path,
                            lines.at(("categories", cat_index)))
        names_seen.add(cat.name)
    declared = [c.name for c in spec.categories]
    order = _check_order(spec, declared, path, lines)

    for key in spec.images:
        if key not in declared:
            raise UserError(f"images.{key}: {key!r} is not a declared category; "
                            f"images are named by category ({', '.join(declared)})",
                            path, lines.at(("images", key)))

    prefetch(_all_texts(spec.apps, declared))
    files: dict = {}
    apps: dict[str, tuple[Step, ...]] = {}
    settings_steps: dict[str, int] = {}
    for app_name, app in spec.apps.items():
        if not isinstance(app_name, str) or not re.match(NAME, app_name):
            raise UserError(f"app name {app_name!r} must be lower-case letters, digits, '.', '_' or '-'",
                            path, lines.at(("apps", app_name)))
        extra = app.model_extra or {}
        for key in extra:
            if key not in declared:
                raise UserError(
                    f"app {app_name!r} uses category {key!r}, which is not declared; declare it "
                    f"under 'categories:' (declared: {', '.join(declared)})",
                    path, lines.at(("apps", app_name, key)))
        steps: list[Step] = []
        for cat in declared:
            if cat in extra:
                where = ("apps", app_name, cat)
                texts, size = _category_texts(extra[cat], where, path, lines)
                steps += _steps_of(texts, cat, size, path.parent, path, files)
        if not steps:
            raise UserError(f"app {app_name!r} has no steps; give it at least one category",
                            path, lines.at(("apps", app_name)))
        config_texts = _app_config_texts(app)
        if config_texts:
            texts = [(t, lines.at(("apps", app_name))) for t in config_texts]
            before = len(steps)
            steps += _steps_of(texts, steps[-1].category, None, path.parent, path, files)
            settings_steps[app_name] = len(steps) - before
        apps[app_name] = tuple(steps)

    stack = Stack(
        path=path,
        registry=spec.registry.rstrip("/"),
        project=spec.project,
        base=spec.base,
        categories=tuple(Category(c.name, c.owner, c.changes_per_month, c.merge, tuple(c.needs))
                         for c in spec.categories),
        names={k: (v.name, v.tag) for k, v in spec.images.items()},
        apps=apps,
        app_tags={name: app.tag for name, app in spec.apps.items()},
        allowed_registries=tuple(spec.policy.registries) if spec.policy else (),
        policy_line=lines.at(("policy", "registries")) if spec.policy else None,
        order=order,
        settings_steps=settings_steps,
    )
    if spec.fleet is None:
        return stack
    return replace(stack, fleet=_load_fleet(stack, spec.fleet, lines.at(("fleet",))))


def _load_fleet(stack: Stack, written: str, line: int | None) -> Fleet:
    """`fleet:`: a file that is not there is an error at that line; the fleet file's own errors
    name the fleet file, as `simulate` gives them."""
    from .fleet import load_fleet  # here, not at the top: fleet.py imports this module
    path = stack.root / written
    try:
        found, folder, there = path.is_file(), path.is_dir(), path.exists()
    except OSError:                 # e.g. a name too long for the file system
        found = folder = there = False
    if not found:
        what = "is a folder" if folder else "is not a file" if there else "is not there"
        raise UserError(f"fleet: {written!r} {what}; give the path of a fleet file (see `simulate --fleet`), "
                        "relative to the stack file, or remove the key", stack.path, line)
    return load_fleet(path, stack)


def _check_order(spec: StackSpec, declared: list[str], path: Path, lines: Lines) -> str | tuple[str, ...]:
    """`needs:` names declared categories, none needs itself and the listed order keeps each below
    what needs it; an explicit `order:` lists every category once and keeps the needs too."""
    for i, cat in enumerate(spec.categories):
        for j, need in enumerate(cat.needs):
            where = lines.at(("categories", i, "needs", j))
            if need not in declared:
                raise UserError(f"categories[{i}].needs: {need!r} is not a declared category "
                                f"({', '.join(declared)})", path, where)
            if need == cat.name:
                raise UserError(f"categories[{i}].needs: {cat.name} cannot need itself", path, where)
            if declared.index(need) > i:
                raise UserError(f"{cat.name} needs {need}, listed after it: list {need} first "
                                "(the listed order is the order the stack file's images are built in)",
                                path, where)
    if not isinstance(spec.order, list):
        return spec.order
    where = lines.at(("order",))
    if sorted(spec.order) != sorted(declared):
        missing = sorted(set(declared) - set(spec.order))
        extra = sorted(set(spec.order) - set(declared))
        twice = sorted({c for c in spec.order if spec.order.count(c) > 1})
        what = "; ".join(p for p in (missing and f"missing: {', '.join(missing)}",
                                     extra and f"not declared: {', '.join(extra)}",
                                     twice and f"listed twice: {', '.join(twice)}") if p)
        raise UserError(f"order: list every declared category once ({what}); or write order: stack "
                        "or order: optimize", path, where)
    for cat in spec.categories:
        for need in cat.needs:
            if spec.order.index(need) > spec.order.index(cat.name):
                raise UserError(f"order: {cat.name} needs {need}, so {need} must come before it",
                                path, where)
    return tuple(spec.order)
