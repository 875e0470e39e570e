"""Every kind of bad input ends in one line naming file and line, exit code 2, no traceback."""

import pytest

from conftest import run_cli

HEAD = """\
registry: localhost:5000
project: demo
base: localhost:5000/os/busybox:latest
categories:
  - {name: tools, owner: platform}
  - {name: code, owner: apps}
"""

CASES = {
    "invalid yaml": (HEAD + "apps:\n  a: {tools: [RUN x\n", 9, "while parsing a flow sequence at line 8"),
    "bad indentation": (HEAD + "apps:\n  a:\n    code: RUN a\n   tools: RUN t\n", 10, "invalid YAML"),
    "unknown top-level key": (HEAD + "colour: blue\napps:\n  a: {code: RUN a}\n", 7, "unknown key 'colour'"),
    "unknown category key": (HEAD.replace("owner: apps}", "owner: apps, ownr: x}") + "apps:\n  a: {code: RUN a}\n",
                             6, "unknown key 'categories.1.ownr'"),
    "undeclared category": (HEAD + "apps:\n  a:\n    code: RUN a\n    lib: RUN pip install x\n", 10,
                            "uses category 'lib', which is not declared"),
    "app with no steps": (HEAD + "apps:\n  a:\n    entrypoint: [sh]\n", 8, "has no steps"),
    "missing copy source": (HEAD + "apps:\n  a:\n    code:\n      - RUN a\n      - COPY nothere/ /x/\n", 11,
                            "COPY source 'nothere/' does not exist"),
    "copy escapes": (HEAD + "apps:\n  a: {code: COPY ../../etc/passwd /x}\n", 8, "escapes the stack file's folder"),
    "parser rejects": (HEAD + "apps:\n  a: {code: ENV ONLYKEY}\n", 8, "parser rejected this: ENV must have two"),
    "copy without destination": (HEAD + "apps:\n  a: {code: COPY x}\n", 8, "needs at least a source and a destination"),
    "unknown instruction": (HEAD + "apps:\n  a: {code: RUNN make}\n", 8, "unknown instruction 'RUNN'"),
    "from in category": (HEAD + "apps:\n  a:\n    code: |\n      RUN a\n      FROM alpine\n", 11,
                         "FROM is not allowed in a category"),
    "images names unknown category": (HEAD + "images:\n  model: {name: x/y}\napps:\n  a: {code: RUN a}\n", 8,
                                      "'model' is not a declared category"),
    "bad size hint": (HEAD + "apps:\n  a: {code: {steps: RUN a, size: lots}}\n", 8, "not a size"),
    "negative rate": (HEAD.replace("owner: apps}", "owner: apps, changes_per_month: -1}") + "apps:\n  a: {code: RUN a}\n",
                      6, "greater than or equal to 0"),
    "bad image name": (HEAD + "images:\n  tools: {name: Bad/Name}\napps:\n  a: {tools: RUN t, code: RUN a}\n", 8,
                       "images.tools.name"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_stack_file(name, tmp_path):
    text, line, message = CASES[name]
    (tmp_path / "layerwise.yaml").write_text(text)
    result = run_cli("plan", str(tmp_path / "layerwise.yaml"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"layerwise.yaml:{line}: " in lines[0], lines[0]
    assert message in lines[0], lines[0]


def test_parser_rejected_instruction_names_the_line(tmp_path):
    # A JSON array that BuildKit's parser cannot read.
    (tmp_path / "layerwise.yaml").write_text(HEAD + "apps:\n  a:\n    code:\n      - RUN ok\n      - 'ONBUILD'\n")
    result = run_cli("plan", str(tmp_path / "layerwise.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "layerwise.yaml:11:" in result.stderr


def test_named_category_that_splits_is_a_conflict(tmp_path):
    text = HEAD + ("images:\n  tools: {name: team/tools}\napps:\n"
                   "  a: {tools: RUN gcc, code: RUN a}\n  b: {tools: RUN clang, code: RUN b}\n")
    (tmp_path / "layerwise.yaml").write_text(text)
    result = run_cli("plan", str(tmp_path / "layerwise.yaml"))
    assert result.returncode == 2 and "would name 2 different images" in result.stderr


def test_duplicate_image_names(tmp_path):
    text = HEAD.replace("owner: apps}", "owner: apps}\n  - {name: config, owner: ops}") + (
        "images:\n  tools: {name: team/same}\n  code: {name: team/same}\napps:\n"
        "  a: {tools: RUN t, code: RUN c, config: ENV A=1}\n")
    (tmp_path / "layerwise.yaml").write_text(text)
    result = run_cli("plan", str(tmp_path / "layerwise.yaml"))
    assert result.returncode == 2 and "both be named 'team/same'" in result.stderr


def test_identical_apps_are_refused(tmp_path):
    (tmp_path / "layerwise.yaml").write_text(HEAD + "apps:\n  a: {code: RUN a}\n  b: {code: RUN a}\n")
    result = run_cli("plan", str(tmp_path / "layerwise.yaml"))
    assert result.returncode == 2 and "apps a and b have identical steps" in result.stderr


def test_missing_stack_file(tmp_path):
    result = run_cli("plan", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "file not found" in result.stderr


def test_generate_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "layerwise.yaml").write_text(HEAD + "apps:\n  a: {code: RUN a}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = run_cli("generate", str(tmp_path / "layerwise.yaml"), "-o", str(out))
    assert result.returncode == 2 and "not a previous layerwise output" in result.stderr
    assert (out / "precious.txt").read_text() == "keep me"
    result = run_cli("generate", str(tmp_path / "layerwise.yaml"), "-o", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert not (out / "precious.txt").exists() and (out / "plan.json").exists()
