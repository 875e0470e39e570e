"""`layerwise import`: existing Dockerfiles → a family whose shared prefixes are base images.

    Dockerfiles → stages (ARG defaults put into FROM, stage references resolved) → one chain of
    steps per stage → the planner's prefix tree → cut points (shared by 2+ Dockerfiles, holding a
    layer) → base images + each Dockerfile rewritten to start FROM its deepest base.

Steps are equal only under equal parents (the chain starts with its FROM), and a COPY/ADD is its
text plus the digest of the files it reads in the build context (a `.dockerignore` honoured).
Without a context a COPY/ADD falls back to its text; those steps are listed, because they may
copy different files. Writing the output (stack file, refactored folder) is `import_output`'s job.
"""

from __future__ import annotations

import glob
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..dockerfiles import VARIABLE, Instruction, expand_variables, parse_instructions, unbuildable_reason, unquote
from ..errors import UserError
from ..plan import contexts
from ..plan.model import Step, sha256_text
from ..plan.planner import TreeNode, prefix_tree
from .categories import CATEGORY_ORDER, rule_for
from .commuting import MOVABLE, independent, may_swap_layers, sink
from .naming import Candidate, choose_names

IMPORT_RECIPE = "layerwise-import/1"
_DOCKERFILE_NAME = re.compile(r"^(Dockerfile([.-].+)?|.+\.[Dd]ockerfile)$")
_TEMPLATE_MARK = re.compile(r"\{\{|%%[A-Z_]+%%")

_GENERIC_FOLDERS = {"src", "docker", "build", "app", "dockerfiles"}


# ----------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class Stage:
    index: int
    name: str | None               # `AS name`, lower-cased as BuildKit compares it
    from_text: str                 # the FROM instruction as written (normalized), for unchanged stages
    parent: int | None             # index of the stage it builds on, or None
    root: str | None               # `FROM` text of the external image, ARG defaults put in
    steps: tuple[Step, ...]        # its own steps, after FROM


@dataclass(frozen=True)
class Dockerfile:
    """One imported Dockerfile: its stages and what is known about its build context."""

    name: str                      # app name
    path: Path
    context: Path | None           # None: the Dockerfile came without its context
    global_args: tuple[str, ...]   # ARG lines before the first FROM
    stages: tuple[Stage, ...]
    text_only: tuple[int, ...]     # lines of COPY/ADD compared by their text only
    unbuildable: str | None        # why the legacy builder must not build it
    context_note: str | None = None   # why the folder was not taken as its context

    def chain(self, index: int) -> list[Step]:
        """Every step of a stage from its external FROM: its parents' steps, then its own."""
        return _stage_chain(self.stages, index)

    def own_start(self, index: int) -> int:
        """Position in `chain(index)` of the stage's first own step."""
        stage = self.stages[index]
        return len(self.chain(stage.parent)) if stage.parent is not None else 1


def _from_step(root: str) -> Step:
    return Step(instruction=root, category="os", size=0, size_source="empty")


def _stage_chain(stages: tuple[Stage, ...] | list[Stage], index: int) -> list[Step]:
    stage = stages[index]
    below = _stage_chain(stages, stage.parent) if stage.parent is not None else [_from_step(stage.root)]
    return below + list(stage.steps)


def find_dockerfiles(inputs: list[Path]) -> list[Path]:
    """The Dockerfiles named or found (recursively) under the given folders, sorted, unique."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():   # hidden folders (.git, .venv, …) hold no app
            found += sorted(p for p in item.rglob("*") if p.is_file() and _DOCKERFILE_NAME.match(p.name)
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        elif item.is_file():
            found.append(item)
        else:
            raise UserError("no such file or folder; give Dockerfiles or folders holding them", item)
    out = sorted(set(p.resolve() for p in found))   # the same family whatever order they come in
    if not out:
        raise UserError("no Dockerfile found (looked for Dockerfile, Dockerfile.*, *.Dockerfile)",
                        inputs[0] if inputs else None)
    return out


def app_names(paths: list[Path]) -> dict[Path, str]:
    """A short, unique app name per Dockerfile: its folder's name, with parents added on clashes."""
    def parts(p: Path) -> list[str]:
        return [*p.parent.parts[1:], *([p.name] if p.name != "Dockerfile" else [])]

    def slug(words: list[str]) -> str:
        return re.sub(r"[^a-z0-9]+", "-", "-".join(words).lower()).strip("-") or "app"

    # A folder called src or docker says little: start with its parent's name too.
    depth = {p: 1 + (bool(parts(p)) and parts(p)[-1].lower() in _GENERIC_FOLDERS) for p in paths}
    while True:
        names = {p: slug(parts(p)[-depth[p]:]) for p in paths}
        count = Counter(names.values())
        clashes = [p for p in paths if count[names[p]] > 1 and depth[p] < len(parts(p))]
        if not clashes:
            return names
        for p in clashes:
            depth[p] += 1


def _from_image(word: str, args: dict[str, str | None], *, file: Path, line: int) -> str:
    """The image a FROM names, ARG defaults put in; a variable without a value is an error (the
    FROM cannot be resolved, and the builder would try an empty or wrong name)."""
    for m in VARIABLE.finditer(word):
        name = m.group(1) or m.group(4)
        if args.get(name) is None and not m.group(2):
            raise UserError(f"FROM uses ${{{name}}}, which has no default; give it one with "
                            f"'ARG {name}=...' before the first FROM", file, line)
    return expand_variables(word, _known(args))


def _known(args: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in args.items() if v is not None}


def _arg_pairs(ins: Instruction) -> list[tuple[str, str | None]]:
    out = []
    for word in ins.args:
        name, eq, default = word.partition("=")
        out.append((name, unquote(default) if eq else None))
    return out


MAX_DOCKERFILE_BYTES = 16 << 20    # the largest real ones are a few hundred kB


def read_dockerfile(path: Path, name: str, context: Path | None = None) -> Dockerfile:
    """Parse one Dockerfile into stages. `context`: the build context; by default the
    Dockerfile's folder, counted as present only when it holds some of the files COPY reads."""
    if any(part.endswith(".template") for part in path.parts):
        raise UserError("this is a template (its name ends in .template), not a Dockerfile; "
                        "render it first and import the result", path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_DOCKERFILE_BYTES + 1)
        text = raw.decode("utf-8")
    except OSError as e:
        raise UserError(f"cannot read the file: {e.strerror or e}", path) from None
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text (byte 0x{raw[e.start]:02x}); is it a binary file?", path,
                        raw.count(b"\n", 0, e.start) + 1) from None
    if len(raw) > MAX_DOCKERFILE_BYTES:
        raise UserError(f"larger than {MAX_DOCKERFILE_BYTES >> 20} MiB: not a Dockerfile", path)
    template = _TEMPLATE_MARK.search(text)
    if template:   # before parsing: the parser's complaint about a placeholder would say less
        line = text.count("\n", 0, template.start()) + 1
        raise UserError(f"this looks like a template ({template.group(0)!r} placeholder); "
                        "render it first and import the result", path, line)
    instructions = parse_instructions(text, file=str(path))
    if not any(i.keyword == "FROM" for i in instructions):
        raise UserError("no FROM instruction: this is not a Dockerfile", path)

    global_args: dict[str, str | None] = {}
    global_lines: list[str] = []
    first_from = next(n for n, i in enumerate(instructions) if i.keyword == "FROM")
    for ins in instructions[:first_from]:
        if ins.keyword != "ARG":
            raise UserError(f"only ARG may come before the first FROM, not {ins.keyword}", path, ins.line)
        global_args.update(_arg_pairs(ins))
        global_lines.append(ins.text)

    context_note = None
    if context is None:
        # The Dockerfile's folder is its context only if it holds every file COPY names; the
        # corpora and many pasted sets hold a few of them (requirements.txt) and not the rest.
        found, missing = _missing_sources(path.parent, instructions)
        context = path.parent if not missing else None
        if found and missing:
            context_note = f"its folder lacks {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}"
    ignore = contexts.dockerignore(context) if context else None
    stages: list[Stage] = []
    text_only: list[int] = []
    for ins in instructions[first_from:]:
        if ins.keyword == "FROM":
            stages.append(_stage(ins, len(stages), stages, global_args, path))
            continue
        if not stages:
            continue
        step = _step(ins, global_args, context, ignore, stages, path)
        if step.keyword in ("COPY", "ADD") and step.context_digest is None:
            text_only.append(ins.line)
        stages[-1] = replace(stages[-1], steps=stages[-1].steps + (step,))
    return Dockerfile(name=name, path=path, context=context, global_args=tuple(global_lines),
                      stages=tuple(stages), text_only=tuple(text_only),
                      unbuildable=unbuildable_reason(text, instructions),
                      context_note=context_note)


def _missing_sources(folder: Path, instructions: list[Instruction]) -> tuple[list[str], list[str]]:
    """The COPY sources a folder holds and those it lacks (`.` proves nothing: every folder has it)."""
    sources = sorted({s.strip("/") for i in instructions for s in i.copy_sources} - {"", "."})
    found = [s for s in sources if glob.glob(s, root_dir=folder)]
    return found, [s for s in sources if s not in found]


def _stage(ins: Instruction, index: int, stages: list[Stage], args: dict, path: Path) -> Stage:
    words = list(ins.args)
    name = words[2].lower() if len(words) == 3 and words[1].lower() == "as" else None
    if len(words) not in (1, 3) or (len(words) == 3 and name is None):
        raise UserError(f"{ins.text!r}: write FROM IMAGE [AS NAME]", path, ins.line)
    image = _from_image(words[0], args, file=path, line=ins.line)
    flags = [_expand_if_declared(f, args) for f in ins.flags]
    parent = _stage_named(image, stages)
    root = None if parent is not None else " ".join(["FROM", *sorted(flags), image])
    return Stage(index=index, name=name, from_text=ins.text, parent=parent.index if parent else None,
                 root=root, steps=())


def _expand_if_declared(text: str, args: dict[str, str | None]) -> str:
    """ARG defaults put in, or the text kept as written when a variable has no value: a FROM flag
    may use one nobody declared ($BUILDPLATFORM is the builder's own)."""
    names = [m.group(1) or m.group(4) for m in VARIABLE.finditer(text)]
    return expand_variables(text, _known(args)) if all(args.get(n) is not None for n in names) else text


def _step(ins: Instruction, args: dict, context: Path | None, ignore, stages: list[Stage],
          path: Path) -> Step:
    text = ins.text
    if ins.keyword == "ARG":
        # An `ARG X` inside a stage takes the global default: say it, so a base built from this
        # step alone (without the global ARG lines) behaves the same.
        pairs = [(n, d if d is not None else args.get(n)) for n, d in _arg_pairs(ins)]
        text = "ARG " + " ".join(n if d is None else f"{n}={d}" for n, d in pairs)
    digest, sources, size, source = None, (), None, "unknown"
    copy_from = next((f.split("=", 1)[1] for f in ins.flags if f.startswith("--from=")), None)
    mounts = _mount_sources(ins)
    if copy_from is not None:
        stage = _stage_named(copy_from, stages)
        # A copy from another stage is what that stage made: identify it by that stage's chain.
        digest = "stage:" + _chain_digest(stages, stage) if stage else "image:" + copy_from
    elif mounts and any(f for f, _ in mounts):
        # A RUN reading another stage (or image) through --mount=…,from= is identified by what it reads.
        found = [(_stage_named(f, stages), f) for f, _ in mounts if f]
        parts = ["stage:" + _chain_digest(stages, st) if st else "image:" + f for st, f in found]
        digest = parts[0] if len(parts) == 1 else (
            ("stage:" if any(st for st, _ in found) else "image:") + sha256_text(*parts))
    elif mounts and context is not None:
        # A bind mount of the build context reads those files, as a COPY would.
        rels = contexts.resolve_sources(context, [src for _, src in mounts], file=str(path), line=ins.line,
                                        root_name="the build context")
        files = contexts.digest_files(context.resolve(), rels, ignore)
        digest, sources = files.digest, tuple(rels)
    elif ins.keyword in ("COPY", "ADD") and not ins.copy_sources:
        digest = "url:" + sha256_text(text)   # only URLs: the text says it all
    elif ins.copy_sources and context is not None:
        rels = contexts.resolve_sources(context, ins.copy_sources, file=str(path), line=ins.line,
                                        root_name="the build context")
        files = contexts.digest_files(context.resolve(), rels, ignore)
        digest, sources, size, source = files.digest, tuple(rels), files.size, "context"
    if not ins.creates_layer:
        size, source = 0, "empty"
    return Step(instruction=text, category=raw_category(ins, size), context_digest=digest, sources=sources,
                size=size, size_source=source)


_FROM_FLAG = re.compile(r"(?<![\w-])(--from=|from=)([^,\s]+)")


def _flag_part(text: str) -> tuple[str, str]:
    """An instruction's text split after its flags (`RUN --mount=… ` | `echo hi`)."""
    ins = parse_instructions(text)[0]
    head = " ".join([ins.keyword, *ins.flags])
    return (head, text[len(head):]) if ins.flags and text.startswith(head) else ("", text)


def stage_references(text: str) -> list[str]:
    """What an instruction's `--from=` / `--mount=…,from=` flags name (a stage or an image)."""
    head, _ = _flag_part(text)
    return [m.group(2) for m in _FROM_FLAG.finditer(head)]


def renumber_stages(text: str, new_index: dict[int, int]) -> str:
    """The instruction with stage numbers in its from= flags changed to the kept stages' numbers."""
    head, rest = _flag_part(text)
    def one(m: re.Match) -> str:
        ref = m.group(2)
        return m.group(1) + (str(new_index.get(int(ref), ref)) if ref.isdigit() else ref)
    return _FROM_FLAG.sub(one, head) + rest


def _mount_sources(ins: Instruction) -> list[tuple[str | None, str]]:
    """The bind (and cache) mounts of a RUN that read something: (from= stage or image or None for
    the build context, source path). Cache mounts without from= and other types read nothing."""
    out = []
    for flag in ins.flags if ins.keyword == "RUN" else ():
        if not flag.startswith("--mount="):
            continue
        opts = dict(part.partition("=")[::2] for part in flag[len("--mount="):].split(","))
        kind, source = opts.get("type", "bind"), opts.get("source") or opts.get("src") or "."
        if opts.get("from"):
            out.append((opts["from"], source))
        elif kind == "bind":
            out.append((None, source))
    return out


def _stage_named(ref: str, stages: list[Stage]) -> Stage | None:
    for s in stages:
        if s.name == ref.lower() or (ref.isdigit() and s.index == int(ref)):
            return s
    return None


def _chain_digest(stages: list[Stage], stage: Stage) -> str:
    return sha256_text(*(s.identity for s in _stage_chain(stages, stage.index)))


def raw_category(ins: Instruction, size: int | None = None) -> str | None:
    """The category a step says by itself (`categories.RULES`); None = like its neighbours."""
    if ins.keyword in ("COPY", "ADD"):
        rule = rule_for(ins.keyword, sources=ins.copy_sources, destination=ins.args[-1] if ins.args else "",
                        size=size)
    else:
        rule = rule_for(ins.keyword, command=" ".join(ins.args))
    return rule.category if rule else None


def categorize(chain: list[Step]) -> list[Step]:
    """Categories along one chain, from content (`categories.RULES`) where a rule names the step:
    - FROM is os; a RUN no rule names goes with the layer below it (tools at the start);
    - a COPY of sources followed by a library RUN is library (what it copies is read by the install);
    - a step that creates no layer (ENV, WORKDIR, …) goes with the next layer; after the last, config.
    A stack file lists steps category by category: `in_category_order` makes them never go back."""
    cats: list[str] = ["os"] * len(chain)
    layers = [i for i, s in enumerate(chain) if s.creates_layer]
    previous = "tools"
    for i in layers:
        step = chain[i]
        if step.keyword in ("COPY", "ADD") and step.category == "code":
            run = next((chain[j] for j in layers if j > i and chain[j].keyword == "RUN"), None)
            previous = "library" if run is not None and run.category == "library" else "code"
        else:
            previous = step.category or previous
        cats[i] = previous
    for i in range(1, len(chain)):
        if not chain[i].creates_layer:
            cats[i] = next((cats[j] for j in layers if j > i), "config")
    return [replace(step, category=category) for step, category in zip(chain, cats)]


def in_category_order(chain: list[Step]) -> list[Step]:
    """The categories made to never go back in CATEGORY_ORDER (a stack file orders steps by
    category, so this keeps the Dockerfile's order): a step below a later category joins it."""
    current, out = "os", []
    for step in chain:
        current = max(current, step.category, key=CATEGORY_ORDER.index)
        out.append(replace(step, category=current))
    return out


# ----------------------------------------------------------------------------- the family

@dataclass(frozen=True)
class BaseImage:
    name: str                      # repository path: "<project>/<name>" (see `naming`)
    ref: str                       # registry/name:lw-<16 hex>
    parent: str | None             # name of the base below it, or None (built on `from_ref`)
    from_ref: str                  # what its FROM names
    steps: tuple[Step, ...]
    used_by: tuple[str, ...]       # Dockerfiles (app names) built on it
    fingerprint: str
    context: Path | None           # the context its COPY sources are read from, if any
    buildable: bool                # False when a COPY of it was compared by text only
    app: str | None = None         # the app it is: its steps are that app's whole final stage


@dataclass(frozen=True)
class Move:
    """A step that creates no layer, moved past steps it is independent of (see `commuting`):
    down, so that it no longer cuts a shared prefix, or up to the end of the base holding that
    prefix, so that the base holds it for every app."""

    stage: int                     # the stage it belongs to
    instruction: str
    past: tuple[str, ...]          # the steps it moved past
    base: str                      # the base the stage now starts FROM
    direction: str = "down"        # down (now after `past`) or up (now before them)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "instruction": self.instruction, "past": list(self.past), "base": self.base,
                "direction": self.direction}


@dataclass(frozen=True)
class Swap:
    """Two layer steps that some apps write in one order and others in the other, right after a
    shared step: swapped in `apps`, they would be shared too. Only proposed: that the swap keeps
    the image is not proven (see `commuting.may_swap_layers`)."""

    after: str                     # the last step the apps share now
    order: tuple[str, str]         # the order `others` write them in (the one proposed)
    apps: tuple[str, ...]          # who would swap them
    others: tuple[str, ...]
    known_bytes: int               # what the swapped steps copy, when known
    unknown_layers: int            # RUN output (or COPY without its context): sized once built
    keys: tuple[str, ...] = ()     # the chains (app#stage) that would swap them
    at: int = 0                    # the position of the first of the two in those chains

    def to_dict(self) -> dict:
        return {"after": self.after, "order": list(self.order), "apps": list(self.apps), "others": list(self.others),
                "known_bytes": self.known_bytes, "unknown_layers": self.unknown_layers}


@dataclass(frozen=True)
class Refactored:
    """One Dockerfile rewritten: per stage either unchanged or FROM a base plus what remains."""

    source: Dockerfile
    stage_bases: dict[int, str] = field(default_factory=dict)    # stage index -> base name
    remaining: dict[int, tuple[Step, ...]] = field(default_factory=dict)
    moves: tuple[Move, ...] = ()

    @property
    def image(self) -> str | None:
        """The base this app is, when its whole final stage is that base's steps: it has no
        image of its own (one that is only `FROM` the base would be an alias)."""
        last = len(self.source.stages) - 1
        return self.stage_bases[last] if last in self.stage_bases and not self.remaining[last] else None

    @property
    def bases(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.stage_bases[i] for i in self.kept_stages() if i in self.stage_bases))

    def steps(self, index: int) -> tuple[Step, ...]:
        """What stage `index` runs once refactored: after its base, or all its own steps."""
        return self.remaining[index] if index in self.stage_bases else self.source.stages[index].steps

    def kept_stages(self) -> list[int]:
        """The stages the final stage still needs once refactored (through FROM <stage>,
        COPY --from=<stage>, RUN --mount=…,from=<stage>), in order; a stage whose only user now
        starts FROM a base is dropped: the legacy builder would build it for nothing."""
        stages = self.source.stages
        needed, todo = set(), [len(stages) - 1]
        while todo:
            i = todo.pop()
            if i in needed:
                continue
            needed.add(i)
            if i not in self.stage_bases and stages[i].parent is not None:
                todo.append(stages[i].parent)
            for step in self.steps(i):
                for ref in stage_references(step.instruction):
                    used = _stage_named(ref, list(stages[:i]))
                    if used is not None:
                        todo.append(used.index)
        return sorted(needed)


@dataclass(frozen=True)
class Family:
    dockerfiles: tuple[Dockerfile, ...]
    bases: tuple[BaseImage, ...]          # parents first
    refactored: tuple[Refactored, ...]
    errors: tuple[UserError, ...]         # Dockerfiles that could not be imported
    registry: str
    project: str
    swaps: tuple[Swap, ...] = ()           # layer swaps that would share more: proposed, or applied
    reordered: bool = False                # True: `swaps` were applied (import --reorder)

    def base(self, name: str) -> BaseImage:
        if not hasattr(self, "_by_name"):   # one dict, not a scan per lookup: thousands of bases
            object.__setattr__(self, "_by_name", {b.name: b for b in self.bases})
        return self._by_name[name]


def read_all(paths: list[Path], context: Path | None = None) -> tuple[list[Dockerfile], list[UserError]]:
    """Every Dockerfile that can be read; each that cannot gives its error and the rest go on."""
    names = app_names(paths)
    docs, errors = [], []
    for path in paths:
        try:
            docs.append(read_dockerfile(path, names[path], context))
        except UserError as e:
            if e.file is None:
                e.file = str(path)
            errors.append(e)
    return docs, errors


def extract(docs: list[Dockerfile], *, registry: str, project: str,
            errors: list[UserError] = (), names: dict[str, str] | None = None, reorder: bool = False) -> Family:
    """Cut the prefix tree of every stage of every Dockerfile into base images. The tree is built
    on each stage's steps with the movable ones moved down (`commuting.sink`), so a LABEL or ENV
    written in another place does not cut a shared prefix; then those every user of a base has just
    below it move up to its end (`_hoist`). `names`: `--name OLD=NEW` overrides. `reorder`: apply
    the layer swaps otherwise only proposed (`Family.swaps` then lists those applied)."""
    chains = {f"{d.name}#{i}": categorize(d.chain(i)) for d in docs for i in range(len(d.stages))}
    orders = {f"{d.name}#{i}": _sunk_order(d, i, chains[f"{d.name}#{i}"]) for d in docs for i in range(len(d.stages))}
    stages = {f"{d.name}#{i}": _stage_spans(d, i) for d in docs for i in range(len(d.stages))}
    applied: list[Swap] = []
    for _ in range(100):   # each round moves steps up or swaps a pair for good: it ends (the bound is a safety net)
        nodes, paths = prefix_tree({key: [chains[key][j] for j in orders[key]] for key in chains})
        cuts = _cut_points(nodes)
        if _hoist(nodes, paths, cuts, chains, orders, stages):
            continue
        done = [w for w in _proposed_swaps(nodes) if reorder and _swap(w, orders, stages)]
        if not done:
            break
        applied += done
    # An app whose whole final stage is a base's steps is that base (the node its chain ends at).
    is_app: dict[int, str] = {}
    for d in sorted(docs, key=lambda d: d.name, reverse=True):   # the first name wins
        last = len(d.stages) - 1
        path = paths[f"{d.name}#{last}"]
        if path[-1] in cuts and len(path) - 1 >= d.own_start(last):
            is_app[path[-1]] = d.name
    runs = {n: _base_run(nodes, n, cuts) for n in cuts}
    chosen = choose_names([_candidate(nodes, n, runs[n], docs, paths, is_app.get(n)) for n in sorted(cuts)],
                          {d.name for d in docs}, names)
    # Each base in the order most of its users wrote its steps (the fewest moves).
    as_written = {n: _written_order(nodes, n, runs[n], orders) for n in cuts}
    by_node: dict[int, BaseImage] = {}
    for n in sorted(cuts):   # a node's index is larger than its parent's: parents first
        head, steps = (runs[n][:1], runs[n][1:]) if nodes[runs[n][0]].parent is None else ([], runs[n])
        run = head + [steps[k] for k in as_written[n]]
        by_node[n] = _base_image(nodes, n, run, by_node, docs, registry, f"{project}/{chosen[n]}", is_app.get(n))
    refactored = [_refactor(d, chains, orders, paths, cuts, runs, as_written, by_node) for d in docs]
    return Family(tuple(docs), tuple(by_node[n] for n in sorted(by_node)), tuple(refactored),
                  tuple(errors), registry, project, tuple(applied) if reorder else _proposed_swaps(nodes), reorder)


def _swap(swap: Swap, orders: dict[str, list[int]], stages: dict[str, list[tuple[int, int]]]) -> bool:
    """Swap the two steps in the chains of `swap.keys` (only where both are one stage's own steps)."""
    keys = [k for k in swap.keys if any(a <= swap.at and swap.at + 1 < b for a, b in stages[k])]
    if len(keys) != len(swap.keys):
        return False
    for key in keys:
        orders[key][swap.at], orders[key][swap.at + 1] = orders[key][swap.at + 1], orders[key][swap.at]
    return True


def _proposed_swaps(nodes: list[TreeNode]) -> tuple[Swap, ...]:
    """Where the tree branches into X then Y for some apps and Y then X for others, X and Y layer
    steps that `may_swap_layers`: a proposal that the fewer apps swap them (ties: the later order)."""
    out = []
    depth = {}
    for n, node in enumerate(nodes):   # parents come first
        depth[n] = depth[node.parent] + 1 if node.parent is not None else 0
    for n, node in enumerate(nodes):
        kids = [nodes[c] for c in node.children]
        for i, a in enumerate(kids):
            for b in kids[i + 1:]:
                if not (a.step.creates_layer and b.step.creates_layer and may_swap_layers(a.step, b.step)):
                    continue
                ab = next((nodes[c] for c in a.children if nodes[c].step.identity == b.step.identity), None)
                ba = next((nodes[c] for c in b.children if nodes[c].step.identity == a.step.identity), None)
                if ab is None or ba is None:
                    continue
                first, second = sorted([(ab, a, b), (ba, b, a)],
                                       key=lambda t: (len(_dockerfiles(t[0])), t[1].step.instruction))
                steps = (second[1].step, second[2].step)
                known = [s.size for s in steps if s.size is not None]
                out.append(Swap(node.step.instruction, (steps[0].instruction, steps[1].instruction),
                                tuple(sorted(_dockerfiles(first[0]))), tuple(sorted(_dockerfiles(second[0]))),
                                sum(known), len(steps) - len(known), tuple(sorted(first[0].apps)), depth[n] + 1))
    return tuple(out)


def _sunk_order(doc: Dockerfile, index: int, chain: list[Step]) -> list[int]:
    """Positions of `chain` (stage `index`'s) in the order the prefix tree is built on: each stage's
    own steps sunk apart (a stage's steps never leave it)."""
    stage = doc.stages[index]
    below = _sunk_order(doc, stage.parent, chain) if stage.parent is not None else [0]
    start = doc.own_start(index)
    return below + [start + k for k in sink(chain[start:start + len(stage.steps)])]


def _stage_spans(doc: Dockerfile, index: int) -> list[tuple[int, int]]:
    """[start, end) of each stage's own steps along stage `index`'s chain, the FROM first."""
    stage = doc.stages[index]
    below = _stage_spans(doc, stage.parent) if stage.parent is not None else [(0, 1)]
    start = doc.own_start(index)
    return below + [(start, start + len(stage.steps))]


def _hoist(nodes, paths, cuts, chains, orders, stages) -> bool:
    """Movable steps every user of a base has just below it (sunk there, but free to come back up)
    are moved up to the base's end, so the base holds them: the end of the shared prefix. Returns
    whether any moved (the tree must then be built again)."""
    changed: set[str] = set()
    for n in sorted(cuts):
        users = sorted(nodes[n].apps)
        if changed & set(users):
            continue
        at = paths[users[0]].index(n)
        found: dict[str, list[int]] = {}
        for u in users:
            end = next(b for a, b in stages[u] if a <= at < b)
            steps = [chains[u][j] for j in orders[u]]
            found[u] = [q for q in range(at + 1, end) if steps[q].keyword in MOVABLE and all(
                independent(steps[q], steps[r]) for r in range(at + 1, q) if steps[r].keyword not in MOVABLE)]
        first = [chains[users[0]][orders[users[0]][q]].identity for q in found[users[0]]]
        common = [x for x in dict.fromkeys(first)
                  if all(x in {chains[u][orders[u][q]].identity for q in found[u]} for u in users)]
        if not common:
            continue
        moved = {}
        for u in users:
            picked = []
            for x in common:   # the first available step of that identity, in order
                q = next(q for q in found[u] if chains[u][orders[u][q]].identity == x and q not in picked)
                picked.append(q)
            steps = [chains[u][j] for j in orders[u]]
            if picked != sorted(picked) or not all(
                    independent(steps[q], steps[r]) for q in picked for r in range(at + 1, q) if r not in picked):
                break
            moved[u] = picked
        else:
            for u, picked in moved.items():
                rest = [orders[u][q] for q in range(at + 1, len(orders[u])) if q not in picked]
                orders[u] = orders[u][:at + 1] + [orders[u][q] for q in picked] + rest
            changed |= set(users)
    return bool(changed)


def _written_order(nodes: list[TreeNode], n: int, run: list[int], orders: dict[str, list[int]]) -> list[int]:
    """The order (indices into the base's steps, its FROM left out) to write a base in: the one most
    of its users wrote (the fewest moves; ties: the first such order). Every user's order of these
    steps builds the same image, since they differ from the tree's only by independent swaps."""
    steps = run[1:] if nodes[run[0]].parent is None else run
    first = len(_path_to(nodes, steps[0])) - 1 if steps else 0
    written = Counter(tuple(sorted(range(len(steps)), key=lambda k: orders[u][first + k])) for u in nodes[n].apps)
    return list(min(written, key=lambda order: (-written[order], order)))


def _path_to(nodes: list[TreeNode], n: int) -> list[int]:
    path = [n]
    while nodes[path[-1]].parent is not None:
        path.append(nodes[path[-1]].parent)
    return path[::-1]


def _refactor(d: Dockerfile, chains, orders, paths, cuts, runs, as_written, by_node) -> Refactored:
    """Each stage that begins with a base's steps: FROM the deepest such base, then the stage's other
    steps in the order written. Its moves: each movable step that now stands on the other side of a
    step than it was written (down or up), and with --reorder each layer step swapped."""
    stage_bases, remaining, moves = {}, {}, []
    for i in range(len(d.stages)):
        key = f"{d.name}#{i}"
        chain, order, path = chains[key], orders[key], paths[key]
        deepest = max((pos for pos, n in enumerate(path) if n in cuts), default=None)
        if deepest is None or deepest < d.own_start(i):
            continue
        stage_bases[i] = by_node[path[deepest]].name
        in_bases = set(order[:deepest + 1])
        rest = [j for j in range(len(chain)) if j not in in_bases]
        remaining[i] = tuple(chain[j] for j in rest)
        built = [0]   # the chain as rebuilt, by original position: each base as written, then the rest
        for n in (n for n in path[:deepest + 1] if n in cuts):
            start = max(path.index(runs[n][0]), 1)   # a base's steps, its FROM left out
            segment = order[start:path.index(n) + 1]
            built += [segment[k] for k in as_written[n]]
        built += rest
        where = {j: k for k, j in enumerate(built)}
        for j in range(d.own_start(i), len(chain)):
            if chain[j].keyword not in MOVABLE:   # a layer step moves only in a swap (--reorder)
                swapped = [x for x in range(d.own_start(i), j)
                           if where[x] > where[j] and chain[x].keyword not in MOVABLE]
                if swapped:
                    moves.append(Move(i, chain[j].instruction, tuple(chain[x].instruction for x in swapped),
                                      stage_bases[i], "swapped"))
                continue
            # Steps it now follows though it came first (moved down), or now precedes (moved up);
            # two movable steps that changed places count once, for the one now first.
            down = [x for x in range(j + 1, len(chain)) if where[x] < where[j] and chain[x].keyword not in MOVABLE]
            up = [x for x in range(d.own_start(i), j) if where[x] > where[j]]
            if down or up:
                moves.append(Move(i, chain[j].instruction, tuple(chain[x].instruction for x in down or up),
                                  stage_bases[i], "down" if down else "up"))
    return Refactored(d, stage_bases, remaining, tuple(moves))


def _dockerfiles(node: TreeNode) -> frozenset[str]:
    return frozenset(key.split("#")[0] for key in node.apps)


def _cut_points(nodes: list[TreeNode]) -> set[int]:
    """Nodes where a base image ends: shared by two or more Dockerfiles, where the set of
    Dockerfiles going on narrows (a branch or an end), with a layer since the base below, and no
    copy from another stage on the way (a base image is one stage: it cannot name another)."""
    cuts: set[int] = set()
    layers_since: dict[int, int] = {}
    blocked: dict[int, bool] = {}
    for n, node in enumerate(nodes):
        p = node.parent
        blocked[n] = (p is not None and blocked[p]) or (node.step.context_digest or "").startswith("stage:")
        layers_since[n] = (0 if p is None or p in cuts else layers_since[p]) + node.step.creates_layer
        users = _dockerfiles(node)
        if blocked[n] or len(users) < 2 or layers_since[n] == 0 or p is None:
            continue
        narrows = bool(node.ends) or len(node.children) != 1 or _dockerfiles(nodes[node.children[0]]) != users
        if narrows:
            cuts.add(n)
    return cuts


def _base_run(nodes: list[TreeNode], n: int, cuts: set[int]) -> list[int]:
    """The tree nodes a base holds: from above the base below it (or the chain's FROM) up to `n`."""
    run = [n]
    while nodes[run[-1]].parent is not None and nodes[run[-1]].parent not in cuts:
        run.append(nodes[run[-1]].parent)
    return run[::-1]


def _candidate(nodes, n, run, docs, paths, app: str | None) -> Candidate:
    root = n
    while nodes[root].parent is not None:
        root = nodes[root].parent
    first = min(nodes[n].apps)
    doc = next(d for d in docs if d.name == first.split("#")[0])
    stage = _stage_at(doc, int(first.split("#")[1]), paths[first].index(n))
    top = [nodes[i].step for i in run if nodes[i].step.creates_layer]
    return Candidate(key=n, app=app, from_image=nodes[root].step.instruction.split()[-1], stage=stage.name,
                     runtime=stage.name is None and len(doc.stages) > 1 and stage.index == len(doc.stages) - 1,
                     users=tuple(sorted(_dockerfiles(nodes[n]))), category=top[-1].category if top else "config")


def _base_image(nodes, n, run, by_node, docs, registry, name, app) -> BaseImage:
    below = nodes[run[0]].parent
    parent = by_node[below] if below is not None else None
    if parent is None:   # run[0] is the chain's FROM
        from_ref, run = nodes[run[0]].step.instruction.split(None, 1)[1], run[1:]
    else:
        from_ref = parent.ref
    steps = tuple(nodes[i].step for i in run)
    fingerprint = sha256_text(IMPORT_RECIPE, parent.fingerprint if parent else "base:" + from_ref,
                              *(s.identity for s in steps))
    users = sorted(_dockerfiles(nodes[n]))
    doc = next(d for d in docs if d.name == min(nodes[n].apps).split("#")[0])
    present = all(s.context_digest for s in steps if s.keyword in ("COPY", "ADD"))
    return BaseImage(name=name, ref=f"{registry}/{name}:lw-{fingerprint[:16]}",
                     parent=parent.name if parent else None, from_ref=from_ref, steps=steps,
                     used_by=tuple(users), fingerprint=fingerprint,
                     context=doc.context, buildable=present, app=app)


def _stage_at(doc: Dockerfile, index: int, position: int) -> Stage:
    """The stage whose own steps hold `position` of stage `index`'s chain."""
    while doc.stages[index].parent is not None and position < doc.own_start(index):
        index = doc.stages[index].parent
    return doc.stages[index]


def import_family(inputs: list[Path], *, context: Path | None = None, registry: str = "localhost:5000",
                  project: str = "imported", names: dict[str, str] | None = None, reorder: bool = False) -> Family:
    if context is not None and not context.is_dir():
        raise UserError("the build context given with --context is not a folder", context)
    docs, errors = read_all(find_dockerfiles(inputs), context)
    return extract(docs, registry=registry, project=project, errors=errors, names=names, reorder=reorder)


def _own_categories(item: Refactored) -> list[str]:
    """The categories of the layers an app's final stage adds on top of its base (or its FROM)."""
    last = len(item.source.stages) - 1
    own = (item.remaining[last] if last in item.stage_bases    # tree steps: categorized already
           else categorize(item.source.chain(last))[item.source.own_start(last):])
    return list(dict.fromkeys(s.category for s in own if s.creates_layer))


def summary(family: Family) -> dict:
    """What the import found, as plain data: per base and for the whole set. Bytes a host holding
    every app saves = each base's layers it no longer pulls once per app (all but one); sizes are
    known for COPYs read from a context, not for RUN output until built."""
    bases = []
    for b in family.bases:
        layers = [s for s in b.steps if s.creates_layer]
        known = [s.size for s in layers if s.size is not None]
        bases.append({"name": b.name, "ref": b.ref, "from": b.from_ref, "parent": b.parent,
                      "steps": len(b.steps), "layers": len(layers), "used_by": list(b.used_by),
                      "known_bytes": sum(known), "unknown_layers": len(layers) - len(known),
                      "buildable": b.buildable, "app": b.app,
                      "categories": list(dict.fromkeys(s.category for s in layers))})
    def extra(b: dict, key: str) -> int:
        return b[key] * (len(b["used_by"]) - 1)
    return {
        "images": len(family.dockerfiles),
        "stages": sum(len(d.stages) for d in family.dockerfiles),
        "bases": bases,
        "instructions_shared": sum(extra(b, "steps") for b in bases),
        "layers_shared": sum(extra(b, "layers") for b in bases),
        "known_bytes_saved": sum(extra(b, "known_bytes") for b in bases),
        "unknown_layers_shared": sum(extra(b, "unknown_layers") for b in bases),
        "apps": [{"name": r.source.name, "dockerfile": str(r.source.path),
                  "context": str(r.source.context) if r.source.context else None,
                  "context_note": r.source.context_note, "stages": len(r.source.stages),
                  "bases": list(r.bases),
                  "remaining_steps": sum(len(v) for v in r.remaining.values())
                  + sum(len(s.steps) for i, s in enumerate(r.source.stages) if i not in r.remaining),
                  "text_only_lines": list(r.source.text_only), "unbuildable": r.source.unbuildable,
                  "image": r.image, "moves": [m.to_dict() for m in r.moves],
                  "categories": _own_categories(r)}
                 for r in family.refactored],
        "moves": sum(len(r.moves) for r in family.refactored),
        "proposed_swaps": [] if family.reordered else [s.to_dict() for s in family.swaps],
        "applied_swaps": [s.to_dict() for s in family.swaps] if family.reordered else [],
        "errors": [str(e) for e in family.errors],
    }
