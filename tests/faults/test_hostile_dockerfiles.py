"""Hostile Dockerfiles given to `import`, and hostile files where layerwise looks for its own earlier
output: each bad Dockerfile is one error line naming it (and its line) while the others are imported;
a folder layerwise cannot recognise as its own is refused, untouched, without blocking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BASE = "FROM localhost:5000/os/busybox:latest\nRUN echo shared one\nRUN echo shared two\n"


def layerwise(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # The time-out only keeps a blocked read (a FIFO) from hanging the run; nothing is asserted on time.
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_hostile_dockerfiles_among_good_ones(tmp_path):
    src = tmp_path / "src"
    for app in ("a", "b"):
        write(src / f"svc-{app}" / "Dockerfile", (BASE + f"RUN echo {app}\n").encode())
    bad = {
        "svc-binary": (bytes((i * 7919 + 13) % 256 for i in range(3000)), ":1: not UTF-8"),
        "svc-latin1": (b"FROM busybox\nRUN echo caf\xe9\n", ":2: not UTF-8 text (byte 0xe9)"),
        "svc-nul": (b"FROM busybox\nRUN echo a\x00\nRUN rm -rf /data\n", ":2: a NUL character"),
        "svc-huge": (b"FROM busybox\n" + b"# padding\n" * (2 << 20), ": larger than 16 MiB"),
    }
    for name, (data, _) in bad.items():
        write(src / name / "Dockerfile", data)
    result = layerwise("import", "src", "--refactor-to", "out", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(bad)
    for name, (_, words) in bad.items():
        assert any(line.startswith(f"layerwise: error: {src / name / 'Dockerfile'}{words}") for line in errors), errors
    doc = json.loads((tmp_path / "out" / "import.json").read_text())
    assert sorted(a["name"] for a in doc["apps"]) == ["svc-a", "svc-b"]
    assert sorted(os.listdir(tmp_path / "out" / "apps")) == ["svc-a", "svc-b"]


def test_a_fifo_named_as_a_dockerfile(tmp_path):
    os.mkfifo(tmp_path / "Dockerfile")
    result = layerwise("import", "Dockerfile", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("layerwise: error: Dockerfile: ") and len(result.stderr.splitlines()) == 1


def test_a_folder_name_with_a_newline_gives_a_plain_app_name(tmp_path):
    """App names come from folder names: whatever a name holds, the app name is a plain slug and
    its folder lies inside the output."""
    write(tmp_path / "src" / "evil\nname" / "Dockerfile", (BASE + "RUN echo e\n").encode())
    write(tmp_path / "src" / "ok" / "Dockerfile", (BASE + "RUN echo o\n").encode())
    result = layerwise("import", "src", "--refactor-to", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out" / "apps")) == ["evil-name", "ok"]
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]


def test_an_earlier_output_with_deep_json_is_not_taken_for_ours(tmp_path):
    """`generate` and `import --refactor-to` replace only their own earlier output, recognised by its
    plan.json / import.json: nested 10,000 deep (or a FIFO), it is not theirs, and stays as it was."""
    write(tmp_path / "layerwise.yaml", b"registry: localhost:5000\nproject: p\nbase: busybox\ncategories:\n"
                                       b"  - {name: code, owner: o}\napps:\n  a: {code: RUN a}\n  b: {code: RUN b}\n")
    write(tmp_path / "gen" / "plan.json", b"[" * 10_000 + b"]" * 10_000)
    write(tmp_path / "src" / "a" / "Dockerfile", (BASE + "RUN echo a\n").encode())
    write(tmp_path / "src" / "b" / "Dockerfile", (BASE + "RUN echo b\n").encode())
    (tmp_path / "ref").mkdir()
    os.mkfifo(tmp_path / "ref" / "import.json")
    for args, folder in ((["generate", "-o", "gen"], "gen"), (["import", "src", "--refactor-to", "ref"], "ref")):
        before = sorted(os.listdir(tmp_path / folder))
        result = layerwise(*args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "is not a previous layerwise output" in result.stderr and len(result.stderr.splitlines()) == 1
        assert sorted(os.listdir(tmp_path / folder)) == before
