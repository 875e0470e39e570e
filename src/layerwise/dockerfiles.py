"""Dockerfile text ⇄ normalized instructions, through BuildKit's own parser (`dockerfile` package) where it
is installed, else through its pure-Python counterpart (`dockerfile_parser`); both give the same commands.

Normalizing makes equal steps compare equal however they were written: keyword case, continuation
lines, runs of whitespace outside quotes, flag order, and JSON arrays in one canonical spelling.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

from .errors import UserError

if TYPE_CHECKING:
    from .dockerfile_parser import Command

# Instructions whose result is a filesystem layer; every other one only edits the image config.
LAYER_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
KNOWN_KEYWORDS = LAYER_KEYWORDS | {
    "ENV", "ARG", "LABEL", "WORKDIR", "USER", "EXPOSE", "VOLUME", "CMD", "ENTRYPOINT", "SHELL",
    "STOPSIGNAL", "HEALTHCHECK", "ONBUILD", "MAINTAINER", "FROM",
}
# Instructions whose argument is one free-form string (the rest of the line).
_REST_KEYWORDS = frozenset({"RUN", "CMD", "ENTRYPOINT", "WORKDIR", "USER", "MAINTAINER", "STOPSIGNAL"})
_PAIR_KEYWORDS = frozenset({"ENV", "LABEL"})
_SYNTAX_DIRECTIVE = re.compile(r"^\s*#\s*syntax\s*=\s*(\S*)", re.IGNORECASE)
_DIRECTIVE = re.compile(r"^\s*#\s*\w+\s*=")
_CONTINUES = re.compile(r"(?<!\\)(?:\\\\)*\\[ \t]*$")    # an odd number of backslashes ends the line
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


PARSERS = ("buildkit", "python")


class Parser(NamedTuple):
    name: str                                  # "buildkit" or "python"
    parse_string: Callable[[str], tuple]       # text -> commands shaped as `dockerfile_parser.Command`
    error: type[Exception]                     # what it raises for text BuildKit rejects


@functools.cache
def parser() -> Parser:
    """The Dockerfile parser in use: LAYERWISE_PARSER=buildkit|python forces one; by default BuildKit's
    own (the `dockerfile` package, which has wheels for Linux x86_64 and Windows) when it is installed."""
    wanted = os.environ.get("LAYERWISE_PARSER", "").strip().lower()
    if wanted not in ("", *PARSERS):
        raise UserError(f"LAYERWISE_PARSER={wanted!r} is not a parser; use one of: {', '.join(PARSERS)}")
    if wanted != "python":
        try:
            import dockerfile
        except ImportError:
            if wanted == "buildkit":
                raise UserError("LAYERWISE_PARSER=buildkit, but BuildKit's parser (the `dockerfile` package) is not "
                                "installed: pip install 'layerwise[buildkit]', or unset LAYERWISE_PARSER") from None
        else:
            return Parser("buildkit", dockerfile.parse_string, dockerfile.GoParseError)
    from . import dockerfile_parser
    return Parser("python", dockerfile_parser.parse_string, dockerfile_parser.ParseError)


@dataclass(frozen=True)
class Instruction:
    """One parsed instruction: normalized text plus what later stages need to know about it."""

    keyword: str
    text: str                 # normalized, valid Dockerfile text
    flags: tuple[str, ...]
    args: tuple[str, ...]     # the parser's value tuple
    json_form: bool
    line: int                 # line within the parsed text (1-based)
    heredoc: bool = False

    @property
    def creates_layer(self) -> bool:
        return self.keyword in LAYER_KEYWORDS

    @property
    def copy_sources(self) -> tuple[str, ...]:
        """Build-context paths a COPY/ADD reads (none for --from copies or URLs)."""
        if self.keyword not in ("COPY", "ADD") or any(f.startswith("--from") for f in self.flags):
            return ()
        return tuple(s for s in self.args[:-1] if "://" not in s and not s.startswith("git@"))


def collapse_whitespace(text: str) -> str:
    """Runs of whitespace become one space, except inside single or double quotes."""
    if not any(c in text for c in "'\"\\"):
        return " ".join(text.split())       # nothing quoted or escaped: the same, in C
    out: list[str] = []
    quote = ""
    pending_space = False
    escaped = False
    for ch in text.strip():
        if quote:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if escaped:
            out.append(ch)
            escaped = False
            continue
        if ch.isspace():
            pending_space = True
            continue
        if pending_space and out:
            out.append(" ")
        pending_space = False
        out.append(ch)
        if ch == "\\":
            escaped = True
        elif ch in "'\"":
            quote = ch
    return "".join(out)


def _has_unquoted_space(value: str) -> bool:
    return collapse_whitespace(value) != value.strip() or " " in _strip_quoted(value)


def _json_array(args: tuple[str, ...]) -> str:
    return json.dumps(list(args), ensure_ascii=False, separators=(", ", ":"))


def _normalize(cmd: Command) -> str:
    keyword = cmd.cmd.upper()
    if cmd.heredocs:
        return keyword + cmd.original.strip()[len(keyword):]   # the body is part of the step
    if keyword == "ONBUILD":
        inner = parse_instructions(cmd.original.split(None, 1)[1])
        return f"ONBUILD {inner[0].text}"
    parts = [keyword, *sorted(cmd.flags)]
    args = cmd.value
    if cmd.json:
        if keyword == "HEALTHCHECK":
            parts += [args[0], _json_array(args[1:])]
        elif keyword in ("COPY", "ADD") and not any(c.isspace() or c in "'\"[]" for a in args for c in a):
            parts += list(args)  # the shell form says the same thing when no path needs quoting
        else:
            parts.append(_json_array(args))
    elif keyword in _PAIR_KEYWORDS:
        if len(args) == 2 and _has_unquoted_space(args[1]):
            # The legacy `ENV KEY a value` form: quoted when nothing in it is special to
            # BuildKit's word processing, else kept exactly as written.
            value = args[1]
            plain = not any(c in value for c in "\"'\\$")
            parts += [f'{args[0]}="{value}"'] if plain else [args[0], value]
        else:
            parts += [f"{args[i]}={args[i + 1]}" for i in range(0, len(args) - 1, 2)]
    elif keyword in _REST_KEYWORDS:
        parts.append(collapse_whitespace(args[0]) if args else "")
    elif keyword == "HEALTHCHECK" and len(args) == 2:
        parts += [args[0], collapse_whitespace(args[1])]
    else:
        parts += [a for a in args]
    return " ".join(p for p in parts if p != "")


def parse_instructions(text: str, *, file: str | None = None, first_line: int = 1) -> list[Instruction]:
    """Parse Dockerfile text (a whole file or a fragment) into normalized instructions.

    Raises UserError naming the file and line for anything BuildKit rejects or we do not know.
    """
    chosen = parser()   # loaded only when a Dockerfile is parsed
    text = text.removeprefix("\ufeff")   # BuildKit drops a byte-order mark too
    if "\x00" in text:   # the parser reads C strings: it would silently drop all that follows
        raise UserError("a NUL character is not Dockerfile text; is it a binary file?", file,
                        first_line + text.count("\n", 0, text.index("\x00")))
    try:
        commands = chosen.parse_string(text)
    except chosen.error as e:
        raise UserError(f"Dockerfile parser rejected this: {e}", file, first_line) from None
    return [_instruction(cmd, file, first_line + cmd.start_line - 1) for cmd in commands]


def _instruction(cmd: Command, file: str | None, line: int) -> Instruction:
    keyword = (cmd.cmd or "").upper()
    if not keyword:   # a line that is only a continuation character
        raise UserError("a line continuation with no instruction after it; remove the lone escape character",
                        file, line)
    if keyword not in KNOWN_KEYWORDS:
        raise UserError(
            f"unknown instruction {cmd.cmd!r} in {cmd.original.strip()!r}; "
            "write a Dockerfile instruction such as RUN, COPY or ENV",
            file, line,
        )
    problem = _argument_problem(keyword, cmd)
    if problem:
        raise UserError(f"{cmd.original.strip()!r}: {problem}", file, line)
    text = _normalize(cmd)
    if _CONTINUES.search(text) and not cmd.heredocs:   # written as a line, it would swallow the next one
        raise UserError(f"{cmd.original.strip()!r} ends in a backslash, which would join the next line "
                        "to it; remove the backslash or quote it", file, line)
    return Instruction(
        keyword=keyword, text=text, flags=tuple(cmd.flags), args=tuple(cmd.value),
        json_form=bool(cmd.json), line=line, heredoc=bool(cmd.heredocs),
    )


# Step texts of a stack file, parsed: a family of a thousand apps repeats most of them, and the
# parser costs most per call, so each distinct text is parsed once per run. Lines count from 1.
_FRAGMENTS: dict[str, tuple[Instruction, ...]] = {}


def parse_fragment(text: str, *, file: str | None = None, first_line: int = 1) -> tuple[Instruction, ...]:
    """`parse_instructions` for a step text, remembered. The instructions' lines are relative to
    the text (1: its first line); an error names `file` and the line in it, as parse_instructions does."""
    found = _FRAGMENTS.get(text)
    if found is None:
        try:
            found = tuple(parse_instructions(text))
        except UserError:
            parse_instructions(text, file=file, first_line=first_line)   # the same error, located
            raise
        _FRAGMENTS[text] = found
    return found


def _one_line(text: str) -> bool:
    """A text that parses alone as it does as one line among others: no continuation, heredoc,
    comment, directive or byte-order mark."""
    stripped = text.strip()
    return bool(stripped) and not any(c in text for c in "\n\r\ufeff") and "<<" not in text \
        and not stripped.endswith("\\") and not stripped.startswith("#")


def prefetch(texts) -> None:
    """Parse the one-line texts among `texts` in one call of the parser, for `parse_fragment`.
    Anything unexpected (a text the parser rejects, a count that does not match) leaves them to
    `parse_fragment`, which parses them one by one and reports errors where they are."""
    todo = [t for t in dict.fromkeys(texts) if t not in _FRAGMENTS and _one_line(t)]
    if not todo:
        return
    chosen = parser()
    try:
        commands = chosen.parse_string("\n".join(todo))
    except chosen.error:
        return
    if len(commands) != len(todo) or any(c.start_line != i + 1 or c.end_line != i + 1
                                         for i, c in enumerate(commands)):
        return
    for text, cmd in zip(todo, commands):
        try:
            _FRAGMENTS[text] = (_instruction(cmd, None, 1),)   # its own first line
        except UserError:
            pass


def _argument_problem(keyword: str, cmd: Command) -> str | None:
    """The argument checks BuildKit makes after parsing (its `instructions` package)."""
    values = [v for v in cmd.value if v != ""]
    if keyword in ("COPY", "ADD") and len(values) < 2:
        return f"{keyword} needs at least a source and a destination"
    if keyword == "ONBUILD":
        if not cmd.sub_cmd:
            return "ONBUILD needs an instruction to run later"
        if cmd.sub_cmd.upper() in ("ONBUILD", "FROM", "MAINTAINER"):
            return f"ONBUILD cannot run {cmd.sub_cmd.upper()}"
        return None
    if keyword in ("CMD", "ENTRYPOINT") and cmd.json:
        return None   # `CMD []` is how an image clears its command
    if keyword != "FROM" and not values and not cmd.heredocs:
        return f"{keyword} needs an argument"
    return None


def syntax_frontend(text: str) -> str | None:
    """The frontend image a `# syntax=` parser directive names (directives lead the file)."""
    for line in text.removeprefix("\ufeff").splitlines():
        match = _SYNTAX_DIRECTIVE.match(line)
        if match:
            return match.group(1)
        if not _DIRECTIVE.match(line):
            return None
    return None


def unbuildable_reason(text: str, instructions: list[Instruction] | None = None) -> str | None:
    """Why the legacy builder must not be sent this Dockerfile text, or None if it is safe.
    `instructions`: the text already parsed, if it was.

    A `# syntax=` directive makes the daemon fetch a frontend from the internet, and heredocs are
    BuildKit-only: the legacy builder would misread them.
    """
    for line in text.removeprefix("\ufeff").splitlines():
        if _SYNTAX_DIRECTIVE.match(line):
            return "it has a '# syntax=' directive (the daemon would fetch a frontend from the internet)"
        if line.strip() and not line.lstrip().startswith("#"):
            break
    for ins in parse_instructions(text) if instructions is None else instructions:
        if ins.heredoc:
            return f"line {ins.line} uses a heredoc, which the legacy builder cannot build"
    return None


# A command made only of plain words, whose first word is not an assignment or a builtin that
# changes shell state, behaves the same joined with `&&` as in a RUN of its own.
_PLAIN_COMMAND = re.compile(r"^[\w./@:+,%=-]+(?:\s+[\w./@:+,%=\-\"']+)*$")
_STATEFUL = frozenset({"cd", "pushd", "popd", "export", "unset", "set", "umask", "source", ".", "alias",
                       "shopt", "exec", "exit", "trap", "readonly", "local", "eval", "return", "ulimit"})


def join_runs(commands: list[str]) -> str:
    """One shell command doing what consecutive RUNs did, each as if in its own shell.

    Anything but a plain command (one that could change shell state, exit early, or end in `;`
    or `&`) runs in a subshell, so the next command starts where its own RUN would have.
    """
    def safe(command: str) -> bool:
        first = command.split(None, 1)[0] if command.strip() else ""
        return bool(_PLAIN_COMMAND.match(command.strip())) and first not in _STATEFUL and "=" not in first

    return " && ".join(c.strip() if safe(c) else f"({c.strip()})" for c in commands)


def can_join(ins: Instruction) -> bool:
    """A RUN can be joined with its neighbours when it is plain shell form with no comment in it."""
    return (ins.keyword == "RUN" and not ins.json_form and not ins.flags and not ins.heredoc
            and not re.search(r"(^|\s)#", _strip_quoted(ins.args[0] if ins.args else "")))


def _strip_quoted(text: str) -> str:
    return re.sub(r"'[^']*'|\"(?:\\.|[^\"\\])*\"", "''", text)


def render_dockerfile(from_ref: str, instructions: list[tuple[str, str]], header: list[str],
                      prelude: list[str] = ()) -> str:
    """Dockerfile text: comment header, FROM, prelude lines, then (group, instruction) pairs with
    a comment line wherever the group (category) changes. Never emits a parser directive."""
    lines = [f"# {_CONTROL.sub(' ', h)}" for h in header]   # one comment line each, whatever a name holds
    lines.append(f"FROM {from_ref}")
    lines += prelude
    group = None
    for g, text in instructions:
        if g != group:
            lines.append(f"# -- {g}")
            group = g
        lines.append(text)
    return "\n".join(lines) + "\n"


# `$NAME`, `${NAME}` and `${NAME:-word}` / `${NAME-word}` / `${NAME:+word}` / `${NAME+word}`
VARIABLE = re.compile(r"\$(?:\{(\w+)(?:(:?[-+])([^}]*))?\}|(\w+))")


def expand_variables(text: str, values: dict[str, str]) -> str:
    """Variables substituted as the builder does; an unset one becomes empty."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        value, op, word = values.get(name), m.group(2), m.group(3)
        if op in (":-", "-"):
            return word if value is None or (op == ":-" and value == "") else value
        if op in (":+", "+"):
            return word if value is not None and (op == "+" or value != "") else ""
        return value or ""
    return VARIABLE.sub(one, text)


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def image_references(text: str) -> list[str]:
    """The images a Dockerfile reads (each FROM, COPY --from, RUN --mount from=), with the defaults of the ARGs
    declared before the first FROM substituted as the builder does; stage names, stage numbers and
    `scratch` are not images and are left out. In order, without repeats."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    refs: list[str] = []
    seen_from = False
    for ins in parse_instructions(text):
        if ins.keyword == "ARG" and not seen_from:
            for arg in ins.args:
                name, eq, value = arg.partition("=")
                if eq:
                    args[name] = unquote(value)
        elif ins.keyword == "FROM" and ins.args:
            seen_from = True
            ref = expand_variables(ins.args[0], args)
            if ref.lower() != "scratch" and ref.lower() not in stages:
                refs.append(ref)
            if len(ins.args) >= 3 and ins.args[1].upper() == "AS":
                stages.add(ins.args[2].lower())
        elif ins.keyword == "COPY":
            for flag in ins.flags:
                if flag.startswith("--from="):
                    source = expand_variables(flag[len("--from="):], args)
                    if source.lower() not in stages and not source.isdigit():
                        refs.append(source)
        elif ins.keyword == "RUN":
            for flag in ins.flags:
                if flag.startswith("--mount="):
                    options = dict(o.partition("=")[::2] for o in flag[len("--mount="):].split(","))
                    source = expand_variables(options.get("from", ""), args)
                    if source and source.lower() not in stages and not source.isdigit():
                        refs.append(source)
    return list(dict.fromkeys(refs))
