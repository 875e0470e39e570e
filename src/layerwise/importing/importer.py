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

IMPORT_RECIPE = "layerwise-import/1"
_DOCKERFILE_NAME = re.compile(r"^(Dockerfile([.-].+)?|.+\.[Dd]ockerfile)$")
_TEMPLATE_MARK = re.compile(r"\{\{|%%[A-Z_]+%%")

# Category rules (documented in the README; the emitted stack file can be edited).
_TOOLS = re.compile(r"\b(apt-get|apt|apk|yum|dnf|microdnf|zypper)\b")
_LIBRARY = re.compile(r"\b(pip3?|pipenv|poetry|npm|yarn|pnpm|go mod|go get|dotnet restore|gem|bundle|"
                      r"cargo fetch|composer)\b")
CATEGORY_ORDER = ("os", "tools", "library", "code", "config")
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
    out = list(dict.fromkeys(p.resolve() for p in found))
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
    return Step(instruction=text, category=raw_category(ins), context_digest=digest, sources=sources,
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


def raw_category(ins: Instruction) -> str | None:
    """The category a step says by itself; None = like its neighbours (see `categorize`)."""
    if ins.keyword == "RUN":
        command = " ".join(ins.args)
        if _TOOLS.search(command):
            return "tools"
        if _LIBRARY.search(command):
            return "library"
        return None
    if ins.keyword in ("COPY", "ADD"):
        return "code"
    return "config" if ins.keyword in ("ENV", "CMD", "ENTRYPOINT", "EXPOSE", "LABEL") else None


def categorize(chain: list[Step]) -> list[Step]:
    """Categories along one chain, never going back in CATEGORY_ORDER (a stack file orders steps
    by category, so this keeps the Dockerfile's order):
    - FROM is os; a RUN installing system packages is tools, one fetching libraries is library;
    - a COPY is code, unless the next RUN is a library one (manifests copied for it): library;
    - any other RUN goes with the layer before it (tools at the start);
    - a step that creates no layer (ENV, WORKDIR, …) goes with the next layer; after the last, config."""
    cats: list[str] = ["os"] * len(chain)
    layers = [i for i, s in enumerate(chain) if s.creates_layer]
    previous = "tools"
    for i in layers:
        step = chain[i]
        if step.keyword in ("COPY", "ADD"):
            run = next((chain[j] for j in layers if j > i and chain[j].keyword == "RUN"), None)
            previous = "library" if run is not None and run.category == "library" else "code"
        else:
            previous = step.category or previous
        cats[i] = previous
    for i in range(1, len(chain)):
        if not chain[i].creates_layer:
            cats[i] = next((cats[j] for j in layers if j > i), "config")
    current, out = "os", []
    for step, category in zip(chain, cats):
        current = max(current, category, key=CATEGORY_ORDER.index)
        out.append(replace(step, category=current))
    return out


# ----------------------------------------------------------------------------- the family

@dataclass(frozen=True)
class BaseImage:
    name: str                      # repository path: "<project>/<stage>-<8 hex>"
    ref: str                       # registry/name:lw-<16 hex>
    parent: str | None             # name of the base below it, or None (built on `from_ref`)
    from_ref: str                  # what its FROM names
    steps: tuple[Step, ...]
    used_by: tuple[str, ...]       # Dockerfiles (app names) built on it
    fingerprint: str
    context: Path | None           # the context its COPY sources are read from, if any
    buildable: bool                # False when a COPY of it was compared by text only


@dataclass(frozen=True)
class Refactored:
    """One Dockerfile rewritten: per stage either unchanged or FROM a base plus what remains."""

    source: Dockerfile
    stage_bases: dict[int, str] = field(default_factory=dict)    # stage index -> base name
    remaining: dict[int, tuple[Step, ...]] = field(default_factory=dict)

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
            errors: list[UserError] = ()) -> Family:
    """Cut the prefix tree of every stage of every Dockerfile into base images."""
    chains = {f"{d.name}#{i}": categorize(d.chain(i)) for d in docs for i in range(len(d.stages))}
    nodes, paths = prefix_tree(chains)
    cuts = _cut_points(nodes)
    by_node: dict[int, BaseImage] = {}
    for n in sorted(cuts):   # a node's index is larger than its parent's: parents first
        by_node[n] = _base_image(nodes, n, cuts, by_node, docs, paths, registry, project)
    refactored = []
    for d in docs:
        stage_bases, remaining = {}, {}
        for i in range(len(d.stages)):
            path = paths[f"{d.name}#{i}"]
            deepest = max((pos for pos, n in enumerate(path) if n in cuts), default=None)
            if deepest is not None and deepest >= d.own_start(i):
                stage_bases[i] = by_node[path[deepest]].name
                remaining[i] = tuple(nodes[n].step for n in path[deepest + 1:])
        refactored.append(Refactored(d, stage_bases, remaining))
    return Family(tuple(docs), tuple(by_node[n] for n in sorted(by_node)), tuple(refactored),
                  tuple(errors), registry, project)


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


def _base_image(nodes, n, cuts, by_node, docs, paths, registry, project) -> BaseImage:
    run = [n]
    while nodes[run[-1]].parent is not None and nodes[run[-1]].parent not in cuts:
        run.append(nodes[run[-1]].parent)
    run.reverse()
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
    first = min(nodes[n].apps)
    doc = next(d for d in docs if d.name == first.split("#")[0])
    stage = _stage_at(doc, int(first.split("#")[1]), paths[first].index(n))
    label = re.sub(r"[^a-z0-9]+", "-", stage.name or "base").strip("-") or "base"
    name = f"{project}/{label}-{fingerprint[:8]}"
    present = all(s.context_digest for s in steps if s.keyword in ("COPY", "ADD"))
    return BaseImage(name=name, ref=f"{registry}/{name}:lw-{fingerprint[:16]}",
                     parent=parent.name if parent else None, from_ref=from_ref, steps=steps,
                     used_by=tuple(users), fingerprint=fingerprint,
                     context=doc.context, buildable=present)


def _stage_at(doc: Dockerfile, index: int, position: int) -> Stage:
    """The stage whose own steps hold `position` of stage `index`'s chain."""
    while doc.stages[index].parent is not None and position < doc.own_start(index):
        index = doc.stages[index].parent
    return doc.stages[index]


def import_family(inputs: list[Path], *, context: Path | None = None, registry: str = "localhost:5000",
                  project: str = "imported") -> Family:
    if context is not None and not context.is_dir():
        raise UserError("the build context given with --context is not a folder", context)
    docs, errors = read_all(find_dockerfiles(inputs), context)
    return extract(docs, registry=registry, project=project, errors=errors)


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
                      "buildable": b.buildable})
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
                  "text_only_lines": list(r.source.text_only), "unbuildable": r.source.unbuildable}
                 for r in family.refactored],
        "errors": [str(e) for e in family.errors],
    }
