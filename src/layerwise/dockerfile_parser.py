"""BuildKit's Dockerfile grammar in pure Python: the fallback where the `dockerfile` package (BuildKit's
Go parser, wheels for Linux x86_64 and Windows only) cannot be installed.

It follows BuildKit v0.12.5's `frontend/dockerfile/parser` (the version that package wraps) rule by rule
and gives the same `Command` tuples, so `dockerfiles.py` normalizes either parser's output the same way:
- parser directives (`# escape=`, `# syntax=`) only on the leading lines, each once;
- continuation lines (the escape token at the end of a line), with comment lines and empty lines inside
  them dropped; a byte-order mark on the first line dropped;
- each instruction's arguments as BuildKit's line parsers split them: leading `--flags`, JSON arrays
  (malformed ones fall back to the shell form), ENV/LABEL `key=value` pairs or the legacy `KEY value`,
  whitespace-separated words, ONBUILD's inner instruction, HEALTHCHECK's type;
- heredocs (`<<EOF`, `<<-EOF`, `3<<"EOF"`) after RUN, COPY and ADD.

Why our own and not `dockerfile-parse` (pure Python too): that library splits lines into instructions and
hands over each one's raw text. On the corpora and BuildKit's parser cases it splits 481 of the 488 files
BuildKit accepts the same way, and misses on exactly the grammar's corners (comment and empty lines inside
continuations, a continuation at the end of the file, the escape directive); it reads a heredoc's body as
instructions of its own; flags, JSON arrays and ENV pairs would still have to be parsed here. What remains
to write is the whole grammar, so it is written once, here, against BuildKit's own test files.

Known differences, each listed with its reason in tests/unit/test_parsers.py: the `dockerfile` package
hands Go strings to Python as C strings, so `\\u0000` in a JSON argument cuts it there, this parser keeps
it; heredoc words are split with quotes and escapes only (a malformed `${...}` on the line hides
BuildKit's heredoc, not ours); BuildKit reads flag bytes one by one (non-ASCII in a flag comes out as
Latin-1), this parser reads characters.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple


class Heredoc(NamedTuple):
    name: str
    file_descriptor: int
    content: str


class Command(NamedTuple):
    """One instruction, shaped as the `dockerfile` package gives it."""

    cmd: str | None           # the keyword as written
    sub_cmd: str | None       # ONBUILD's inner keyword
    json: bool                # arguments were a JSON array
    original: str             # the instruction's line, continuations joined (heredoc bodies appended)
    start_line: int
    end_line: int
    flags: tuple[str, ...]
    value: tuple[str, ...]
    heredocs: tuple[Heredoc, ...]


class ParseError(Exception):
    """Text BuildKit's parser rejects."""


class _NotStringArray(ParseError):
    pass


# Go's unicode.IsSpace; Python's str.isspace also takes \x1c-\x1f, which Go does not.
_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                   "\u200a\u2028\u2029\u202f\u205f\u3000")
_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_DIRECTIVE = re.compile(r"^#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_HEREDOC = re.compile(r"^(\d*)<<(-?)([^<]*)\Z")
_HEREDOC_KEYWORDS = frozenset({"add", "copy", "run"})
_NOT_STRING_ARRAY = "when using JSON array syntax, arrays must be comprised of strings only"


def _lstrip(s: str) -> str:
    i = 0
    while i < len(s) and s[i] in _SPACE:
        i += 1
    return s[i:]


def _strip(s: str) -> str:
    s = _lstrip(s)
    j = len(s)
    while j and s[j - 1] in _SPACE:
        j -= 1
    return s[:j]


def _is_comment(raw: str) -> bool:
    return _lstrip(raw.rstrip("\r\n")).startswith("#")


class _Directives:
    """The parser-directive state: the escape token, and whether directives may still come."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.done = False
        self.set_escape("\\")

    def set_escape(self, token: str) -> None:
        if token not in ("`", "\\"):
            raise ParseError(f"invalid escape token '{token}' does not match ` or \\")
        self.escape = token
        e = re.escape(token)
        # The escape token last on a line (not after another escape token) continues the line.
        self.continuation = re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")

    def read(self, line: str) -> None:
        if self.done:
            return
        match = _DIRECTIVE.match(line)
        name = match[1].lower() if match else ""
        if name not in ("escape", "syntax"):
            self.done = True
            return
        if name in self.seen:
            raise ParseError(f"only one {name} parser directive can be used")
        self.seen.add(name)
        if name == "escape":
            self.set_escape(match[2])

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        """The line without its continuation token, and whether the instruction ends here."""
        if self.continuation.search(line):
            return self.continuation.sub(r"\1", line), False
        return line, True


def _lines(text: str) -> list[str]:
    """Lines with their `\\n` kept (Go's scanner splits on `\\n` only)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def parse_string(text: str) -> tuple[Command, ...]:
    """Parse a whole Dockerfile, as BuildKit's `parser.Parse` does."""
    directives = _Directives()
    lines = _lines(text)
    commands: list[Command] = []
    i = current = 0

    def process(raw: str, strip_left: bool) -> str:
        token = raw.rstrip("\r\n")
        if strip_left:
            token = _lstrip(token)
        directives.read(token)
        return "" if token.startswith("#") else token

    while i < len(lines):
        raw = lines[i].removeprefix("\ufeff") if current == 0 else lines[i]
        i += 1
        processed = process(raw, True)
        current += 1
        start = current
        line, end = directives.trim_continuation(processed)
        if end and line == "":
            continue
        while not end and i < len(lines):
            raw = lines[i]
            i += 1
            processed = process(raw, False)
            current += 1
            if _is_comment(raw) or not _lstrip(processed):
                continue
            more, end = directives.trim_continuation(processed)
            line += more
        node = _node(line, directives)
        heredocs: list[Heredoc] = []
        if _can_contain_heredoc(node):
            for fd, chomp, name in _heredoc_words(line):
                content, terminated = "", False
                while i < len(lines):
                    raw = lines[i]
                    i += 1
                    current += 1
                    candidate = raw.rstrip("\r\n")
                    if (candidate.lstrip("\t") if chomp else candidate) == name:
                        terminated = True
                        break
                    content += raw
                if not terminated:
                    raise ParseError("unterminated heredoc")
                heredocs.append(Heredoc(name, fd, content))
        commands.append(_command(node, line, start, current, heredocs))
    if not commands:
        raise ParseError("file with no instructions")
    return tuple(commands)


class _Node(NamedTuple):
    keyword: str
    flags: list[str]
    values: list[str] | None      # None: no argument node at all
    json: bool
    inner: _Node | None           # ONBUILD's instruction


def _node(line: str, directives: _Directives) -> _Node:
    stripped = _strip(line)
    parts = _WHITESPACE.split(stripped, maxsplit=1) if stripped else [""]
    keyword, flags, rest = parts[0], [], ""
    if len(parts) == 2:
        rest, flags = _builder_flags(parts[1])
    rest = _strip(rest)
    kind = keyword.lower()
    if kind == "onbuild":
        inner = _node(rest, directives) if rest else None
        return _Node(keyword, flags, None, False, inner)
    parse = _LINE_PARSERS.get(kind)
    if parse is None:
        return _Node(keyword, flags, [""], False, None)   # unknown instruction: BuildKit keeps one empty value
    values, is_json = parse(rest, directives)
    return _Node(keyword, flags, values, is_json, None)


def _command(node: _Node, line: str, start: int, end: int, heredocs: list[Heredoc]) -> Command:
    inner = node.inner
    if inner is not None:
        # The package reads ONBUILD's value, JSON mark and heredocs from the inner instruction (heredocs
        # stay on the outer one in BuildKit, so an ONBUILD's heredoc bodies are consumed, not shown).
        return Command(node.keyword or None, inner.keyword or None, inner.json, line, start, end,
                       tuple(node.flags), tuple(inner.values or ()), ())
    original = line or None     # the package hands an empty string over as None
    if heredocs:
        original += "\n" + "".join(h.content + h.name + "\n" for h in heredocs)
    return Command(node.keyword or None, None, node.json, original, start, end, tuple(node.flags),
                   tuple(node.values or ()), tuple(heredocs))


def _builder_flags(line: str) -> tuple[str, list[str]]:
    """Leading `--flag` words (quotes and backslashes processed) and the rest of the line."""
    words: list[str] = []
    word, quote, blank_ok, phase = "", "", False, "spaces"
    pos, n = 0, len(line)
    while pos <= n:
        ch = line[pos] if pos < n else ""
        if phase == "spaces":
            if pos == n:
                break
            if ch in _SPACE:
                pos += 1
                continue
            if ch != "-" or pos + 1 == n or line[pos + 1] != "-":
                return line[pos:], words
            phase = "word"
        if pos == n:
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == "word":
            if ch in _SPACE:
                phase = "spaces"
                if word == "--":
                    return line[pos:], words
                if blank_ok or word:
                    words.append(word)
                word, blank_ok = "", False
            elif ch in "'\"":
                quote, blank_ok, phase = ch, True, "quote"
            elif ch == "\\":
                if pos + 1 < n:
                    pos += 1
                    word += line[pos]
            else:
                word += ch
        else:  # in quotes
            if ch == quote:
                phase = "word"
            elif ch == "\\":
                if pos + 1 == n:
                    phase = "word"
                else:
                    pos += 1
                    word += line[pos]
            else:
                word += ch
        pos += 1
    return "", words


# -- BuildKit's line parsers: the arguments of each instruction ---------------------------------------

def _words(rest: str, directives: _Directives) -> list[str]:
    """Words separated by spaces; quotes and escape tokens kept in them (ARG, ENV, LABEL)."""
    esc = directives.escape
    words: list[str] = []
    word, quote, blank_ok, phase = "", "", False, "spaces"
    pos, n = 0, len(rest)
    while pos <= n:
        ch = rest[pos] if pos < n else ""
        if phase == "spaces":
            if pos == n:
                break
            if ch in _SPACE:
                pos += 1
                continue
            phase = "word"
        if pos == n:
            if blank_ok or word:
                words.append(word)
            break
        if phase == "word":
            if ch in _SPACE:
                phase = "spaces"
                if blank_ok or word:
                    words.append(word)
                word, blank_ok = "", False
                pos += 1
                continue
            if ch in "'\"":
                quote, blank_ok, phase = ch, True, "quote"
            if ch == esc:
                if pos + 1 == n:
                    pos += 1
                    continue   # an escape token at the very end is dropped
                word += ch
                pos += 1
                ch = rest[pos]
            word += ch
        else:
            if ch == quote:
                phase = "word"
            if ch == esc and quote != "'":
                if pos + 1 == n:
                    phase = "word"
                    pos += 1
                    continue
                word += ch
                pos += 1
                ch = rest[pos]
            word += ch
        pos += 1
    return words


def _name_values(rest: str, directives: _Directives, keyword: str):
    words = _words(rest, directives)
    if not words:
        return None, False
    if "=" not in words[0]:                     # the legacy `KEY name value` form
        parts = _WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise ParseError(f"{keyword} must have two arguments")
        return parts, False
    values: list[str] = []
    for word in words:
        if "=" not in word:
            raise ParseError(f"Syntax error - can't find = in {json.dumps(word)}. Must be of the form: name=value")
        values += word.split("=", 1)
    return values, False


def _whitespace_list(rest: str, directives: _Directives | None = None):
    return (_WHITESPACE.split(rest) if rest else None), False


def _string(rest: str, directives: _Directives):
    return ([rest] if rest else None), False


def _reject_constant(name: str):
    raise ValueError(name)     # NaN / Infinity: not JSON to Go


_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _json(rest: str) -> list[str] | None:
    """The JSON array `rest` starts with (what follows it is ignored, as Go's decoder does), or None."""
    rest = _lstrip(rest)
    if not rest.startswith("["):
        return None
    try:
        value, _ = _JSON.raw_decode(rest)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise _NotStringArray(_NOT_STRING_ARRAY)
    return value


def _maybe_json(rest: str, directives: _Directives):
    if not rest:
        return None, False
    array = _json(rest)
    return (array, True) if array is not None else ([rest], False)


def _maybe_json_list(rest: str, directives: _Directives):
    array = _json(rest)
    return (array, True) if array is not None else _whitespace_list(rest)


def _name_or_name_value(rest: str, directives: _Directives):
    return _words(rest, directives) or None, False


def _health(rest: str, directives: _Directives):
    sep = 0
    while sep < len(rest) and rest[sep] not in _SPACE:
        sep += 1
    if sep == 0:
        return None, False
    values, is_json = _maybe_json(_lstrip(rest[sep:]), directives)
    return [rest[:sep], *(values or ())], is_json


_LINE_PARSERS = {
    "add": _maybe_json_list, "copy": _maybe_json_list, "volume": _maybe_json_list,
    "arg": _name_or_name_value,
    "cmd": _maybe_json, "entrypoint": _maybe_json, "run": _maybe_json, "shell": _maybe_json,
    "env": lambda rest, d: _name_values(rest, d, "ENV"),
    "label": lambda rest, d: _name_values(rest, d, "LABEL"),
    "expose": _whitespace_list, "from": _whitespace_list,
    "healthcheck": _health,
    "maintainer": _string, "stopsignal": _string, "user": _string, "workdir": _string,
}


# -- heredocs --------------------------------------------------------------------------------------

def _can_contain_heredoc(node: _Node) -> bool:
    if node.keyword.lower() == "onbuild" and node.inner is not None:
        node = node.inner
    return node.keyword.lower() in _HEREDOC_KEYWORDS and not node.json


def _shell_words(line: str, *, raw: bool) -> list[str] | None:
    """Shell words of `line` (quotes and backslashes kept when `raw`); None on an unclosed quote."""
    words: list[str] = []
    word, in_word, pos, n = "", False, 0, len(line)
    while pos < n:
        ch = line[pos]
        if ch in "'\"":
            end = pos + 1
            while end < n and line[end] != ch:
                end += 2 if ch == '"' and line[end] == "\\" and end + 1 < n else 1
            if end >= n:
                return None
            body = line[pos + 1:end]
            if not raw and ch == '"':
                body = re.sub(r'\\([\\"$])', r"\1", body)
            word += line[pos:end + 1] if raw else body
            in_word, pos = True, end + 1
            continue
        if ch == "\\":
            if pos + 1 < n:
                word += line[pos:pos + 2] if raw else line[pos + 1]
                in_word = True
            pos += 2
            continue
        if ch in _SPACE:
            if in_word and word:
                words.append(word)
                word, in_word = "", False
        else:
            word += ch
            in_word = True
        pos += 1
    if word:
        words.append(word)
    return words


def _heredoc_words(line: str) -> list[tuple[int, bool, str]]:
    """(file descriptor, chomp tabs, terminator) of each heredoc the instruction line opens."""
    found = []
    for word in _shell_words(line, raw=True) or ():
        match = _HEREDOC.match(word)
        if not match or not match[3]:
            continue
        names = _shell_words(match[3], raw=False)
        if names is None or len(names) != 1:
            continue
        found.append((int(match[1] or 0), match[2] == "-", names[0]))
    return found
