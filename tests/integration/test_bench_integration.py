"""`layerwise bench pull` for real: a small family on both host kinds through a throttled link."""

import json
import os
import statistics

import pytest

from conftest import run_cli

pytestmark = pytest.mark.integration

STACK = """\
registry: localhost:5000
project: {ns}
base: localhost:5000/os/busybox:latest
categories:
  - {{name: tools, owner: platform, changes_per_month: 1}}
  - {{name: code, owner: apps, changes_per_month: 20}}
apps:
  app1: {{tools: COPY tools/ /opt/tools/, code: COPY code1/ /srv/}}
  app2: {{tools: COPY tools/ /opt/tools/, code: COPY code2/ /srv/}}
"""


@pytest.fixture
def family(services, namespace, tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "big.bin").write_bytes(os.urandom(3_000_000))
    for n in (1, 2):
        (tmp_path / f"code{n}").mkdir()
        (tmp_path / f"code{n}" / "app.bin").write_bytes(os.urandom(200_000))
    (tmp_path / "layerwise.yaml").write_text(STACK.format(ns=namespace))
    return tmp_path / "layerwise.yaml"


def test_bench_pull_measures_both_host_kinds_and_the_model_predicts_it(family, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the bench starts its own dockerd and containerd: needs root")
    out = tmp_path / "results"
    result = run_cli("bench", "pull", str(family), "--bandwidth", "40Mbit", "-o", str(out), "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads(result.stdout)
    cases = {(c["host_kind"], c["variant"], c["case"]): c for c in doc["cases"]}
    for kind in ("docker", "containerd"):
        cold = cases[(kind, "layered", "cold app2")]
        warm = cases[(kind, "layered", "warm app2 (has app1)")]
        flat_cold = cases[(kind, "flat", "cold app2")]
        flat_warm = cases[(kind, "flat", "warm app2 (has app1)")]
        # Layered: the host that has app1 fetches only app2's own layer (and manifest, config).
        assert warm["layers"] == 1
        assert warm["measured_bytes"] < 0.2 * cold["measured_bytes"]
        # Flat: app2's own build shares nothing with app1's but the OS base, so its tools (3 MB of
        # random bytes, the same files as app1's) and code come again.
        assert flat_warm["layers"] == 2 and flat_warm["measured_bytes"] > 3_000_000
        assert flat_cold["layers"] == 3
        for c in doc["cases"]:
            assert abs(c["error"]) < 0.01, c
    # A change at the bottom: the Docker Engine re-pulls everything above it; containerd only
    # what changed, because layerwise's layers are reproducible.
    docker_tools = cases[("docker", "layered", "update tools")]
    containerd_tools = cases[("containerd", "layered", "update tools")]
    assert docker_tools["layers"] == 3 and containerd_tools["layers"] == 1
    assert containerd_tools["measured_bytes"] < docker_tools["measured_bytes"]
    assert containerd_tools["measured_bytes"] >= containerd_tools["changed_bytes"]
    assert {p.name for p in out.iterdir()} >= {"bench-pull.txt", "bench-pull.json", "bench-pull.svg"}
    assert "warm pull" in (out / "bench-pull.txt").read_text()
    # Every kind either measured or said why not; every case the median of 3 runs (9 where the first
    # 3 gave less than a second), with the fitted time model's seconds and the unpack rate fitted
    # per kind.
    kinds = {c["host_kind"] for c in doc["cases"]}
    assert kinds | set(doc["not_run"]) == {"docker", "docker-containerd", "containerd"}
    for c in doc["cases"]:
        assert len(c["runs"]) == 3 or (len(c["runs"]) == 9 and statistics.median(c["runs"][:3]) < 1.0), c
        assert c["seconds"] == statistics.median(c["runs"]) and c["predicted_seconds"] >= 0
        assert len(c["stages"]) == len(c["pulls"])        # the time model's layers, per image pulled
    # The floor of each update, pulled for real: the changed layers alone, on a cold host; what any
    # scheme must move, so never more than the update itself, and its seconds in the goal figures.
    for kind in kinds:
        update, floor = cases[(kind, "layered", "update tools")], cases[(kind, "layered", "floor tools")]
        layer_bytes = sum(d for stage in floor["stages"] for d, _, _ in stage)
        assert layer_bytes == update["changed_bytes"]
        assert floor["measured_bytes"] <= update["measured_bytes"]
        goal = doc["goals"][kind]["stack"]["monthly_seconds"]
        assert goal["floor_measured"] > 0 and goal["floor_predicted"] > 0
    assert set(doc["engine_costs"]) == kinds
    assert all({"unpack_rate", "inflate_rate"} <= set(v) for v in doc["engine_costs"].values())
    # Per layer: bytes downloaded, unpacked (None: its chain held) and, of those, inflated.
    layers = [layer for c in doc["cases"] for stage in c["stages"] for layer in stage]
    assert all(u is None and k == 0 or 0 <= k <= u for _, u, k in layers)
    # The unpacked bytes: a containerd host that holds everything but the updated tools layer still
    # unpacks the code layer above it (its chain changed).
    assert containerd_tools["unpacked_bytes"] > 3_000_000 + 200_000


def test_updated_stack_changes_only_the_copy(small_seed, tmp_path):
    """The update variants are hard-linked copies: changing them must never touch the original."""
    import hashlib

    from layerwise.measure.bench import updated_stack
    from layerwise.plan.spec import load_stack

    def digest(folder):
        return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = digest(small_seed.parent)
    stack = load_stack(small_seed)
    for category in ("security", "model", "config"):
        path = updated_stack(stack, category, tmp_path / f"upd-{category}")
        assert load_stack(path).project == f"ai-upd-{category}"
    assert digest(small_seed.parent) == before
    copy = tmp_path / "upd-model"
    assert (copy / "models/dust.model").stat().st_size > (small_seed.parent / "models/dust.model").stat().st_size
    assert (tmp_path / "upd-security/security/layerwise-update.txt").exists()
