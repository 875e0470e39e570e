"""`layerwise import`: Dockerfiles → stages → chains → shared prefixes as base images (no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CORPORA, run_cli
from layerwise.dockerfiles import parse_instructions
from layerwise.errors import UserError
from layerwise.importing.importer import categorize, import_family, read_dockerfile
from layerwise.importing.refactor import app_dockerfile, base_dockerfile, stack_text, write_refactored
from layerwise.plan.spec import load_stack

ESHOP = CORPORA / "dotnet-architecture__eShopOnContainers"
MICRO = CORPORA / "GoogleCloudPlatform__microservices-demo"
PYTHON = CORPORA / "docker-library__python"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def chain_texts(family, name: str, stage: int = -1) -> list[str]:
    doc = next(d for d in family.dockerfiles if d.name == name)
    return [s.instruction for s in doc.chain(len(doc.stages) - 1 if stage == -1 else stage)]


def rebuilt_chain(family, name: str, stage: int) -> list[str]:
    """The chain a refactored stage builds: its base's chain (recursively) and what remains."""
    item = next(r for r in family.refactored if r.source.name == name)
    if stage not in item.stage_bases:
        return chain_texts(family, name, stage)
    base = family.base(item.stage_bases[stage])
    below = []
    while base is not None:
        below = [s.instruction for s in base.steps] + below
        parent = family.base(base.parent) if base.parent else None
        if parent is None:
            below = ["FROM " + base.from_ref] + below
        base = parent
    return below + [s.instruction for s in item.remaining[stage]]


# ----------------------------------------------------------------------------- corpora

@pytest.mark.corpora
def test_eshop_services_share_one_build_base():
    family = import_family([ESHOP])
    marked = {p.parent.name.lower().replace(".", "-") for p in ESHOP.rglob("Dockerfile")
              if "keep lines from here" in p.read_text()}
    assert len(marked) == 12   # 13 files; the two aggregators are both named "aggregator"
    sln = 'COPY "eShopOnContainers-ServicesAndWebApps.sln" "eShopOnContainers-ServicesAndWebApps.sln"'
    build = [b for b in family.bases if any(s.instruction == sln for s in b.steps)]
    assert len(build) == 1 and len(build[0].steps) >= 33
    users = set(build[0].used_by)
    assert {"basket-api", "catalog-api", "ordering-api", "webmvc", "webstatus", "mobile-bff-shopping-aggregator",
            "web-bff-shopping-aggregator"} <= users
    assert not any(u.endswith("dockerfile-develop") for u in users)
    for item in family.refactored:
        if item.source.name in users:
            stage = next(i for i, s in enumerate(item.source.stages) if s.name == "build")
            assert stage in item.stage_bases
            # What the rewritten stage builds is exactly what the original stage built.
            assert rebuilt_chain(family, item.source.name, stage) == chain_texts(family, item.source.name, stage)
            assert item.source.text_only   # the corpus has no contexts: said, not hidden


@pytest.mark.corpora
def test_microservices_demo_families_by_language():
    family = import_family([MICRO])
    by_from: dict[str, set[str]] = {}
    for b in family.bases:
        by_from.setdefault(b.from_ref.split()[-1].split(":")[0], set()).update(b.used_by)
    assert by_from["golang"] == {"checkoutservice", "frontend", "productcatalogservice", "shippingservice"}
    assert by_from["node"] == {"currencyservice", "paymentservice"}
    assert {"emailservice", "recommendationservice"} <= by_from["python"]
    # ARG defaults went into FROM (--platform=$BUILDPLATFORM).
    assert all("$" not in b.from_ref for b in family.bases)
    assert not family.errors


@pytest.mark.corpora
def test_docker_library_python_shares_almost_nothing():
    """Identical text under different FROMs (alpine 3.23 vs 3.24, bookworm vs trixie) is not shared."""
    family = import_family([PYTHON])
    # Only the small package RUNs before ENV PYTHON_VERSION are shared among versions on one FROM;
    # the heavy build of each Python version never is.
    shared_runs = {s.instruction for b in family.bases for s in b.steps if s.creates_layer}
    assert shared_runs and all(("apk add" in r or "apt-get install" in r) and "PYTHON_VERSION" not in r
                               for r in shared_runs)
    assert not any(s.instruction.startswith("ENV PYTHON_VERSION") for b in family.bases for s in b.steps)
    for base in family.bases:
        froms = {chain_texts(family, u)[0] for u in base.used_by}
        assert len(froms) == 1, base.name


@pytest.mark.corpora
def test_every_corpus_set_imports_with_templates_reported():
    family = import_family([CORPORA / "binnacle-icse2020_gold_docker-library-2019"])
    templates = [e for e in family.errors if "template" in str(e)]
    assert len(templates) == 59
    assert len(family.dockerfiles) + len(family.errors) == 432


# ----------------------------------------------------------------------------- reading

def test_arg_defaults_in_from_and_stage_references(tmp_path):
    write(tmp_path, {"a/Dockerfile": "ARG BASE=os/busybox\nARG TAG=latest\nFROM ${BASE}:$TAG AS Build\n"
                                     "ARG TAG\nRUN echo built\nFROM build\nRUN echo final\n"})
    doc = read_dockerfile(tmp_path / "a/Dockerfile", "a")
    assert doc.stages[0].root == "FROM os/busybox:latest"
    assert doc.stages[1].parent == 0   # `FROM build` names the stage, whatever its case
    assert [s.instruction for s in doc.chain(1)] == ["FROM os/busybox:latest", "ARG TAG=latest",
                                                      "RUN echo built", "RUN echo final"]


@pytest.mark.parametrize(("text", "message"), [
    ("FROM ${IMAGE}\nRUN true\n", "has no default"),
    ("ARG IMAGE\nFROM $IMAGE\n", "has no default"),
    ("RUN true\nFROM a\n", "only ARG may come before the first FROM"),
    ("RUN true\n", "no FROM instruction"),
    ("FROM a\nFROB b\n", "unknown instruction"),
    ("FROM a\nCOPY x\n", "needs at least a source"),
    ("FROM {{ .Base }}\nRUN true\n", "template"),
    ("FROM a:%%TAG%%\n", "template"),
])
def test_bad_dockerfile_is_one_error_and_the_others_go_on(tmp_path, text, message):
    write(tmp_path, {"bad/Dockerfile": text, "good/Dockerfile": "FROM a\nRUN true\n",
                     "good2/Dockerfile": "FROM a\nRUN true\nRUN two\n"})
    family = import_family([tmp_path])
    assert [d.name for d in family.dockerfiles] == ["good", "good2"]
    assert len(family.errors) == 1 and message in str(family.errors[0])
    assert str(tmp_path / "bad/Dockerfile") in str(family.errors[0])
    assert [b.used_by for b in family.bases] == [("good", "good2")]


def test_template_by_name_and_missing_copy_source_in_a_given_context(tmp_path):
    write(tmp_path, {"x.template/Dockerfile": "FROM a\n", "ctx/here.txt": "x",
                     "app/Dockerfile": "FROM a\nCOPY here.txt missing.txt /x/\n",
                     "ok/Dockerfile": "FROM a\nCOPY here.txt /x/\n"})
    family = import_family([tmp_path / "x.template", tmp_path / "app", tmp_path / "ok"], context=tmp_path / "ctx")
    errors = sorted(str(e) for e in family.errors)
    assert "missing.txt" in errors[0] and "app/Dockerfile:2" in errors[0]
    assert "template" in errors[1]
    assert [d.name for d in family.dockerfiles] == ["ok"]


def test_syntax_and_heredoc_import_but_are_marked_unbuildable(tmp_path):
    write(tmp_path, {"s/Dockerfile": "# syntax=docker/dockerfile:1\nFROM a\nRUN x\n",
                     "h/Dockerfile": "FROM a\nRUN x\nRUN <<EOF\necho hi\nEOF\n"})
    family = import_family([tmp_path])
    reasons = {d.name: d.unbuildable for d in family.dockerfiles}
    assert "syntax" in reasons["s"] and "heredoc" in reasons["h"]
    assert [b.used_by for b in family.bases] == [("h", "s")]   # the shared `RUN x`
    out = write_refactored(family, tmp_path / "out")
    apps = {a["name"]: a for a in json.loads((out / "import.json").read_text())["apps"]}
    assert "syntax" in apps["s"]["unbuildable"]
    # s is the shared `RUN x` and nothing more: it is that base, written once, without its directive.
    assert apps["s"]["image"] == family.bases[0].name == "imported/s" and not (out / "apps/s").exists()
    assert "# syntax=" not in (out / apps["s"]["dockerfile"]).read_text()


# ----------------------------------------------------------------------------- identity

def test_copy_identity_is_the_context_files_with_dockerignore(tmp_path):
    common = "FROM a\nRUN apt-get install -y curl\nCOPY . /app\nRUN make\n"
    write(tmp_path, {"one/Dockerfile": common, "one/main.c": "int main;", "one/.dockerignore": "*.log\n",
                     "one/build.log": "one",
                     "two/Dockerfile": common, "two/main.c": "int main;", "two/.dockerignore": "*.log\n",
                     "two/build.log": "two, another log",
                     "three/Dockerfile": common, "three/main.c": "int other;"})
    family = import_family([tmp_path / "one", tmp_path / "two", tmp_path / "three"])
    assert not any(d.text_only for d in family.dockerfiles)
    by_users = {b.used_by: [s.instruction for s in b.steps] for b in family.bases}
    # one and two copy the same files (the logs are ignored): the COPY and make are shared too.
    assert by_users == {("one", "three", "two"): ["RUN apt-get install -y curl"],
                        ("one", "two"): ["COPY . /app", "RUN make"]}


def test_without_context_copy_falls_back_to_text_and_says_so(tmp_path):
    write(tmp_path, {"a/Dockerfile": "FROM x\nCOPY go.mod ./\nRUN go mod download\n",
                     "b/Dockerfile": "FROM x\nCOPY go.mod ./\nRUN go mod download\nRUN go build\n"})
    family = import_family([tmp_path])
    assert [d.text_only for d in family.dockerfiles] == [(2,), (2,)]
    assert family.bases[0].buildable is False
    item = json.loads(write_refactored(family, tmp_path / "out").joinpath("import.json").read_text())
    assert item["bases"][0]["context"] is None and item["apps"][0]["context"] is None


def test_same_text_under_other_parents_is_not_shared(tmp_path):
    write(tmp_path, {"a/Dockerfile": "FROM alpine:3.23\nRUN apk add curl\n",
                     "b/Dockerfile": "FROM alpine:3.24\nRUN apk add curl\n",
                     "c/Dockerfile": "FROM alpine:3.23\nRUN apk add git\nRUN apk add curl\n"})
    assert import_family([tmp_path]).bases == ()


def test_copy_from_a_stage_stays_in_the_app(tmp_path):
    """Two final stages with the same text copy from builders that differ: not the same step, and
    a base image can never hold a copy from a stage."""
    write(tmp_path, {
        "a/Dockerfile": "FROM x AS build\nRUN make a\nFROM y\nRUN setup\nCOPY --from=build /out /out\n",
        "b/Dockerfile": "FROM x AS build\nRUN make b\nFROM y\nRUN setup\nCOPY --from=build /out /out\n"})
    family = import_family([tmp_path])
    assert [[s.instruction for s in b.steps] for b in family.bases] == [["RUN setup"]]
    for item in family.refactored:
        assert [s.instruction for s in item.remaining[1]] == ["COPY --from=build /out /out"]


def test_nested_bases_and_refactored_text_parses_back(tmp_path):
    write(tmp_path, {
        "a/Dockerfile": "FROM x\nRUN apt-get update\nENV A=1\nRUN pip install numpy\nCMD [\"a\"]\n",
        "b/Dockerfile": "FROM x\nRUN apt-get update\nENV A=1\nRUN pip install numpy\nCMD [\"b\"]\n",
        "c/Dockerfile": "FROM x\nRUN apt-get update\nRUN other\n"})
    family = import_family([tmp_path])
    outer, inner = family.bases
    assert outer.used_by == ("a", "b", "c") and inner.used_by == ("a", "b") and inner.parent == outer.name
    text = app_dockerfile(family.refactored[0], family)
    assert [i.text for i in parse_instructions(text)] == [f"FROM {inner.ref}", 'CMD ["a"]']
    assert parse_instructions(base_dockerfile(inner))[0].text == f"FROM {outer.ref}"
    for name in "abc":
        assert rebuilt_chain(family, name, 0) == chain_texts(family, name)


def test_categories_follow_documented_rules():
    steps = [parse_instructions(t)[0] for t in (
        "FROM x", "ENV DEBIAN_FRONTEND=noninteractive", "RUN apt-get update", "WORKDIR /app",
        "COPY requirements.txt .", "RUN pip install -r requirements.txt", "COPY . .", "RUN make",
        "EXPOSE 80", "CMD run")]
    from layerwise.importing.importer import raw_category
    from layerwise.plan.model import Step
    chain = [Step(instruction=i.text, category=raw_category(i)) for i in steps]
    assert [s.category for s in categorize(chain)] == [
        "os", "tools", "tools", "library", "library", "library", "code", "code", "config", "config"]


# ----------------------------------------------------------------------------- outputs

def test_stack_file_from_import_loads_and_plans_the_same_steps(tmp_path):
    write(tmp_path, {
        "svc/one/Dockerfile": "FROM base:1\nRUN apt-get install -y curl\nCOPY app.py /srv/\nCMD [\"python\", \"/srv/app.py\"]\n",
        "svc/one/app.py": "print(1)\n",
        "svc/two/Dockerfile": "FROM base:1\nRUN apt-get install -y curl\nCOPY app.py /srv/\n",
        "svc/two/app.py": "print(2)\n",
        "svc/multi/Dockerfile": "FROM base:1 AS b\nRUN make\nFROM base:1\nCOPY --from=b /x /x\n",
        "svc/other/Dockerfile": "FROM base:2\nRUN true\n"})
    stack_path = tmp_path / "layerwise.yaml"
    family = import_family([tmp_path / "svc"])
    text, notes = stack_text(family, stack_path)
    stack_path.write_text(text)
    assert sorted(n.split(":")[0] for n in notes) == ["multi", "other"]
    stack = load_stack(stack_path)
    assert stack.base == "base:1"
    assert [s.instruction for s in stack.apps["one"]] == [
        "RUN apt-get install -y curl", "COPY svc/one/app.py /srv/", 'CMD ["python", "/srv/app.py"]']
    assert [s.category for s in stack.apps["one"]] == ["tools", "code", "config"]
    assert stack.apps["one"][1].context_digest != stack.apps["two"][1].context_digest
    with pytest.raises(UserError, match="--base nothing"):
        stack_text(family, stack_path, base="nothing")


def test_import_command_outputs_and_exit_codes(tmp_path):
    write(tmp_path, {"a/Dockerfile": "FROM x\nRUN apt-get update\nRUN a\n",
                     "b/Dockerfile": "FROM x\nRUN apt-get update\nRUN b\n",
                     "bad/Dockerfile": "FROM ${NOPE}\n"})
    out = tmp_path / "refactored"
    r = run_cli("import", str(tmp_path), "--refactor-to", str(out), "-o", str(tmp_path / "stack.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["images"] == 2 and doc["instructions_shared"] == 1 and len(doc["errors"]) == 1
    assert "bad/Dockerfile:1: FROM uses ${NOPE}" in r.stderr and "Traceback" not in r.stderr
    assert (out / "import.json").exists() and (out / "apps/a/Dockerfile").exists()
    assert load_stack(tmp_path / "stack.yaml").apps.keys() == {"a", "b"}
    # A folder that is not ours is not replaced; nothing importable is exit 2.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/keep.txt").write_text("x")
    r = run_cli("import", str(tmp_path / "a"), "--refactor-to", str(tmp_path / "mine"))
    assert r.returncode == 2 and "not a previous layerwise output" in r.stderr
    assert (tmp_path / "mine/keep.txt").exists()
    r = run_cli("import", str(tmp_path / "bad"))
    assert r.returncode == 2 and r.stderr.count("error") == 1
    r = run_cli("import", str(tmp_path / "nothing-here"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_folders_are_searched_for_dockerfiles_but_not_hidden_ones(tmp_path):
    write(tmp_path, {"svc/api/Dockerfile": "FROM a\nRUN x\n", "svc/web/web.Dockerfile": "FROM a\nRUN x\n",
                     "svc/.git/Dockerfile": "FROM a\nRUN x\n", "svc/notes/Dockerfile.md.txt": "not one",
                     "svc/src/Dockerfile": "FROM a\nRUN y\n"})
    family = import_family([tmp_path / "svc"])
    assert sorted(d.name for d in family.dockerfiles) == ["api", "svc-src", "web-dockerfile"]
    # Named like one (Dockerfile.*), so looked at, and refused as what it is.
    (error,) = family.errors
    assert "Dockerfile.md.txt:1: unknown instruction" in str(error)


def test_base_context_keeps_a_copied_file_named_dockerfile(tmp_path):
    """`COPY . /src` copies the Dockerfile too: the base's own Dockerfile must not replace it."""
    text = "FROM a\nCOPY . /src\nRUN make\n"
    write(tmp_path, {"one/Dockerfile": text, "two/Dockerfile": text})   # the same files in both contexts
    family = import_family([tmp_path / "one", tmp_path / "two"])
    (base,) = family.bases
    assert base.used_by == ("one", "two") and base.buildable
    out = write_refactored(family, tmp_path / "out")
    spec = json.loads((out / "import.json").read_text())["bases"][0]
    assert (out / spec["context"] / "Dockerfile").read_text() == text
    assert (out / spec["dockerfile"]).read_text() == base_dockerfile(base)
