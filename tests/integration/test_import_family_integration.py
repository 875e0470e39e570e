"""An imported multi-stage family built and pushed as a family, on the real engine and registry:
import → refactor → `layerwise build DIR --push` → a no-op rebuild → a change rebuilds one app →
`verify` proves the refactored images equal to the originals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import REGISTRY, run_cli

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parents[1] / "fixtures" / "multistage"


def manifest(name: str, tag: str) -> dict:
    r = httpx.get(f"http://{REGISTRY}/v2/{name}/manifests/{tag}",
                  headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    r.raise_for_status()
    return r.json() | {"digest": r.headers["Docker-Content-Digest"]}


def test_imported_family_builds_pushes_incrementally_and_verifies(services, namespace, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    out = tmp_path / "family"
    r = run_cli("import", str(src), "--refactor-to", str(out), "--project", namespace, "--json")
    assert r.returncode == 0, r.stderr
    assert (out / "docker-bake.hcl").is_file()
    assert "default_root_image" not in (out / "apps/app-a/Dockerfile").read_text()

    dry = run_cli("build", str(out), "--push", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [d["action"] for d in json.loads(dry.stdout)] == ["build"] * 4

    first = run_cli("build", str(out), "--push", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    doc = json.loads(first.stdout)
    assert doc["counts"]["built"] == 4
    by_key = {i["key"]: i for i in doc["images"]}
    # Pushed by digest, then tagged: the human tags point at the manifests the build reported.
    app_a = manifest(f"{namespace}/app-a", "latest")
    assert app_a["digest"] == by_key[f"{namespace}/app-a"]["digest"]
    imported = json.loads((out / "import.json").read_text())
    runtime = next(b for b in imported["bases"] if "runtime" in b["name"])
    name, tag = runtime["ref"].split("/", 1)[1].rsplit(":", 1)
    base = manifest(name, tag)
    # The app sits on its base: the base's layers are the app's lower layers, same blobs.
    assert [l["digest"] for l in app_a["layers"][:len(base["layers"])]] == [l["digest"] for l in base["layers"]]
    assert len(app_a["layers"]) == len(base["layers"]) + 2        # two COPYs of the final stage
    state = json.loads((out / "layerwise.state.json").read_text())
    assert all(rec["layers"] for rec in state["images"].values())  # measured sizes for simulate and bench

    again = run_cli("build", str(out), "--push", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"] == {"built": 0, "skipped": 4, "failed": 0, "not attempted": 0,
                                                  "not selected": 0}

    # A file only app-b's build reads changes: app-b alone is rebuilt; --only keeps app-a out.
    (src / "app-b/app.txt").write_text("hello again from app b\n")
    changed = run_cli("build", str(out), "--push", "--only", "app-b", "--json")
    assert changed.returncode == 0, changed.stderr
    status = {i["key"]: i["status"] for i in json.loads(changed.stdout)["images"]}
    assert status == {runtime["name"]: "skipped", imported["bases"][0]["name"]: "skipped",
                      f"{namespace}/app-b": "built", f"{namespace}/app-a": "not selected"}

    verified = run_cli("verify", "--against", str(out), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert all(a["equivalent"] for a in json.loads(verified.stdout)["apps"])

    # bench pull's flat variant of an import folder: each original built alone and pushed by the
    # engine. It shares nothing with the layered family but the busybox layers.
    from layerwise.family.loader import family_plan, load_family
    from layerwise.measure.bench import build_flat

    family = load_family(out)
    refs = build_flat(family, family_plan(family), say=lambda line: None)
    assert refs == {app: f"{REGISTRY}/{namespace}-flat/{app}:latest" for app in ("app-a", "app-b")}
    busybox = {l["digest"] for l in manifest("os/busybox", "latest")["layers"]}
    flat_a = {l["digest"] for l in manifest(f"{namespace}-flat/app-a", "latest")["layers"]}
    layered_a = {l["digest"] for l in manifest(f"{namespace}/app-a", "latest")["layers"]}
    assert flat_a & layered_a == busybox and len(flat_a) == len(layered_a)
