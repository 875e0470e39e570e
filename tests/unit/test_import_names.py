"""The tree `layerwise import` writes, as a maintainer would draw it (issue 14): names from content,
no alias images, the same output whatever the order of the inputs or the folder they lie in."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from conftest import CORPORA, corpus_parametrize, run_cli
from layerwise.family.loader import family_plan, load_family
from layerwise.importing.importer import import_family, summary
from layerwise.importing.naming import Candidate, choose_names, common_part, image_word
from layerwise.importing.refactor import write_refactored

MICRO = CORPORA / "GoogleCloudPlatform__microservices-demo"
ESHOP = CORPORA / "dotnet-architecture__eShopOnContainers"
SETS = sorted(p.name for p in CORPORA.iterdir() if p.is_dir() and p.name != "buildkit_parser_testfiles") \
    if CORPORA.is_dir() else []
FIXTURE = Path(__file__).parents[1] / "fixtures" / "multistage"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- names

@pytest.mark.corpora
def test_microservices_demo_gets_the_names_a_maintainer_would_choose():
    family = import_family([MICRO])
    assert {b.name: b.used_by for b in family.bases} == {
        "imported/go-builder": ("checkoutservice", "frontend", "productcatalogservice", "shippingservice"),
        "imported/node-builder": ("currencyservice", "paymentservice"),
        "imported/python-builder": ("emailservice", "loadgenerator", "recommendationservice"),
        "imported/python-runtime": ("loadgenerator", "recommendationservice"),
    }


@pytest.mark.corpora
@corpus_parametrize("corpus", SETS)
def test_no_base_of_any_corpus_has_a_hash_name(corpus):
    family = import_family([CORPORA / corpus])
    names = [b.name for b in family.bases]
    assert len(set(names)) == len(names)
    assert not [n for n in names if re.search(r"[0-9a-f]{8}", n)]
    apps = {f"{family.project}/{d.name}" for d in family.dockerfiles}
    # A base named like an app is that app's own image, never another app's.
    assert all(b.app and b.name == f"{family.project}/{b.app}" for b in family.bases if b.name in apps)


@pytest.mark.parametrize(("ref", "word"), [
    ("golang:1.26.5-alpine@sha256:0178a6", "go"), ("mcr.microsoft.com/dotnet/sdk:7.0", "dotnet-sdk"),
    ("localhost:5000/os/busybox:latest", "busybox"), ("python:3.14", "python"), ("scratch", "scratch")])
def test_image_word(ref, word):
    assert image_word(ref) == word


@pytest.mark.parametrize(("names", "common"), [
    (("3-10-alpine3-23", "3-11-alpine3-23", "3-12-alpine3-23"), "alpine3-23"),
    (("basket-api", "catalog-api"), ""),          # too short to say anything
    (("3-10", "3-11"), ""),                       # versions are not what is shared
    (("web-shop-front", "admin-shop-front"), "shop-front")])
def test_common_part_of_app_names(names, common):
    assert common_part(names) == common


def _candidate(key, *, stage=None, users=("a", "b"), category="tools", image="alpine:3.20", app=None):
    return Candidate(key=key, app=app, from_image=image, stage=stage, runtime=False, users=users, category=category)


def test_clashes_are_told_apart_by_category_then_tag_then_order():
    assert choose_names([_candidate(1, stage="build", category="tools"),
                         _candidate(2, stage="build", category="library")], set()) == {
        1: "alpine-build-tools", 2: "alpine-build-library"}
    assert choose_names([_candidate(1, users=("x", "y")), _candidate(2, users=("p", "q"), image="alpine:3.21")],
                        set()) == {1: "alpine-tools-3-20", 2: "alpine-tools-3-21"}
    # Same category and tag: numbered in the order of the apps using them, the first keeps the name.
    assert choose_names([_candidate(1, users=("x", "y")), _candidate(2, users=("p", "q"))], set()) == {
        1: "alpine-tools-2", 2: "alpine-tools"}
    # Never an app's name, unless the base is that app.
    assert choose_names([_candidate(1, stage="api")], {"alpine-api"}) == {1: "alpine-api-tools"}
    assert choose_names([_candidate(1, app="alpine-api")], {"alpine-api"}) == {1: "alpine-api"}


@pytest.mark.corpora
def test_names_are_the_same_on_every_run_and_for_any_input_order(tmp_path):
    files = sorted(p for p in MICRO.rglob("Dockerfile"))
    first = summary(import_family(files))
    for seed in range(3):
        shuffled = files[:]
        random.Random(seed).shuffle(shuffled)
        assert summary(import_family(shuffled)) == first


# ----------------------------------------------------------------------------- no alias image

FOUNDATION = {
    "foundation/Dockerfile": "FROM os:1\nRUN apt-get install -y curl\nRUN setup\nENV READY=1\n",
    "svc-a/Dockerfile": "FROM os:1\nRUN apt-get install -y curl\nRUN setup\nENV READY=1\nRUN make a\nCMD [\"a\"]\n",
    "svc-b/Dockerfile": "FROM os:1\nRUN apt-get install -y curl\nRUN setup\nENV READY=1\nCOPY b.txt /b\n",
}


def test_an_app_that_is_the_shared_prefix_is_the_base_and_parent_of_its_siblings(tmp_path):
    family = import_family([write(tmp_path / "src", FOUNDATION)])
    (base,) = family.bases
    assert base.name == "imported/foundation" and base.app == "foundation"
    assert base.used_by == ("foundation", "svc-a", "svc-b")
    assert {r.source.name: r.image for r in family.refactored} == {
        "foundation": base.name, "svc-a": None, "svc-b": None}
    out = write_refactored(family, tmp_path / "out")
    assert sorted(p.name for p in (out / "apps").iterdir()) == ["svc-a", "svc-b"]   # no apps/foundation
    assert (out / "apps/svc-a/Dockerfile").read_text().count(f"FROM {base.ref}") == 1
    app = next(a for a in json.loads((out / "import.json").read_text())["apps"] if a["name"] == "foundation")
    assert app["image"] == base.name and app["dockerfile"] == "bases/foundation/Dockerfile"
    # Read back as a family: three images, the app foundation is the base its siblings build on.
    plan = family_plan(load_family(out))
    assert [i.key for i in plan.images] == ["imported/foundation", "imported/svc-a", "imported/svc-b"]
    assert plan.apps["foundation"] == "imported/foundation"
    assert plan.image("imported/svc-a").parent == "imported/foundation"


# ----------------------------------------------------------------------------- --name and reproducibility

@pytest.mark.corpora
def test_name_option_renames_a_base_and_refuses_what_it_cannot(tmp_path):
    out = tmp_path / "out"
    r = run_cli("import", str(MICRO), "--refactor-to", str(out), "--name", "go-builder=golang-build",
                "--name", "imported/python-runtime=py-run", "--json")
    assert r.returncode == 0, r.stderr
    names = {b["name"] for b in json.loads((out / "import.json").read_text())["bases"]}
    assert names == {"imported/golang-build", "imported/node-builder", "imported/python-builder", "imported/py-run"}
    for bad, said in (("nothing=x", "no base image is called 'nothing'"),
                      ("go-builder=node-builder", "would be called 'node-builder'"),
                      ("go-builder=Go", "lower-case"), ("go-builder", "write --name OLD=NEW")):
        r = run_cli("import", str(MICRO), "--name", bad)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("source", ["fixture", pytest.param("eshop", marks=pytest.mark.corpora), "foundation"])
def test_the_same_inputs_in_another_folder_give_byte_identical_output(tmp_path, source):
    outputs = []
    for where in ("one", "two/deeper"):
        src = tmp_path / where / "src"
        if source == "foundation":   # single-stage: a stack file too
            write(src, FOUNDATION | {"svc-b/b.txt": "b\n"})
        else:
            shutil.copytree(FIXTURE if source == "fixture" else ESHOP, src)
        out, stack = tmp_path / where / "out", tmp_path / where / "stack.yaml"
        r = run_cli("import", str(src), "--refactor-to", str(out), *(["-o", str(stack)] * (source == "foundation")))
        assert r.returncode == 0, r.stderr
        outputs.append(folder_bytes(out) | ({"stack.yaml": stack.read_bytes()} if stack.exists() else {}))
    assert outputs[0] == outputs[1]
    assert not any(str(tmp_path).encode() in data for data in outputs[0].values())


@pytest.mark.corpora
def test_the_same_tree_whatever_order_the_dockerfiles_are_given_in(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ESHOP, src)
    files = [str(p) for p in sorted(src.rglob("Dockerfile"))]
    written = []
    for seed in range(3):
        shuffled = files[:]
        random.Random(seed).shuffle(shuffled)
        r = run_cli("import", *shuffled, "--refactor-to", str(tmp_path / "out"), "--json")
        assert r.returncode == 0, r.stderr
        written.append((folder_bytes(tmp_path / "out"), r.stdout))
    assert written[0] == written[1] == written[2]
