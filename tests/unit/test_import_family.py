"""An import folder as a family (no engine): stages nothing uses are dropped, the bake file, and the
folder read back as the same Plan model a stack file gives (what build, simulate and bench pull use)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SEED, run_cli
from layerwise.dockerfiles import parse_instructions
from layerwise.errors import UserError
from layerwise.family.build import needed_images, select
from layerwise.family.loader import ImportedFamily, family_plan, load_family
from layerwise.importing.importer import import_family, renumber_stages, stage_references
from layerwise.importing.refactor import app_dockerfile, bake_file, write_refactored
from layerwise.plan.spec import Stack

FIXTURE = Path(__file__).parents[1] / "fixtures" / "multistage"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def stage_lines(text: str) -> list[str]:
    return [i.text for i in parse_instructions(text) if i.keyword == "FROM"]


@pytest.fixture
def refactored(tmp_path):
    """The multi-stage fixture copied (contexts included), imported and written to a folder."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    family = import_family([src], project="fam")
    return family, write_refactored(family, tmp_path / "out")


# ----------------------------------------------------------------------------- dropping stages

def test_a_root_stage_whose_only_user_moved_into_a_base_is_dropped(tmp_path):
    """The issue's case: `FROM ubuntu AS default_root_image`, used only by a stage that now starts
    FROM a base, is not written; the stage the final one copies from is kept."""
    root = "FROM os AS default_root_image\nRUN setup\n"
    final = ("FROM os AS tool\nRUN make {a}\n"
             "FROM default_root_image AS run\nRUN more setup\nCOPY --from=tool /out /out\nCMD [\"{a}\"]\n")
    write(tmp_path, {"a/Dockerfile": root + final.format(a="a"), "b/Dockerfile": root + final.format(a="b")})
    family = import_family([tmp_path])
    for item in family.refactored:
        assert item.kept_stages() == [1, 2]
        text = app_dockerfile(item, family)
        assert [line.split()[-1] for line in stage_lines(text)] == ["tool", "run"]
        assert "default_root_image" not in text and "RUN setup" not in text
        assert item.bases == (family.bases[-1].name,)


def test_stage_numbers_in_from_flags_follow_the_dropped_stages(refactored):
    family, out = refactored
    b = (out / "apps/app-b/Dockerfile").read_text()
    assert "COPY --from=1 /src/APP.txt /app/APP.txt" in b         # was --from=2: stage 0 dropped
    assert [s.split()[-1] for s in stage_lines(b)] == ["runtime", "builder", "runtime"]
    a = (out / "apps/app-a/Dockerfile").read_text()
    assert "default_root_image" not in a and "COPY --from=builder" in a


def test_a_stage_used_only_by_a_mount_is_kept(tmp_path):
    files = {f"{x}/Dockerfile": f"FROM os AS deps\nRUN fetch {x}\n"
             "FROM os AS default_root_image\nRUN setup\nFROM default_root_image AS run\nRUN more\n"
             "RUN --mount=type=bind,from=deps,source=/d,target=/d --mount=type=cache,target=/c cp -r /d /app\n"
             for x in "ab"}
    write(tmp_path, files)
    family = import_family([tmp_path])
    for item in family.refactored:
        text = app_dockerfile(item, family)
        assert "FROM os AS deps" in text and "default_root_image" not in text
        assert item.kept_stages() == [0, 2]


def test_stage_references_and_renumbering_only_touch_flags():
    text = "RUN --mount=type=bind,from=0,target=/x --mount=type=cache,target=/c echo from=0"
    assert stage_references(text) == ["0"]
    assert renumber_stages(text, {0: 3}) == \
        "RUN --mount=type=bind,from=3,target=/x --mount=type=cache,target=/c echo from=0"
    assert renumber_stages("COPY --from=build /a /b", {0: 1}) == "COPY --from=build /a /b"
    assert stage_references("COPY --from=2 /a /b") == ["2"] and stage_references("RUN echo --from=2") == []


# ----------------------------------------------------------------------------- the bake file

def test_bake_file_targets_bases_and_apps_with_contexts(refactored):
    family, out = refactored
    text = (out / "docker-bake.hcl").read_text()
    runtime = next(b for b in family.bases if "runtime" in b.name)
    root = next(b for b in family.bases if b is not runtime)
    assert runtime.parent == root.name
    targets = [line.split('"')[1] for line in text.splitlines() if line.startswith("target ")]
    assert targets == [f"base_{root.name.split('/')[1]}", f"base_{runtime.name.split('/')[1]}", "app_app-a", "app_app-b"]
    app_a = text.split('target "app_app-a"')[1].split("\n}")[0]
    assert f'"{runtime.ref}" = "target:base_{runtime.name.split("/")[1]}"' in app_a
    # The original context and the Dockerfile here, relative (bake reads a dockerfile from its context).
    assert 'context    = "../src/app-a"' in app_a and 'dockerfile = "../../out/apps/app-a/Dockerfile"' in app_a
    base_rt = text.split(f'target "base_{runtime.name.split("/")[1]}"')[1].split("\n}")[0]
    assert f'"{root.ref}" = "target:base_{root.name.split("/")[1]}"' in base_rt
    assert 'dockerfile = "../Dockerfile"' in base_rt
    # Deterministic: the same family written again gives the same bytes.
    assert bake_file(family, out) == text


# ----------------------------------------------------------------------------- the folder as a plan

def test_import_folder_loads_as_a_plan_of_bases_and_apps(refactored):
    family, out = refactored
    loaded = load_family(out)
    assert isinstance(loaded, ImportedFamily) and isinstance(load_family(out / "import.json"), ImportedFamily)
    plan = family_plan(loaded)
    root, runtime, app_a, app_b = plan.images
    assert (root.kind, runtime.kind, app_a.kind, app_b.kind) == ("base", "base", "app", "app")
    assert root.parent is None and root.base == "localhost:5000/os/busybox:latest"
    assert runtime.parent == root.key and app_a.parent == app_b.parent == runtime.key
    assert (runtime.repository + ":" + runtime.tag) == family.bases[1].ref   # what the apps' FROM names
    assert plan.apps == {"app-a": "fam/app-a", "app-b": "fam/app-b"} and app_a.ref == "localhost:5000/fam/app-a:latest"
    # An app's steps are its final stage above its base: the builder stage makes no layer of it.
    assert [s.instruction for s in app_a.steps] == ["COPY --from=builder /src/APP.txt /app/APP.txt",
                                                    "COPY app.txt /app/app.txt", 'CMD ["cat", "/app/APP.txt"]']
    assert runtime.apps == ("app-a", "app-b") and {c.name for c in plan.categories} >= {"code", "config"}
    assert family_plan(load_family(out)).to_json() == plan.to_json()


def test_fingerprints_follow_context_files_and_parents(refactored, tmp_path):
    family, out = refactored
    before = {i.key: i.fingerprint for i in family_plan(load_family(out)).images}
    (tmp_path / "src/app-a/app.txt").write_text("changed\n")       # the builder stage of app-a reads it
    after = {i.key: i.fingerprint for i in family_plan(load_family(out)).images}
    assert [k for k in before if before[k] != after[k]] == ["fam/app-a"]
    (out / "bases" / family.bases[0].name.split("/")[1] / "Dockerfile").write_text(
        (out / "bases" / family.bases[0].name.split("/")[1] / "Dockerfile").read_text().replace("shared >", "sharing >"))
    again = {i.key: i.fingerprint for i in family_plan(load_family(out)).images}
    assert all(again[k] != after[k] for k in again)                 # the root base: everything above it
    digests = {i.key: i.fingerprint for i in family_plan(load_family(out),
                                                         digests={"localhost:5000/os/busybox:latest": "sha256:1"}).images}
    assert all(digests[k] != again[k] for k in digests)


def test_a_stack_file_loads_as_before():
    assert isinstance(load_family(SEED / "layerwise.yaml"), Stack) and isinstance(load_family(SEED), Stack)


def test_a_broken_import_folder_is_one_clear_error(refactored):
    _, out = refactored
    (out / "apps/app-a/Dockerfile").unlink()
    with pytest.raises(UserError, match="apps/app-a/Dockerfile is missing"):
        load_family(out)
    (out / "import.json").write_text("{}")
    r = run_cli("simulate", str(out), "--fleet", str(FIXTURE / "fleet.yaml"))
    assert r.returncode == 2 and "import.json" in r.stderr and "Traceback" not in r.stderr


def test_simulate_takes_an_import_folder(refactored):
    _, out = refactored
    r = run_cli("simulate", str(out), "--fleet", str(FIXTURE / "fleet.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    both = next(g for g in doc["groups"] if g["name"] == "both")
    # Two apps on one host: the shared bases are pulled once, so planned < flat.
    assert both["cold"]["planned"]["bytes"] < both["cold"]["flat"]["bytes"]


def test_an_app_needs_the_bases_its_other_stages_start_from(tmp_path):
    """The BuildKit fixture: the deps stage became a base of its own, read by the runtime stage
    through a mount. The app must wait for it, --only must bring it, and it changes the app."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURE.parent / "buildkit-family", src)
    for svc in ("svc-a", "svc-b"):
        (src / svc / "shared.bin").write_bytes(b"\0" * 1000)
    family = import_family([src], project="bk")
    out = write_refactored(family, tmp_path / "out")
    loaded = load_family(out)
    plan = family_plan(loaded)
    root, deps, runtime = (next(b.name for b in family.bases if word in b.name)
                           for word in ("default-root", "deps", "runtime"))
    assert plan.image("bk/svc-a").parent == runtime and plan.image(runtime).parent == root
    assert needed_images(plan, loaded, "bk/svc-a") == [runtime, deps]
    assert select(plan, ["svc-a"], loaded) == {root, runtime, deps, "bk/svc-a"}
    assert "default_root_image" not in (out / "apps/svc-a/Dockerfile").read_text()
    before = plan.image("bk/svc-a").fingerprint
    listed = out / "bases" / deps.split("/")[1] / "context/deps/list.txt"
    listed.write_text(listed.read_text() + "openssl\n")
    assert family_plan(load_family(out)).image("bk/svc-a").fingerprint != before


def test_plan_takes_an_import_folder(refactored):
    _, out = refactored
    r = run_cli("plan", str(out), "--json")
    assert r.returncode == 0, r.stderr
    images = json.loads(r.stdout)["plan"]["images"]
    assert [(i["kind"], i["parent"] is None) for i in images] == [("base", True), ("base", False),
                                                                   ("app", False), ("app", False)]


def test_a_family_imported_without_a_copied_file_is_refused_before_any_build(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "buildkit-family", src)   # no shared.bin in it
    out = tmp_path / "out"
    assert run_cli("import", str(src), "--refactor-to", str(out), "--project", "t").returncode == 0
    result = run_cli("build", str(out), "--builder", "buildkit", "--dry-run")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "Dockerfile:" in line and "copies shared.bin from a build context" in line
    assert "Traceback" not in result.stderr
