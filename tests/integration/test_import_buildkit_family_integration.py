"""Issue 10's multi-stage family end to end: Dockerfiles using `RUN --mount=type=bind,from=…` and
`--mount=type=cache`, imported, refactored, built with BuildKit and pushed, verified equivalent to
the originals, then pulled on the bench hosts (a Docker Engine host and a containerd host).

Needs BuildKit in `layerwise build` (`--builder buildkit`); the legacy builder refuses `--mount`.
The bench part starts its own dockerd and containerd (machine-wide fixed folders): run it alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parents[1] / "fixtures" / "buildkit-family"
SHARED_BYTES = 1_500_000


def test_buildkit_family_import_build_push_verify_and_pull(services, namespace, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    shared = os.urandom(SHARED_BYTES)           # the same heavy file in both services' root stage
    for svc in ("svc-a", "svc-b"):
        (src / svc / "shared.bin").write_bytes(shared)
    out = tmp_path / "family"

    r = run_cli("import", str(src), "--refactor-to", str(out), "--project", namespace, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["bases"]) == 3 and all(b["used_by"] == ["svc-a", "svc-b"] for b in doc["bases"])
    for svc in ("svc-a", "svc-b"):
        text = (out / "apps" / svc / "Dockerfile").read_text()
        assert "default_root_image" not in text                 # its only user now starts FROM a base
        assert "--mount=type=bind,from=deps" in text and "--mount=type=cache" in text
    bake = (out / "docker-bake.hcl").read_text()
    assert bake.count('= "target:base_') == 5                    # runtime's parent; each app's runtime and deps

    built = run_cli("build", str(out), "--builder", "buildkit", "--push", "--json")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert json.loads(built.stdout)["counts"]["built"] == 5
    again = run_cli("build", str(out), "--builder", "buildkit", "--push", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"]["skipped"] == 5

    verified = run_cli("verify", "--against", str(out), "--no-cache", "--json")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    assert [a["verdict"] for a in json.loads(verified.stdout)["apps"]] == ["equivalent", "equivalent"]

    if os.geteuid() != 0:
        pytest.skip("the bench starts its own dockerd and containerd: needs root")
    pulled = run_cli("bench", "pull", str(out), "--host-kind", "both", "--no-updates", "--bandwidth", "100Mbit",
                     "-o", str(tmp_path / "bench"), "--json")
    assert pulled.returncode == 0, pulled.stdout[-3000:] + pulled.stderr[-3000:]
    cases = {(c["host_kind"], c["variant"], c["case"]): c for c in json.loads(pulled.stdout)["cases"]}
    for kind in ("docker", "containerd"):
        warm = cases[(kind, "layered", "warm svc-b (has svc-a)")]
        flat_warm = cases[(kind, "flat", "warm svc-b (has svc-a)")]
        cold = cases[(kind, "layered", "cold svc-b")]
        # svc-b on a host that has svc-a: layered, the shared bases (the heavy file) are not pulled
        # again; flat (the originals, built apart), they are.
        assert warm["measured_bytes"] < 0.2 * cold["measured_bytes"]
        assert flat_warm["measured_bytes"] > SHARED_BYTES
        for c in (warm, flat_warm, cold):
            assert abs(c["error"]) < 0.01, c
