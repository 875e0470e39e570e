"""The two Dockerfile parsers agree: BuildKit's own (the `dockerfile` package, Go) and layerwise's pure-Python
one (`layerwise.dockerfile_parser`), on every corpus file, on BuildKit's own parser cases and on the edge
cases of its grammar; every difference is listed below with its reason. Also: how the parser is chosen."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

from conftest import CORPORA, corpus_parametrize, run_cli
from layerwise import dockerfile_parser
from layerwise.dockerfiles import parse_instructions, parser
from layerwise.errors import UserError

pytestmark = pytest.mark.parser

# Corpus files on which the parsers differ, and why. Nothing else may differ.
DIFFERENCES = {
    "buildkit_parser_testfiles/testfiles/json/Dockerfile":
        "`\\u0000` in a JSON argument: the `dockerfile` package hands Go strings to Python as C strings, so "
        "BuildKit's value is cut at the NUL; the pure-Python parser keeps the whole string",
}


@pytest.fixture(scope="module")
def buildkit():
    """The `dockerfile` package; outside CI, a machine without its wheel (macOS, ARM) skips."""
    try:
        import dockerfile
    except ImportError:
        problem = "the `dockerfile` package (BuildKit's parser) is not installed: pip install 'layerwise[buildkit]'"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return dockerfile


def _commands(parse, error, text: str):
    try:
        return [tuple(c) for c in parse(text)]
    except error as e:
        return ("rejected", str(e))


@contextlib.contextmanager
def _using(name: str):
    old = os.environ.get("LAYERWISE_PARSER")
    os.environ["LAYERWISE_PARSER"] = name
    parser.cache_clear()
    try:
        yield
    finally:
        if old is None:
            del os.environ["LAYERWISE_PARSER"]
        else:
            os.environ["LAYERWISE_PARSER"] = old
        parser.cache_clear()


def _steps(name: str, text: str):
    """The normalized steps (or the error) layerwise makes of `text` with parser `name`."""
    with _using(name):
        try:
            return [(i.keyword, i.text, i.flags, i.args, i.json_form, i.line, i.heredoc)
                    for i in parse_instructions(text)]
        except UserError as e:
            return ("rejected", e.message)


def _both(buildkit, text: str):
    return (_commands(buildkit.parse_string, buildkit.GoParseError, text),
            _commands(dockerfile_parser.parse_string, dockerfile_parser.ParseError, text))


# ----------------------------------------------------------------------------- every corpus file

CORPUS_FILES = sorted(str(p.relative_to(CORPORA)) for p in CORPORA.rglob("Dockerfile")) if CORPORA.is_dir() else []


@pytest.mark.corpora
def test_corpus_is_all_there():
    """Templates, BuildKit's positive, negative and line cases included: the comparison below is not vacuous."""
    assert len(CORPUS_FILES) > 500
    assert set(DIFFERENCES) <= set(CORPUS_FILES)


@pytest.mark.corpora
@corpus_parametrize("name", CORPUS_FILES)
def test_parsers_agree_on_corpus_file(buildkit, name):
    text = (CORPORA / name).read_text(encoding="utf-8")
    go, py = _both(buildkit, text)
    if name in DIFFERENCES:
        assert go != py, f"listed as a difference, but the parsers agree: drop it from DIFFERENCES ({name})"
        return
    assert py == go
    assert _steps("python", text) == _steps("buildkit", text)


@pytest.mark.corpora
def test_nul_difference_is_only_the_cut_string(buildkit):
    """The one listed difference is exactly the C-string cut: the Python value, cut at its NUL, is BuildKit's."""
    name = "buildkit_parser_testfiles/testfiles/json/Dockerfile"
    go, py = _both(buildkit, (CORPORA / name).read_text(encoding="utf-8"))
    assert len(go) == len(py)
    for g, p in zip(go, py):
        if g != p:
            assert any("\x00" in v for v in p[7])
            assert g[:7] == p[:7] and g[8:] == p[8:]
            assert g[7] == tuple(v.split("\x00")[0] for v in p[7])


# ----------------------------------------------------------------------------- the grammar's corners

EDGE_CASES = [
    # heredocs: plain, tab-chomped, several, quoted names, a file descriptor, unterminated, not in JSON or quotes
    "RUN <<EOF\necho a\nEOF\n", "RUN <<-EOF\n\techo a\n\tEOF\n", "COPY <<A <<'B' /dst\na\nA\nb\nB\n",
    "RUN 3<<EOF cat /dev/fd/3\nx\nEOF\n", "RUN <<EOF\nno end\n", 'RUN ["a", "<<EOF"]\nFROM x\n',
    "ONBUILD RUN <<EOF\nx\nEOF\nFROM a\n", 'RUN echo "<<EOF"\nFROM a\n', 'RUN cat <<"E O"\nx\nE O\n',
    "RUN <<EOF bash\nset -e\nEOF\nRUN x\n", "COPY <<-EOF /x\n\t\thi\n\tEOF\n",
    # parser directives: escape token, invalid, repeated, after an instruction, after a byte-order mark, spaced
    "# escape=`\nRUN a `\n b\nFROM c:\\\\x\n", "# escape=x\nFROM a\n", "# escape=\\\n# escape=`\nFROM a\n",
    "#syntax=foo\n# escape=`\nRUN a`\n b\n", "FROM a\n# escape=`\nRUN a `\n", "\ufeff# escape=`\nRUN a `\nb\n",
    "# escape = ` \nRUN a`\n",
    # flags
    "COPY --chown='a b' --from=\"x\" a b\n", "COPY -- --a b\n", "COPY --a\n",
    "RUN --mount=type=cache,target=/x \\\n  echo hi", "ONBUILD --x RUN y\n",
    # ENV / LABEL / ARG words
    "ENV a=\"b c\" d='e f' g=h\\ i\n", "ENV a\n", "ENV a b=c\n", "ENV a=b c\n", 'LABEL "a b"=c\n',
    'ARG a="1 2" b\n', 'ENV x="a\\"b" y\n', "ENV éé=ü\n", "ENV a=b\\\n c=d\n",
    # JSON forms: valid, non-string, nested, malformed (shell form), trailing text, empty, NaN
    'HEALTHCHECK --interval=5s CMD ["a"]\n', "HEALTHCHECK NONE\n", "HEALTHCHECK\n", "CMD [1]\n",
    'CMD ["a", ["b"]]\n', 'CMD ["a"\n', "CMD ['a']\n", 'CMD ["a"] extra\n', "CMD []\n", 'CMD ["a", NaN]\n',
    'VOLUME ["/a", "/b"]\nVOLUME /c /d\n', "EXPOSE 80 443/tcp\n", 'COPY --chmod=755 ["a b", "c"]\n',
    # continuation lines, comments, blank lines, CRLF, a lone escape, empty input
    "RUN a \\\n\n  b\n", "RUN a \\\n  # c\n  b\n", "RUN a \\  \n", "RUN a \\\\\nFROM b\n",
    "   \n\t\nFROM a\r\nRUN b\r\n", "FROM a\n\\\n", "\\\n", "", "# only\n", "RUN a\n#comment \\\nRUN b\n",
    "RUN a \\\n#c \\\nb\n", "RUN a\\\n", "FROM\ta\vb\n", "RUN echo $'a b'\n",
    # keywords: unknown, ONBUILD forms, none, case
    "FOO bar\n", "onbuild  copy --from=x a b\n", "ONBUILD\n", "RUN\n", "STOPSIGNAL   SIGTERM  \n",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_parsers_agree_on_edge_case(buildkit, text):
    go, py = _both(buildkit, text)
    assert py == go
    assert _steps("python", text) == _steps("buildkit", text)


# Inputs on which the parsers are known to differ (none of them is in the corpora), and why.
GRAMMAR_DIFFERENCES = {
    "COPY --chown=é a b\n":
        "BuildKit reads the words of flags byte by byte (extractBuilderFlags), so non-ASCII in a flag comes "
        "out as Latin-1 ('--chown=Ã©'); the Python parser reads characters ('--chown=é')",
    "RUN <<EOF echo ${\nx\nEOF\n":
        "BuildKit finds heredocs with its shell lexer and drops the lexer's error: a malformed ${...} on the "
        "line hides the heredoc, and its body lines become instructions (which layerwise then rejects); the "
        "Python parser's heredoc words know quotes and escapes only, so it reads the heredoc",
}


@pytest.mark.parametrize("text", GRAMMAR_DIFFERENCES)
def test_known_grammar_differences(buildkit, text):
    """Listed, not hidden: if BuildKit and the Python parser ever agree here, drop the entry."""
    go, py = _both(buildkit, text)
    assert go != py
    assert len(go) >= len(py) >= 1


# ----------------------------------------------------------------------------- the Python parser alone

def test_python_parser_reads_heredocs_and_escape_directive():
    """What BuildKit's grammar says, checked where the `dockerfile` package cannot be installed too."""
    (run,) = dockerfile_parser.parse_string("RUN <<-EOF bash\n\techo hi\n\tEOF\n")
    assert (run.cmd, run.value, run.start_line, run.end_line) == ("RUN", ("<<-EOF bash",), 1, 3)
    assert run.heredocs == (dockerfile_parser.Heredoc("EOF", 0, "\techo hi\n"),)
    frm, cmd = dockerfile_parser.parse_string("# escape=`\nFROM c:\\x\nRUN a `\n  b\n")
    assert (frm.value, cmd.original, cmd.start_line, cmd.end_line) == (("c:\\x",), "RUN a   b", 3, 4)
    (copy,) = dockerfile_parser.parse_string('copy --chown="a b" ["x y", "/z"]\n')
    assert (copy.flags, copy.value, copy.json) == (("--chown=a b",), ("x y", "/z"), True)


@pytest.mark.parametrize(("text", "message"), [
    ("", "file with no instructions"),
    ("ENV a\n", "ENV must have two arguments"),
    ("CMD [1]\n", "arrays must be comprised of strings only"),
    ("RUN <<EOF\nx\n", "unterminated heredoc"),
    ("# escape=\\\n# escape=`\nFROM a\n", "only one escape parser directive"),
])
def test_python_parser_rejects_what_buildkit_rejects(text, message):
    with pytest.raises(dockerfile_parser.ParseError, match=message):
        dockerfile_parser.parse_string(text)


# ----------------------------------------------------------------------------- choosing the parser

def test_layerwise_parser_forces_python():
    with _using("python"):
        assert parser().name == "python"
        assert parse_instructions("run   x")[0].text == "RUN x"


def test_layerwise_parser_rejects_an_unknown_name():
    with _using("go"), pytest.raises(UserError, match="LAYERWISE_PARSER='go' is not a parser"):
        parser()


def _without_dockerfile_package(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `code` in a Python where `import dockerfile` fails, as on a machine without its wheel."""
    prelude = "import sys; sys.modules['dockerfile'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_without_the_package_the_python_parser_is_used():
    code = "import sys\nfrom layerwise.cli.commands import main\nsys.argv = ['layerwise', '--version']\nmain()\n"
    result = _without_dockerfile_package(code, {"LAYERWISE_PARSER": ""})
    assert result.returncode == 0, result.stderr
    assert "Dockerfile parser: python" in result.stdout


def test_forcing_buildkit_without_the_package_is_one_clear_error(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM a\nRUN x\n")
    code = ("import sys\nfrom layerwise.cli.commands import main\n"
            f"sys.argv = ['layerwise', 'import', {str(tmp_path)!r}]\nmain()\n")
    result = _without_dockerfile_package(code, {"LAYERWISE_PARSER": "buildkit"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "pip install 'layerwise[buildkit]'" in result.stderr


def test_version_names_the_parser_in_use(buildkit):
    for name in ("python", "buildkit"):
        result = run_cli("--version", env={"LAYERWISE_PARSER": name})
        assert result.returncode == 0, result.stderr
        assert f"Dockerfile parser: {name}" in result.stdout
