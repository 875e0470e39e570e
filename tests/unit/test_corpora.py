"""layerwise.dockerfiles against real third-party Dockerfiles in ../shared/corpora.

The corpora are read in place (CI has shared/ beside the checkout, read-only); nothing is copied or
written there. Tests that read them are marked `corpora` (skipped without them, failed in CI); every
test here depends on the Dockerfile parser (marker `parser`: CI runs them with each parser). What each set holds is taken from its MANIFEST.json, the README table and
buildkit_parser_testfiles/FORMAT.md, so the counts asserted here are the folders' own.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CORPORA, corpus_parametrize
from layerwise.dockerfiles import (
    can_join,
    collapse_whitespace,
    join_runs,
    parse_instructions,
    parser,
    render_dockerfile,
    unbuildable_reason,
)
from layerwise.errors import UserError

pytestmark = pytest.mark.parser
corpora = pytest.mark.corpora

BUILDKIT = CORPORA / "buildkit_parser_testfiles"
SH = shutil.which("sh")


# ----------------------------------------------------------------------------- corpus index

def _manifest_sets() -> dict[str, list[dict]]:
    """Set folder name -> its MANIFEST.json entries (two manifest layouts exist: dict and list)."""
    sets: dict[str, list[dict]] = {}
    if CORPORA.is_dir():
        for folder in sorted(CORPORA.iterdir()):
            manifest = folder / "MANIFEST.json"
            if manifest.is_file():
                data = json.loads(manifest.read_text(encoding="utf-8"))
                sets[folder.name] = data["dockerfiles"] if isinstance(data, dict) else data
    return sets


def _readme_counts() -> dict[str, int]:
    """The README table: | `folder` | files | ... (the buildkit row, "33 + 4", has no manifest)."""
    readme = CORPORA / "README.md"
    if not readme.is_file():
        return {}
    return {m[1]: int(m[2]) for m in re.finditer(r"^\| `([^`]+)` \| (\d+) \|", readme.read_text(), re.M)}


SETS = _manifest_sets()
DOCKERFILES = [(s, e["corpus_path"]) for s, entries in SETS.items() for e in entries if not e.get("is_template")]
TEMPLATES = [(s, e["corpus_path"]) for s, entries in SETS.items() for e in entries if e.get("is_template")]
ENTRY = {(s, e["corpus_path"]): e for s, entries in SETS.items() for e in entries}


def _ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{s}/{p}" for s, p in pairs]


@functools.lru_cache(maxsize=None)
def _text(set_name: str, corpus_path: str) -> str:
    return (CORPORA / set_name / corpus_path).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _parse(set_name: str, corpus_path: str):
    """Parsed instructions, or the UserError (cached so every test parses each file once)."""
    try:
        return parse_instructions(_text(set_name, corpus_path), file=str(CORPORA / set_name / corpus_path))
    except UserError as e:
        return e


def _parsed_or_skip(set_name: str, corpus_path: str):
    result = _parse(set_name, corpus_path)
    if isinstance(result, UserError):
        pytest.skip(f"does not parse ({result}); test_corpus_dockerfile_parses reports that")
    return result


# ----------------------------------------------------------------------------- 1. the corpora parse

@corpora
def test_corpora_are_present():
    assert CORPORA.is_dir(), f"{CORPORA} is missing (CI puts shared/ beside the checkout)"
    counts = _readme_counts()
    assert set(SETS) == set(counts), "every README row with a file count has a MANIFEST.json, and back"
    assert len(DOCKERFILES) > 400


@corpora
@corpus_parametrize("set_name", sorted(SETS))
def test_manifest_matches_folder(set_name):
    entries = SETS[set_name]
    folder = CORPORA / set_name
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("Dockerfile") if p.is_file())
    assert sorted(e["corpus_path"] for e in entries) == on_disk
    assert len(entries) == _readme_counts()[set_name]


@corpora
@corpus_parametrize(("set_name", "corpus_path"), DOCKERFILES, ids=_ids(DOCKERFILES))
def test_corpus_dockerfile_parses(set_name, corpus_path):
    path = CORPORA / set_name / corpus_path
    text = _text(set_name, corpus_path)
    instructions = parse_instructions(text, file=str(path))
    assert instructions, "a Dockerfile has instructions"
    assert instructions[0].keyword in ("FROM", "ARG")
    assert "FROM" in [i.keyword for i in instructions]
    last_line = text.count("\n") + 1
    assert all(1 <= i.line <= last_line for i in instructions)
    assert [i.line for i in instructions] == sorted(i.line for i in instructions)
    from_lines = ENTRY[(set_name, corpus_path)].get("from_lines")
    if from_lines is not None:  # the manifests of the three repository sets list the FROM lines
        assert [i.text for i in instructions if i.keyword == "FROM"] == [
            parse_instructions(line)[0].text for line in from_lines
        ]


@corpora
def test_parsed_counts_per_set():
    expected = {s: sum(1 for e in entries if not e.get("is_template")) for s, entries in SETS.items()}
    parsed = {s: 0 for s in SETS}
    for s, p in DOCKERFILES:
        if not isinstance(_parse(s, p), UserError):
            parsed[s] += 1
    assert parsed == expected
    assert sum(parsed.values()) > 400


@corpora
def test_template_count():
    assert len(TEMPLATES) == 59
    assert all(ENTRY[t]["original_path"].endswith(".template") for t in TEMPLATES)


@corpora
@corpus_parametrize(("set_name", "corpus_path"), TEMPLATES, ids=_ids(TEMPLATES))
def test_template_parses_or_raises_user_error(set_name, corpus_path):
    """jq/awk templates are not valid Dockerfiles: parsing may fail, but only as a UserError."""
    path = CORPORA / set_name / corpus_path
    try:
        instructions = parse_instructions(_text(set_name, corpus_path), file=str(path))
    except UserError as e:
        assert e.file == str(path) and e.message
    else:
        assert instructions


# ----------------------------------------------------------------------------- 2. round trip

@corpora
@corpus_parametrize(("set_name", "corpus_path"), DOCKERFILES, ids=_ids(DOCKERFILES))
def test_round_trip_is_fixed_point(set_name, corpus_path):
    for ins in _parsed_or_skip(set_name, corpus_path):
        if ins.heredoc:
            # The heredoc body is not part of .text (it is not on the instruction's line), so the
            # text alone cannot be re-parsed; heredoc files are refused by unbuildable_reason anyway.
            continue
        again = parse_instructions(ins.text)
        assert len(again) == 1, ins.text
        assert (again[0].keyword, again[0].text) == (ins.keyword, ins.text)


@corpora
@corpus_parametrize(("set_name", "corpus_path"), DOCKERFILES, ids=_ids(DOCKERFILES))
def test_render_dockerfile_keeps_instructions(set_name, corpus_path):
    """Normalized texts rendered into a new Dockerfile parse back to the same texts."""
    steps = [i for i in _parsed_or_skip(set_name, corpus_path) if i.keyword != "FROM" and not i.heredoc]
    groups = [("base" if n < len(steps) // 2 else "app", i.text) for n, i in enumerate(steps)]
    text = render_dockerfile("alpine:3.20", groups, ["generated for a test", f"from {corpus_path}"])
    assert unbuildable_reason(text) is None
    assert [i.text for i in parse_instructions(text)] == ["FROM alpine:3.20"] + [i.text for i in steps]


# ----------------------------------------------------------------------------- 3. normalization

def _text_of(source: str) -> str:
    instructions = parse_instructions(source)
    assert len(instructions) == 1
    return instructions[0].text


@pytest.mark.parametrize(("a", "b"), [
    ("run x", "RUN x"),
    ("copy a b", "COPY a b"),
    ("Env A=1", "ENV A=1"),
    ("RUN apt-get update && \\\n    apt-get install -y curl", "RUN apt-get update && apt-get install -y curl"),
    ("RUN a \\\n# a comment line inside the continuation\n  b", "RUN a b"),
    ("RUN echo   a\t\tb  ", "RUN echo a b"),
    ("CMD  python   app.py", "CMD python app.py"),
    ('RUN echo "a  b"   c', 'RUN echo "a  b" c'),
    ("COPY --chown=1:1 --chmod=755 a b", "COPY --chmod=755 --chown=1:1 a b"),
    ("RUN --network=none --mount=type=cache,target=/root/.cache x",
     "RUN --mount=type=cache,target=/root/.cache --network=none x"),
    ('COPY ["a", "b"]', "COPY a b"),
    ('ADD ["src/", "/app/"]', "ADD src/ /app/"),
    ('CMD [ "a" ,"b" ]', 'CMD ["a", "b"]'),
    ("ENV A 1", "ENV A=1"),
    ("ENV A hello world", 'ENV A="hello world"'),
    ("LABEL maintainer me", "LABEL maintainer=me"),
    ("onbuild run   x", "ONBUILD RUN x"),
    ("HEALTHCHECK --timeout=3s --interval=5s CMD  curl   -f x",
     "HEALTHCHECK --interval=5s --timeout=3s CMD curl -f x"),
])
def test_equal_spellings_normalize_equal(a, b):
    assert _text_of(a) == _text_of(b)


@pytest.mark.parametrize(("a", "b"), [
    ('RUN echo "a  b"', 'RUN echo "a b"'),          # whitespace inside quotes is data
    ("RUN echo 'a  b'", "RUN echo 'a b'"),
    ('COPY ["a b", "c"]', 'COPY a b c'),            # a space in a path keeps the JSON form
    ('RUN ["echo", "x"]', "RUN echo x"),            # exec form is not shell form
    ("COPY a b", "ADD a b"),
    ("ENV A=1", "ENV A=2"),
])
def test_different_steps_stay_different(a, b):
    assert _text_of(a) != _text_of(b)


def test_whitespace_inside_quotes_is_kept():
    assert _text_of('RUN echo "a  b"') == 'RUN echo "a  b"'
    assert collapse_whitespace("  a   'b   c'   \"d \\\"  e\"  f ") == "a 'b   c' \"d \\\"  e\" f"


def test_legacy_env_with_quotes_normalizes_to_valid_text():
    """`ENV A "x" y` (legacy form, value `"x" y`) must normalize to text BuildKit accepts."""
    text = _text_of('ENV A "x" y')
    assert len(parse_instructions(text)) == 1, text


def test_legacy_env_value_keeps_its_tab():
    """Legacy `ENV A x<TAB>y`: the value holds a tab. Inside double quotes BuildKit reads `\\t` as a
    backslash and a `t` (shell/envVarTest: `"abc\\tdef"` -> `abc\\tdef`), so the normalized text must
    keep the tab character itself (real case: docker-library tomcat's ENV TOMCAT_TGZ_URLS)."""
    text = _text_of("ENV A x\ty")
    assert "\t" in text and "\\t" not in text, text


def test_heredoc_bodies_are_part_of_the_step():
    """Two RUNs with different heredoc bodies are different steps and must not compare equal."""
    a = _text_of("RUN <<EOF\necho a\nEOF\n")
    b = _text_of("RUN <<EOF\nrm -rf /data\nEOF\n")
    assert a != b


@pytest.mark.parametrize("source", ["CMD []", "ENTRYPOINT []"])
def test_empty_exec_form_is_accepted(source):
    """BuildKit accepts `CMD []` / `ENTRYPOINT []` (they reset the inherited value; parseCmd has no
    argument check, parseEntrypoint maps [] to nil). docker:dind images in the corpus use `CMD []`."""
    assert _text_of(source) == source


# ----------------------------------------------------------------------------- 4. BuildKit's own cases

_FORMAT = (BUILDKIT / "FORMAT.md").read_text(encoding="utf-8") if BUILDKIT.is_dir() else ""
POSITIVE = sorted(p.name for p in (BUILDKIT / "testfiles").iterdir()) if BUILDKIT.is_dir() else []
NEGATIVE = sorted(p.name for p in (BUILDKIT / "testfiles-negative").iterdir()) if BUILDKIT.is_dir() else []

_TOKEN = re.compile(r'\s*(?:(?P<punct>[()\[\]])|(?P<string>"(?:\\.|[^"\\])*")|(?P<word>[^\s()\[\]"]+))')


def _sexpr(line: str) -> dict:
    """One `result` line: (keyword ["--flag" ...] "arg" ... [(nested)]) -> keyword, flags, args, inner."""
    tokens: list = []
    pos, line = 0, line.strip()
    while pos < len(line):
        m = _TOKEN.match(line, pos)
        assert m and m.end() > pos, f"cannot read {line[pos:]!r}"
        pos = m.end()
        if m["punct"]:
            tokens.append(m["punct"])
        elif m["string"] is not None:
            tokens.append(("str", ast.literal_eval(m["string"])))  # Go %q escapes are Python escapes too
        else:
            tokens.append(("word", m["word"]))

    def node(i: int) -> tuple[dict, int]:
        assert tokens[i] == "("
        keyword = tokens[i + 1][1]
        i += 2
        out = {"keyword": keyword, "flags": [], "args": [], "inner": None}
        if tokens[i] == "[":
            i += 1
            while tokens[i] != "]":
                out["flags"].append(tokens[i][1])
                i += 1
            i += 1
        while tokens[i] != ")":
            if tokens[i] == "(":
                out["inner"], i = node(i)
            else:
                out["args"].append(tokens[i][1])
                i += 1
        return out, i + 1

    result, end = node(0)
    assert end == len(tokens)
    return result


def _expected(case: str) -> list[dict]:
    lines = (BUILDKIT / "testfiles" / case / "result").read_text(encoding="utf-8").splitlines()
    return [_sexpr(line) for line in lines if line.strip()]


def _case(case: str, **xfails):
    """A case id, with an xfail mark where the difference is expected (not a bug in dockerfiles.py)."""
    return pytest.param(case, marks=pytest.mark.xfail(**xfails[case])) if case in xfails else case


_HEALTH = dict(raises=UserError, strict=True, reason=(
    "bare `HEALTHCHECK`: BuildKit's parser accepts it (this parser-level result has `(healthcheck)`), "
    "but its instructions layer rejects it ('HEALTHCHECK requires at least one argument'); "
    "dockerfiles.py applies those instruction checks too"))
_NUL = dict(raises=AssertionError, strict=True, reason=(
    "the `dockerfile` package hands strings from Go as C strings: `\\u0000` in a JSON arg truncates it "
    "(expected '... \\t \\x00', got '... \\t '); the pure-Python parser keeps it"))
# Only BuildKit's parser (the `dockerfile` package) cuts strings at NUL.
_BUILDKIT_ONLY = {"json": _NUL} if parser().name == "buildkit" else {}


@corpora
def test_buildkit_case_lists_match_format_md():
    listed = re.search(r"Case list:(.*?)\(\d+ expected-result lines", _FORMAT, re.S)
    assert listed and sorted(listed[1].split()) == POSITIVE
    assert re.search(rf"\({len(POSITIVE)} cases\)", _FORMAT)
    total = int(re.search(r"\((\d+) expected-result lines in total\)", _FORMAT)[1])
    assert sum(len(_expected(c)) for c in POSITIVE) == total
    negatives = re.search(r"Cases: (.*?)\.\s", _FORMAT, re.S)
    assert negatives and sorted(n.strip() for n in negatives[1].split(",")) == NEGATIVE


@corpora
@corpus_parametrize("case", [_case(c, health=_HEALTH) for c in POSITIVE])
def test_buildkit_case_keywords(case):
    expected = _expected(case)
    got = parse_instructions((BUILDKIT / "testfiles" / case / "Dockerfile").read_text(encoding="utf-8"))
    assert len(got) == len(expected)
    assert [i.keyword.lower() for i in got] == [e["keyword"] for e in expected]
    for ins in got:
        if not ins.heredoc:
            again = parse_instructions(ins.text)
            assert [(a.keyword, a.text) for a in again] == [(ins.keyword, ins.text)]


@corpora
@corpus_parametrize("case", [_case(c, health=_HEALTH, **_BUILDKIT_ONLY) for c in POSITIVE])
def test_buildkit_case_flags_and_arguments(case):
    """Flags and argument strings as BuildKit dumps them. ENV/LABEL come in (key, value, separator)
    triples there and in (key, value) pairs from the `dockerfile` package; ONBUILD nests its trigger."""
    expected = _expected(case)
    got = parse_instructions((BUILDKIT / "testfiles" / case / "Dockerfile").read_text(encoding="utf-8"))
    assert len(got) == len(expected)
    for ins, exp in zip(got, expected):
        if exp["keyword"] in ("env", "label"):
            triples = exp["args"]
            assert len(triples) % 3 == 0
            assert list(ins.args) == [a for n, a in enumerate(triples) if n % 3 != 2], ins.text
        elif exp["keyword"] == "onbuild":
            inner = exp["inner"]
            trigger = parse_instructions(ins.text.split(None, 1)[1])[0]
            assert (trigger.keyword.lower(), list(trigger.flags), list(ins.args)) == (
                inner["keyword"], inner["flags"], inner["args"])
        else:
            assert list(ins.flags) == exp["flags"], ins.text
            assert list(ins.args) == exp["args"], ins.text


@corpora
@corpus_parametrize("case", NEGATIVE)
def test_buildkit_negative_case_raises_user_error(case):
    path = BUILDKIT / "testfiles-negative" / case / "Dockerfile"
    with pytest.raises(UserError) as info:
        parse_instructions(path.read_text(encoding="utf-8"), file=str(path))
    assert info.value.file == str(path)


@corpora
def test_buildkit_line_numbers():
    """testfile-line: instructions start on the lines FORMAT.md gives, counting comments and blanks."""
    spans = re.search(r"\(StartLine, EndLine\) = (.*?), and", _FORMAT, re.S)
    starts = [int(a) for a, _ in re.findall(r"\((\d+),\s*(\d+)\)", spans[1])]
    text = (BUILDKIT / "testfile-line" / "Dockerfile").read_text(encoding="utf-8")
    assert [i.line for i in parse_instructions(text)] == starts
    assert [i.line for i in parse_instructions(text, first_line=10)] == [s + 9 for s in starts]


# ----------------------------------------------------------------------------- 5. unbuildable_reason

def test_syntax_directive_is_unbuildable():
    reason = unbuildable_reason("# syntax=docker/dockerfile:1\nFROM alpine\nRUN true\n")
    assert reason and "syntax" in reason


def test_syntax_directive_after_bom_is_unbuildable():
    """BuildKit's DetectSyntax drops a UTF-8 byte-order mark before looking for `# syntax=`
    (parser/directives.go: discardBOM), and read_text() keeps the BOM as U+FEFF."""
    reason = unbuildable_reason("\ufeff# syntax=docker/dockerfile:1\nFROM alpine\nRUN true\n")
    assert reason and "syntax" in reason


def test_heredoc_is_unbuildable():
    reason = unbuildable_reason("FROM alpine\nRUN <<EOF\necho hello\nEOF\n")
    assert reason and "heredoc" in reason


def test_plain_dockerfile_is_buildable():
    assert unbuildable_reason("FROM alpine\n# syntax=not-a-directive-here\nRUN echo hi\n") is None


def _has_syntax_directive(text: str) -> bool:
    """BuildKit's rule (DetectSyntax): after an optional BOM and `#!` line, leading `#` comment lines
    are directives until the first line that is not one; `syntax` is one of them."""
    lines = text.lstrip("\ufeff").splitlines()
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    for line in lines:
        m = re.match(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$", line)
        if not m or m[1].lower() not in ("syntax", "escape", "check"):
            return False
        if m[1].lower() == "syntax":
            return True
    return False


def _all_corpus_files() -> list[tuple[str, Path]]:
    files = [(f"{s}/{p}", CORPORA / s / p) for s, p in DOCKERFILES]
    if BUILDKIT.is_dir():
        files += [(f"buildkit/{p.parent.name}", p) for p in sorted(BUILDKIT.glob("testfiles/*/Dockerfile"))]
        files.append(("buildkit/testfile-line", BUILDKIT / "testfile-line" / "Dockerfile"))
    return files


@corpora
def test_corpus_syntax_and_heredoc_files_get_a_reason():
    flagged, missed = [], []
    for name, path in _all_corpus_files():
        text = path.read_text(encoding="utf-8")
        try:
            heredoc = any(c.heredocs for c in parser().parse_string(text))
        except parser().error:
            continue
        if _has_syntax_directive(text) or heredoc:
            flagged.append(name)
            if not unbuildable_reason(text):
                missed.append(name)
    assert flagged, "the corpora have at least one (buildkit/escape-with-syntax)"
    assert missed == []


@corpora
@corpus_parametrize(("set_name", "corpus_path"), DOCKERFILES, ids=_ids(DOCKERFILES))
def test_corpus_unbuildable_reason_matches_content(set_name, corpus_path):
    instructions = _parsed_or_skip(set_name, corpus_path)
    text = _text(set_name, corpus_path)
    expected = _has_syntax_directive(text) or any(i.heredoc for i in instructions)
    assert bool(unbuildable_reason(text)) == expected


# ----------------------------------------------------------------------------- 6. can_join / join_runs

def _one(source: str):
    instructions = parse_instructions(source)
    assert len(instructions) == 1
    return instructions[0]


def test_cd_runs_in_a_subshell():
    assert join_runs(["cd /src", "make"]) == "(cd /src) && make"
    assert join_runs(["apt-get update", "apt-get install -y curl"]) == "apt-get update && apt-get install -y curl"
    assert join_runs(["make && cd /x && ls", "pwd"]) == "(make && cd /x && ls) && pwd"
    assert join_runs(["A=1", ". ./env.sh", "echo a;"]) == "(A=1) && (. ./env.sh) && (echo a;)"


@pytest.mark.parametrize(("source", "joinable"), [
    ("RUN apt-get update", True),
    ('RUN echo "a # not a comment"', True),
    ("RUN echo a#b", True),
    ("RUN echo hi # a comment", False),
    ("RUN make \\\n  # a comment line is dropped by the parser\n  install", True),
    ('RUN ["echo", "hi"]', False),
    ("RUN --mount=type=cache,target=/root/.cache pip install x", False),
    ("RUN <<EOF\necho hi\nEOF\n", False),
    ("COPY a b", False),
    ("CMD echo hi", False),
])
def test_can_join(source, joinable):
    assert can_join(_one(source)) is joinable


def _run_separately(commands: list[str], cwd: Path, env: dict) -> tuple[str, bool]:
    out = ""
    for c in commands:  # each RUN is its own `sh -c`; the build stops at the first failure
        r = subprocess.run([SH, "-c", c], cwd=cwd, env=env, capture_output=True, text=True, timeout=10)
        out += r.stdout
        if r.returncode:
            return out, False
    return out, True


@pytest.mark.skipif(SH is None, reason="needs a POSIX sh")
@pytest.mark.parametrize("commands", [
    ["echo a", "echo b"],
    ["false", "echo b"],
    ["cd /", "pwd"],
    ["cd / && pwd", "pwd"],
    ["if true; then cd /; fi", "pwd"],
    ["for d in /; do cd $d; done", "pwd"],
    ["export A=1", "echo ${A:-unset}"],
    ["umask 077", "umask"],
    ["set -e; echo x", "false; echo still-runs"],
    # state leaks and early exits, each kept inside a subshell:
    [". ./env.sh", "echo ${A:-unset}"],
    ["A=1", "echo ${A:-unset}"],
    ["test -e /nonexistent || exit 0", "echo ran"],
    ["echo a;", "echo b"],
    ["sleep 0 &", "echo b"],
], ids=lambda c: " | ".join(c))
def test_join_runs_behaves_like_separate_runs(commands, tmp_path):
    (tmp_path / "env.sh").write_text("A=1\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    joined = join_runs(commands)
    r = subprocess.run([SH, "-c", joined], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=10)
    assert (r.stdout, r.returncode == 0) == _run_separately(commands, tmp_path, env), joined


def _joinable_groups(instructions) -> list[list[str]]:
    groups, current = [], []
    for ins in [*instructions, None]:
        if ins is not None and can_join(ins):
            current.append(ins.args[0])
            continue
        if len(current) > 1:
            groups.append(current)
        current = []
    return groups


def _posix_shell_files() -> list[tuple[str, str]]:
    # Files with a SHELL instruction (the Windows/PowerShell ones) run RUN through another shell,
    # whose syntax `sh -n` cannot check.
    return [(s, p) for s, p in DOCKERFILES if not re.search(r"^\s*SHELL\b", _text(s, p), re.M | re.I)]


POSIX_FILES = _posix_shell_files() if CORPORA.is_dir() else []


@corpora
@pytest.mark.skipif(SH is None, reason="needs a POSIX sh")
@corpus_parametrize(("set_name", "corpus_path"), POSIX_FILES, ids=_ids(POSIX_FILES))
def test_joined_corpus_runs_are_valid_shell(set_name, corpus_path):
    """Every run of consecutive joinable RUNs in a corpus file joins into a command `sh -n` accepts."""
    for group in _joinable_groups(_parsed_or_skip(set_name, corpus_path)):
        joined = join_runs(group)
        assert joined.count(" && ") >= len(group) - 1
        r = subprocess.run([SH, "-n", "-c", joined], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, f"{r.stderr.strip()}\n{joined}"


@corpora
def test_corpus_has_joinable_groups():
    """The corpus-wide join check above is not vacuous."""
    groups = [g for s, p in POSIX_FILES if not isinstance(_parse(s, p), UserError)
              for g in _joinable_groups(_parse(s, p))]
    assert len(groups) > 100
