"""`layerwise verify`: `compare` by hand, then real builds of originals and refactorings on busybox."""
import json
import uuid
from pathlib import Path

import pytest

from conftest import verify_cli, write_file
from layerwise.errors import UserError
from layerwise.importing.verify import compare, image_tag

BUSYBOX = "localhost:5000/os/busybox:latest"


BASE_STEPS = f"""FROM {BUSYBOX}
RUN mkdir -p /shared && echo hello > /shared/f
ENV A=1
WORKDIR /srv
"""


APP_STEPS = {
    "app1": 'COPY app.txt /srv/\nCMD ["cat", "/srv/app.txt"]\n',
    "app2": 'COPY app.txt run.sh /srv/\nEXPOSE 8080\nCMD ["sh", "/srv/run.sh"]\n',
}


class Family:
    """Two apps whose Dockerfiles repeat the same base steps, written by hand, and the folders an
    import would write for them; names are unique to this run."""

    def __init__(self, root: Path):
        self.root = root
        self.ns = "t" + uuid.uuid4().hex[:10]
        self.refs: list[str] = []
        self.src = root / "src"
        for app, steps in APP_STEPS.items():
            write_file(self.src / app / "Dockerfile", BASE_STEPS + steps)
            write_file(self.src / app / "app.txt", f"I am {app}\n")
            write_file(self.src / app / "run.sh", f"echo {app}\n")

    def app(self, name: str) -> str:
        return f"{self.ns}-{name}"

    def base(self, out: Path, name: str, dockerfile: str, parent: str | None = None) -> dict:
        ref = self.ref_of(name)
        write_file(out / "bases" / name / "Dockerfile", dockerfile.replace("{parent}", self.ref_of(parent)))
        self.refs.append(ref)
        return {"name": name, "ref": ref, "dockerfile": f"bases/{name}/Dockerfile", "context": f"bases/{name}",
                "parent": parent}

    def ref_of(self, base: str | None) -> str:
        return f"localhost:5000/imported/{self.ns}-{base}:lw-0123456789abcdef" if base else ""

    def refactored(self, out: Path, app: str, source: str, dockerfile: str, bases: list[str],
                   context: bool = True) -> dict:
        """`{base}` in `dockerfile` becomes the ref of bases[0]."""
        name = self.app(app)
        write_file(out / "apps" / name / "Dockerfile", dockerfile.replace("{base}", self.ref_of(bases[0] if bases else None)))
        self.refs += [image_tag(name, "original"), image_tag(name, "refactored")]
        return {"name": name, "original": str(self.src / source / "Dockerfile"),
                "context": str(self.src / source) if context else None,
                "dockerfile": f"apps/{name}/Dockerfile", "bases": bases}

    def import_dir(self, name: str, bases, apps) -> Path:
        out = self.root / name
        write_file(out / "import.json", json.dumps({"schema": "layerwise.import/v1", "bases": bases, "apps": apps}))
        return out

    def remove_images(self) -> None:
        import docker
        client = docker.from_env()
        for ref in reversed(self.refs):          # apps before the bases they are built on
            try:
                client.images.remove(ref, force=True)
            except docker.errors.APIError:
                pass


@pytest.fixture(scope="module")
def family(services, tmp_path_factory):
    fam = Family(tmp_path_factory.mktemp("verify"))
    yield fam
    fam.remove_images()


def good_set(fam: Family) -> Path:
    out = fam.root / "good"
    bases = [fam.base(out, "base", BASE_STEPS)]
    apps = [fam.refactored(out, app, app, "FROM {base}\n" + steps, ["base"]) for app, steps in APP_STEPS.items()]
    return fam.import_dir("good", bases, apps)


def verdicts(doc: dict) -> dict:
    return {a["app"]: a["verdict"] for a in doc["apps"]}


@pytest.mark.integration
def test_a_faithful_refactoring_is_equivalent(family, tmp_path):
    out = good_set(family)
    result = verify_cli("--against", out, "--json", "--no-cache", cache=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    doc = json.loads(result.stdout)
    assert verdicts(doc) == {family.app("app1"): "equivalent", family.app("app2"): "equivalent"}, doc
    assert result.returncode == 0 and doc["equivalent"] is True
    # Built apart and without the build cache: two images, equal by their contents only; the
    # refactored one is built on the base image.
    import docker
    client = docker.from_env()
    original = client.images.get(image_tag(family.app("app1"), "original"))
    refactored = client.images.get(image_tag(family.app("app1"), "refactored"))
    base_layers = client.images.get(family.ref_of("base")).attrs["RootFS"]["Layers"]
    assert original.id != refactored.id
    assert refactored.attrs["RootFS"]["Layers"][:len(base_layers)] == base_layers

    # Naming one original verifies that app alone; the table says so.
    result = verify_cli(family.src / "app2" / "Dockerfile", "--against", out, cache=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert family.app("app2") in result.stdout and family.app("app1") not in result.stdout
    assert "1 of 1 apps equivalent" in result.stdout


@pytest.mark.integration
def test_broken_refactorings_fail_with_the_right_difference(family, tmp_path):
    out = family.root / "broken"
    no_env = BASE_STEPS.replace("ENV A=1\n", "")
    bases = [family.base(out, "base", BASE_STEPS), family.base(out, "noenv", no_env),
             family.base(out, "fails", f"FROM {BUSYBOX}\nRUN false\n"),
             family.base(out, "child", "FROM {parent}\nRUN true\n", parent="fails")]
    app1, app2 = APP_STEPS["app1"], APP_STEPS["app2"]
    apps = [
        family.refactored(out, "dropped-env", "app1", "FROM {base}\n" + app1, ["noenv"]),
        family.refactored(out, "chmod", "app1", "FROM {base}\n" + app1 + "RUN chmod 600 /srv/app.txt\n", ["base"]),
        family.refactored(out, "dropped-copy", "app2", "FROM {base}\n" + app2.replace("COPY app.txt run.sh", "COPY run.sh"),
                          ["base"]),
        family.refactored(out, "no-context", "app1", "FROM {base}\n" + app1, ["base"], context=False),
        family.refactored(out, "syntax", "app1", "# syntax=docker/dockerfile:1\nFROM {base}\n" + app1, ["base"]),
        family.refactored(out, "fails", "app1", "FROM {base}\nRUN false\n" + app1, ["base"]),
        family.refactored(out, "on-broken-base", "app1", "FROM {base}\n" + app1, ["child"]),
    ]
    result = verify_cli("--against", family.import_dir("broken", bases, apps), "--json", cache=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    by_app = {a["app"]: a for a in json.loads(result.stdout)["apps"]}

    def diffs(app):
        return [(d["kind"], d["where"], d["field"], d["original"], d["refactored"])
                for d in by_app[family.app(app)]["differences"]]

    assert diffs("dropped-env") == [("config", "Env:A", None, "1", None)]
    assert diffs("chmod") == [("changed", "/srv/app.txt", "mode", "0644", "0600")]
    assert diffs("dropped-copy") == [("missing", "/srv/app.txt", None, "file", None)]
    for app in ("dropped-env", "chmod", "dropped-copy"):
        assert by_app[family.app(app)]["verdict"] == "different" and not by_app[family.app(app)]["equivalent"]
    refused = by_app[family.app("no-context")]
    assert refused["verdict"] == "refused" and "without its build context" in refused["reason"]
    syntax = by_app[family.app("syntax")]
    assert syntax["verdict"] == "refused" and "syntax=" in syntax["reason"]
    failed = by_app[family.app("fails")]
    assert failed["verdict"] == "failed" and "refactored build failed" in failed["reason"]
    assert any("RUN false" in line for line in failed["log_tail"])
    on_broken = by_app[family.app("on-broken-base")]
    assert on_broken["verdict"] == "failed" and "its parent base fails failed to build" in on_broken["reason"]


@pytest.mark.integration
def test_a_broken_refactoring_shows_in_the_table(family, tmp_path):
    out = family.root / "table"
    bases = [family.base(out, "base", BASE_STEPS)]
    apps = [family.refactored(out, "table", "app2", "FROM {base}\n" + APP_STEPS["app2"].replace("EXPOSE 8080", "EXPOSE 9090"),
                              ["base"])]
    result = verify_cli(family.src / "app2", "--against", family.import_dir("table", bases, apps), cache=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "different" in result.stdout and "config ExposedPorts" in result.stdout
    assert "0 of 1 apps equivalent" in result.stdout


@pytest.mark.integration
def test_a_multi_stage_original_against_a_refactoring_on_an_extracted_build_stage(family, tmp_path):
    """The build stage becomes a base of its own (with a parent base); the final stage copies from it."""
    build_steps = "RUN mkdir -p /out && echo built > /out/tool && chmod 755 /out/tool\n"
    write_file(family.src / "multi" / "Dockerfile",
          f"FROM {BUSYBOX} AS build\n{build_steps}"
          f"FROM {BUSYBOX}\nWORKDIR /srv\nCOPY --from=build /out/tool /srv/tool\nCOPY app.txt /srv/\n"
          'ENTRYPOINT ["/srv/tool"]\n')
    write_file(family.src / "multi" / "app.txt", "multi\n")
    out = family.root / "multi"
    bases = [family.base(out, "os", f"FROM {BUSYBOX}\nWORKDIR /srv\n"),
             family.base(out, "build", f"FROM {BUSYBOX}\n{build_steps}")]
    bases[0]["context"] = None                 # a base that copies nothing may come without a folder
    apps = [family.refactored(out, "multi", "multi",
                              "FROM {base}\nCOPY --from=" + family.ref_of("build") + " /out/tool /srv/tool\n"
                              'COPY app.txt /srv/\nENTRYPOINT ["/srv/tool"]\n', ["os", "build"])]
    from layerwise.importing.verify import verify
    from layerwise.oci.engine import Engine
    from layerwise.oci.layerindex import Cache

    engine = Engine()
    events = []
    try:
        results = verify(family.import_dir("multi", bases, apps), engine, cache=Cache(tmp_path),
                         progress=lambda key, phase, event: events.append((key, phase)))
    finally:
        engine.close()
    assert [(r.app, r.verdict, r.differences, r.reason) for r in results] == [
        (family.app("multi"), "equivalent", [], None)]
    assert ("base os", "done") in events and ("base build", "done") in events
    assert (family.app("multi"), "done") in events


def build_facts(engine, context: Path, tag: str, refs: list, **kwargs):
    from layerwise.importing.verify import image_facts
    refs.append(tag)
    engine.build(context, tag, {}, **kwargs)
    return image_facts(tag)


@pytest.fixture
def engine(services):
    from layerwise.oci.engine import Engine
    e = Engine()
    refs: list[str] = []
    yield e, refs
    for ref in refs:
        e.remove(ref)
    e.close()


@pytest.mark.integration
def test_a_dockerfile_outside_the_context_sees_the_same_files(engine, tmp_path, namespace):
    eng, refs = engine
    ctx = tmp_path / "ctx"
    write_file(ctx / "a.txt", "a\n")
    write_file(ctx / "Dockerfile", f"FROM {BUSYBOX}\nCOPY . /app/\n")
    outside = write_file(tmp_path / "elsewhere" / "Dockerfile", f"FROM {BUSYBOX}\nCOPY . /app/\n")
    tag = f"layerwise-verify/{namespace}-ctx"
    in_place = build_facts(eng, ctx, f"{tag}:in-place", refs)
    moved = build_facts(eng, ctx, f"{tag}:outside", refs, dockerfile=outside)
    assert compare(in_place, moved) == []
    assert {"app/a.txt", "app/Dockerfile"} <= set(moved.files) and not any(".dockerfile" in p for p in moved.files)
    # A .dockerignore that keeps itself: an explicit Dockerfile, inside the context or not, sees the
    # same (rewritten) .dockerignore, so the two builds verify compares stay comparable.
    write_file(ctx / ".dockerignore", "# comment\n*.log\n")
    write_file(ctx / "x.log", "ignored\n")
    inside = build_facts(eng, ctx, f"{tag}:inside-explicit", refs, dockerfile=ctx / "Dockerfile")
    moved = build_facts(eng, ctx, f"{tag}:outside-ignore", refs, dockerfile=outside)
    assert compare(inside, moved) == []
    assert "app/.dockerignore" in moved.files and "app/x.log" not in moved.files


@pytest.mark.integration
def test_target_and_the_refusal_apply_to_the_dockerfile_used(engine, tmp_path, namespace):
    eng, refs = engine
    ctx = tmp_path / "ctx"
    write_file(ctx / "Dockerfile", f"# syntax=docker/dockerfile:1\nFROM {BUSYBOX}\n")
    two_stages = write_file(tmp_path / "other" / "Dockerfile",
                       f"FROM {BUSYBOX} AS first\nRUN echo one > /one\nFROM {BUSYBOX}\nRUN echo two > /two\n")
    tag = f"layerwise-verify/{namespace}-target"
    first = build_facts(eng, ctx, f"{tag}:first", refs, dockerfile=two_stages, target="first")
    assert "one" in first.files and "two" not in first.files
    with pytest.raises(UserError, match="syntax="):
        eng.build(ctx, f"{tag}:refused", {})
    with pytest.raises(UserError, match="syntax="):
        eng.build(tmp_path, f"{tag}:refused", {}, dockerfile=ctx / "Dockerfile")


@pytest.mark.integration
def test_images_off_the_registry_policy_are_named_before_the_engine_is_asked(engine, tmp_path):
    eng, _ = engine      # the suite's policy: loopback registries (conftest)
    absent = f"layerwise-absent-{uuid.uuid4().hex[:8]}/none:never"
    allowed = f"FROM {BUSYBOX} AS a\nFROM {BUSYBOX}\nCOPY --from=a /bin/sh /x\nCOPY --from=localhost:5000/any/thing:1 /a /b\n"
    eng.check_dockerfile(allowed, "t", tmp_path / "Dockerfile")         # only checked, never built
    with pytest.raises(UserError, match=f"uses {absent} from registry docker.io, which the registry policy"):
        eng.check_dockerfile(allowed + f"FROM {absent}\n", "t", tmp_path / "Dockerfile")
    with pytest.raises(UserError, match="empty image"):
        eng.check_dockerfile(allowed + "FROM ${NOT_SET}\n", "t", tmp_path / "Dockerfile")
