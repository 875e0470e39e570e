"""Hostile stack and fleet files: each is one error line (file, line where there is one, what to do;
exit 2), read in bounded time and memory, and nothing is written (`generate -o OUT` leaves no OUT)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from layerwise.errors import UserError
from layerwise.plan import spec

GOOD = """\
registry: localhost:5000
project: hostile
base: localhost:5000/os/busybox:latest
categories:
  - {name: code, owner: app-team}
apps:
  a: {code: RUN echo a}
  b: {code: RUN echo b}
"""


def billion_laughs(levels: int = 9) -> str:
    """The ten-line alias bomb of the issue: nine aliases of nine, 9^8 values once expanded."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefghij", "bcdefghij"[: levels - 1]):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def layerwise(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # The time-out only stops a hang from blocking the run; nothing is asserted on time.
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_one_error(result: subprocess.CompletedProcess, where: str, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"layerwise: error: {where}"), result.stderr
    for word in words:
        assert word in lines[0]


def refused_by_generate(tmp_path: Path, content: bytes | str, where: str, *words: str) -> None:
    """`plan` and `generate` both refuse the stack file; generate wrote nothing."""
    stack = tmp_path / "layerwise.yaml"
    stack.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_error(layerwise("plan", "layerwise.yaml", cwd=tmp_path), where, *words)
    assert_one_error(layerwise("generate", "layerwise.yaml", "-o", "out", cwd=tmp_path), where, *words)
    assert sorted(os.listdir(tmp_path)) == ["layerwise.yaml"]


def test_random_bytes(tmp_path):
    noise = bytes((i * 7919 + 13) % 256 for i in range(4096))   # fixed, not UTF-8 from byte 0x80 on
    refused_by_generate(tmp_path, noise, "layerwise.yaml:1:", "not UTF-8", "0x")


def test_non_utf8_byte_names_its_line(tmp_path):
    text = GOOD.replace("RUN echo b", "RUN echo caf\xe9").encode("latin-1")
    refused_by_generate(tmp_path, text, "layerwise.yaml:8:", "not UTF-8", "0xe9")


def test_control_characters(tmp_path):
    refused_by_generate(tmp_path, GOOD.replace("echo a", "echo \x00a"), "layerwise.yaml:7:", "#x0000")


def test_billion_laughs(tmp_path):
    refused_by_generate(tmp_path, GOOD + billion_laughs(), "layerwise.yaml:15:", "alias bomb")


def test_billion_laughs_inside_an_app(tmp_path):
    bomb = billion_laughs().replace("\n", "\n  ")
    text = GOOD.replace("apps:\n", f"x-bomb:\n  {bomb}\napps:\n").replace("RUN echo b", "*i")
    refused_by_generate(tmp_path, text, "layerwise.yaml:", "alias bomb")


def test_aliases_used_as_intended_are_read(tmp_path):
    """A family that reuses an anchor in every app expands well past its written size: that is fine."""
    common = "  x-common: &common {code: RUN echo common}\n"
    apps = "".join(f"  app{i}: *common\n" for i in range(2000))
    path = tmp_path / "layerwise.yaml"
    path.write_text(GOOD.replace("apps:\n", "x-anchors:\n" + common + "apps:\n") + apps)
    data, _ = spec.read_yaml(path)
    assert len(data["apps"]) == 2002


def test_recursive_alias(tmp_path):
    refused_by_generate(tmp_path, GOOD + "x-loop: &loop [1, *loop]\n", "layerwise.yaml:9:", "recursive alias")


@pytest.mark.parametrize("style", ["flow-sequence", "flow-mapping", "block"])
def test_nesting_10000_deep(tmp_path, style):
    n = 10_000
    deep = {"flow-sequence": "[" * n + "]" * n,
            "flow-mapping": "{a: " * n + "1" + "}" * n,
            "block": "\n" + "- " * n + "x"}[style]     # compact nested block sequences
    line = "9:" if style != "block" else "10:"
    refused_by_generate(tmp_path, GOOD + "x-deep: " + deep + "\n", f"layerwise.yaml:{line}", "nested deeper")


@pytest.mark.parametrize("loader", ["c", "python"])
def test_deep_nesting_with_either_parser(tmp_path, monkeypatch, loader):
    """libyaml stops at 1,000 levels and the pure-Python parser at Python's recursion limit;
    both end in the same refusal at the same line."""
    if loader == "python":
        monkeypatch.setattr(spec, "_LOADER", spec._PythonLoader)
    path = tmp_path / "deep.yaml"
    path.write_text("a: 1\nb: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(UserError) as e:
        spec.read_yaml(path)
    assert str(e.value).startswith(f"{path}:2: nested deeper than")


def test_values_the_safe_constructor_cannot_make(tmp_path):
    for n, (value, words) in enumerate({"2001-13-45": "month must be in 1..12", "!!int abc": "invalid literal",
                                        "!!float x": "could not convert", "1" + "0" * 5000: "digits",
                                        "!!timestamp 2001-01-01Tx": "cannot read this value"}.items()):
        folder = tmp_path / str(n)
        folder.mkdir()
        refused_by_generate(folder, GOOD.replace("hostile", value), "layerwise.yaml:2:", words)


def test_a_stack_file_above_the_size_limit(tmp_path):
    """100 MB of comments: refused after reading at most the limit (the whole tree of a stack file
    is needed in memory, so streaming would not bound it; the limit does)."""
    path = tmp_path / "layerwise.yaml"
    with open(path, "w") as f:
        f.write(GOOD)
        line = "# " + "x" * 1021 + "\n"
        for _ in range(100 << 10):
            f.write(line)
    assert path.stat().st_size > 100_000_000
    refused_by_generate(tmp_path, path.read_bytes(), "layerwise.yaml: larger than 32 MiB")


def test_a_device_is_read_no_further_than_the_limit(tmp_path):
    assert_one_error(layerwise("plan", "/dev/zero", cwd=tmp_path), "/dev/zero: larger than")


def test_a_folder_without_a_stack_file(tmp_path):
    (tmp_path / "layerwise.yaml").mkdir()
    assert_one_error(layerwise("plan", "layerwise.yaml/layerwise.yaml", cwd=tmp_path),
                     "layerwise.yaml/layerwise.yaml: file not found")


@pytest.mark.parametrize("case", ["bomb", "binary", "deep"])
def test_hostile_fleet_files(tmp_path, case):
    (tmp_path / "layerwise.yaml").write_text(GOOD)
    fleet = {"bomb": ("groups: {g: {apps: [a]}}\n" + billion_laughs()).encode(),
             "binary": b"groups:\n  g: {apps: [a]}\n\xff\xfe\n",
             "deep": ("groups: {g: {apps: [a]}}\nx: " + "[" * 5000 + "]" * 5000 + "\n").encode()}[case]
    (tmp_path / "fleet.yaml").write_bytes(fleet)
    where = {"bomb": "fleet.yaml:8:", "binary": "fleet.yaml:3:", "deep": "fleet.yaml:2:"}[case]
    assert_one_error(layerwise("simulate", "layerwise.yaml", "--fleet", "fleet.yaml", cwd=tmp_path), where)


def test_the_c_and_python_loaders_refuse_alike(tmp_path, monkeypatch):
    cases = {"bomb": GOOD + billion_laughs(), "loop": "a: &x [*x]\n", "date": "a: 2001-02-30\n",
             "deep": "a: " + "[" * 200 + "]" * 200 + "\n"}
    for name, text in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        errors = []
        for loader in (getattr(yaml, "CSafeLoader", spec._PythonLoader), spec._PythonLoader):
            monkeypatch.setattr(spec, "_LOADER", loader)
            with pytest.raises(UserError) as e:
                spec.read_yaml(path)
            errors.append(str(e.value))
        assert errors[0] == errors[1], name


@pytest.mark.parametrize("edit, where, words", [
    (("base: localhost:5000/os/busybox:latest", 'base: "busybox\\nRUN touch /pwned"'), "3:", "base:"),
    (("registry: localhost:5000", 'registry: "localhost:5000\\nRUN x"'), "1:", "registry:"),
    (("owner: app-team", 'owner: "app-team\\n/ @evil"'), "5:", "owner is one line"),
], ids=["base", "registry", "owner"])
def test_values_that_would_add_lines_to_generated_files(tmp_path, edit, where, words):
    """A newline in the base, registry or owner would have become an instruction in a generated
    Dockerfile (FROM line, header) or a rule in CODEOWNERS."""
    refused_by_generate(tmp_path, GOOD.replace(*edit), f"layerwise.yaml:{where}", words)


@pytest.mark.parametrize("edit, where", [
    (("  a: {code: RUN echo a}", '  ../x: {code: RUN echo a}'), "7:"),
    (("  a: {code: RUN echo a}", '  /etc/x: {code: RUN echo a}'), "7:"),
    (("project: hostile", "project: ../../x"), "2:"),
    (("project: hostile", "project: /abs"), "2:"),
    (("apps:", "images: {code: {name: ../../x}}\napps:"), "6:"),
    (("apps:", "images: {code: {name: /tmp/x}}\napps:"), "6:"),
    (("apps:", "images: {code: {name: a/b, tag: ../x}}\napps:"), "6:"),
], ids=["app-dotdot", "app-absolute", "project-dotdot", "project-absolute", "image-dotdot", "image-absolute",
        "tag-dotdot"])
def test_names_that_would_escape_the_output_folder(tmp_path, edit, where):
    """App, project and image names become folders under `generate -o OUT`; one that climbs out or
    is absolute is refused before anything is written, in OUT or beside it."""
    (tmp_path / "work").mkdir()
    refused_by_generate(tmp_path / "work", GOOD.replace(*edit), f"layerwise.yaml:{where}")
    assert sorted(os.listdir(tmp_path)) == ["work"]
