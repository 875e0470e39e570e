"""import.json: what `refactor` writes, `load_import` reads back as the same description."""

from __future__ import annotations

import json
from pathlib import Path

from layerwise.importing.importer import import_family
from layerwise.importing.importfile import IMPORT_SCHEMA, ImportedApp, ImportedBase, ImportSet, load_import
from layerwise.importing.refactor import write_refactored


def test_a_description_round_trips_with_paths_resolved_against_its_folder(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    original = tmp_path / "src" / "a" / "Dockerfile"
    written = ImportSet(
        root,
        bases=(ImportedBase("p/os", "localhost:5000/p/os:lw-1", Path("bases/os/Dockerfile"), Path("bases/os/context"),
                            None, ("a", "b")),
               ImportedBase("p/tools", "localhost:5000/p/tools:lw-2", Path("bases/tools/Dockerfile"), None,
                            "p/os", ("b",))),
        apps=(ImportedApp("a", original, original.parent, Path("apps/a/Dockerfile"), ("p/os",)),
              ImportedApp("b", Path("../src/b/Dockerfile"), None, Path("apps/b/Dockerfile"), ("p/tools",),
                          "a heredoc")),
        registry="localhost:5000", project="p")
    text = written.to_json()
    (root / "import.json").write_text(text)
    doc = json.loads(text)
    assert doc["schema"] == IMPORT_SCHEMA and list(doc) == sorted(doc)           # keys sorted, as every output
    assert doc["apps"][1] == {"name": "b", "original": "../src/b/Dockerfile", "context": None,
                              "dockerfile": "apps/b/Dockerfile", "bases": ["p/tools"], "unbuildable": "a heredoc",
                              "image": None, "moves": []}

    read = load_import(root)
    here = root.resolve()
    assert read.dir == here and (read.registry, read.project) == ("localhost:5000", "p")
    os_base = read.base("p/os")
    assert (os_base.dockerfile, os_base.context) == (here / "bases/os/Dockerfile", here / "bases/os/context")
    assert read.base("p/tools").parent == "p/os" and read.base("p/tools").context is None
    assert read.apps[0].original == original and read.apps[0].context == original.parent     # absolute: kept
    assert read.apps[1].original == here / "../src/b/Dockerfile" and read.apps[1].unbuildable == "a heredoc"
    assert [b.used_by for b in read.bases] == [("a", "b"), ("b",)]


def test_what_refactor_writes_is_what_verify_reads(tmp_path):
    setup = "FROM localhost:5000/os/busybox:latest\nRUN echo shared > /s\nCOPY lib/ /opt/lib/\n"
    for app in "ab":
        (tmp_path / app / "lib").mkdir(parents=True)
        (tmp_path / app / "lib" / "x.sh").write_text("echo x\n")
        (tmp_path / app / "Dockerfile").write_text(setup + f"RUN echo {app} > /app\n")
    family = import_family([tmp_path / "a", tmp_path / "b"])
    out = write_refactored(family, tmp_path / "out")
    read = load_import(out)
    assert [b.name for b in read.bases] == [b.name for b in family.bases] and len(read.bases) == 1
    base = read.bases[0]
    assert base.ref == family.bases[0].ref and set(base.used_by) == {"a", "b"}
    assert base.dockerfile.is_file() and base.context.is_dir()
    assert [(a.name, a.bases) for a in read.apps] == [("a", (base.name,)), ("b", (base.name,))]
    assert all(a.dockerfile.is_file() and a.original.is_file() and a.context.is_dir() for a in read.apps)
