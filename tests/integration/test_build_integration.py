"""`layerwise build --push` against the real Docker Engine and registry (scripts/services)."""

import json

import pytest

from conftest import REGISTRY, run_cli, two_app_stack
from layerwise.oci.images import RegistryImage
from layerwise.oci.registry import Registry

pytestmark = pytest.mark.integration


def build(stack, *extra):
    result = run_cli("build", str(stack), "--push", "--json", *extra)
    assert "Traceback" not in result.stderr, result.stderr
    doc = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, doc


def statuses(doc):
    return {i["key"]: i["status"] for i in doc["images"]}


@pytest.fixture
def seed_family(services, small_seed, namespace):
    """The seed example (1 MiB model) under a registry namespace of its own."""
    text = small_seed.read_text().replace("project: ai", f"project: {namespace}-ai")
    for name in ("library/", "ai-tools/"):
        text = text.replace("{name: " + name, "{name: " + namespace + "/" + name)
    small_seed.write_text(text)
    return small_seed, namespace


def test_seed_family_builds_shares_layers_and_rebuilds_exactly_what_changed(seed_family):
    stack, ns = seed_family
    keys = {"sec": f"{ns}/library/python3", "tools": f"{ns}/ai-tools/env-anaconda",
            "dust": f"{ns}/ai-tools/env-anaconda-dust", "app1": f"{ns}-ai/app1", "app2": f"{ns}-ai/app2"}

    result, doc = build(stack)
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(doc) == {k: "built" for k in keys.values()}

    with Registry(REGISTRY) as reg:
        dust, app1, app2 = (RegistryImage(f"{REGISTRY}/{keys[k]}:{tag}", registry=reg)
                            for k, tag in (("dust", "runtime"), ("app1", "latest"), ("app2", "latest")))
        # Both apps carry every base layer, same digests, same order; then 2 layers of their own.
        n = len(dust.layers)
        assert [l.digest for l in app1.layers[:n]] == [l.digest for l in dust.layers]
        assert [l.digest for l in app2.layers[:n]] == [l.digest for l in dust.layers]
        assert len(app1.layers) == len(app2.layers) == n + 2
        assert app1.layers[n].digest != app2.layers[n].digest
        # Provenance labels name the parent and its pushed digest; tags agree.
        labels = app1.config["config"]["Labels"]
        assert labels["org.opencontainers.image.base.name"] == f"{REGISTRY}/{keys['dust']}:runtime"
        assert labels["org.opencontainers.image.base.digest"] == dust.manifest_digest
        fp_tag = "lw-" + labels["io.layerwise.fingerprint"][:16]
        assert reg.manifest_digest(keys["app1"], fp_tag) == app1.manifest_digest
        assert reg.manifest_digest(keys["tools"], "12") is not None

    # State file has measured sizes, compressed and uncompressed (the tar each blob unpacks to, as a
    # host reads it); plan uses them.
    from layerwise.family.state import load_state
    from layerwise.measure.bench import uncompressed_sizes
    with Registry(REGISTRY) as reg:
        truth = uncompressed_sizes(reg, [f"{REGISTRY}/{keys['app1']}:latest", f"{REGISTRY}/{keys['app2']}:latest"])
    recorded = load_state(stack).unpacked_sizes()
    assert recorded and all(truth[digest] == size for digest, size in recorded.items())
    plan = json.loads(run_cli("plan", str(stack), "--json").stdout)
    layers = [s for i in plan["plan"]["images"] for s in i["steps"] if s["creates_layer"]]
    assert {s["size_source"] for s in layers} == {"measured"}
    by_step = load_state(stack).measured_sizes()        # step -> (compressed, uncompressed)
    assert sorted(s["unpacked_size"] for s in layers) == sorted(u for _, u in by_step.values())

    result, doc = build(stack)
    assert result.returncode == 0 and statuses(doc) == {k: "skipped" for k in keys.values()}

    (stack.parent / "code.1" / "app.py").write_text("print('app1 v2')\n")
    result, doc = build(stack)
    assert statuses(doc) == {keys["sec"]: "skipped", keys["tools"]: "skipped", keys["dust"]: "skipped",
                             keys["app1"]: "built", keys["app2"]: "skipped"}
    assert next(i for i in doc["images"] if i["key"] == keys["app1"])["reason"] == "code of app1 changed"

    with open(stack.parent / "tools" / "setup.sh", "a") as f:
        f.write("echo tools v2\n")
    result, doc = build(stack)
    assert result.returncode == 0, result.stdout
    assert statuses(doc) == {keys["sec"]: "skipped", keys["tools"]: "built", keys["dust"]: "built",
                             keys["app1"]: "built", keys["app2"]: "built"}
    reasons = {i["key"]: i["reason"] for i in doc["images"]}
    assert reasons[keys["tools"]] == "tools of env-anaconda changed"
    assert reasons[keys["dust"]] == "parent env-anaconda rebuilt"


def busybox_stack(ns: str, base: str, code2) -> str:
    return two_app_stack(ns, ["RUN mkdir -p /opt/t", "RUN echo tools > /opt/t/v"], "RUN echo one > /app", code2, base)


def test_failure_stops_only_its_subtree_and_a_rerun_resumes(services, namespace, write_stack):
    base = f"{REGISTRY}/os/busybox:latest"
    stack = write_stack(busybox_stack(namespace, base, "RUN exit 3"))
    result, doc = build(stack)
    assert result.returncode == 1
    assert statuses(doc)[f"{namespace}/app1"] == "built"
    assert statuses(doc)[f"{namespace}/app2"] == "failed"
    with Registry(REGISTRY) as reg:
        assert reg.manifest_digest(f"{namespace}/app1", "latest") is not None
        assert reg.manifest_digest(f"{namespace}/app2", "latest") is None

    stack.write_text(busybox_stack(namespace, base, "RUN echo two > /app"))
    result, doc = build(stack)
    assert result.returncode == 0, result.stdout
    assert [s for k, s in statuses(doc).items() if s == "built"] == ["built"]
    assert statuses(doc)[f"{namespace}/app2"] == "built"


def test_missing_base_is_a_clear_error_before_any_build(services, namespace, write_stack):
    stack = write_stack(busybox_stack(namespace, f"{REGISTRY}/os/nothere:1", "RUN echo two > /app"))
    result = run_cli("build", str(stack), "--push")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("base image localhost:5000/os/nothere:1 is not in the local engine, and localhost:5000 does "
            "not have it") in result.stderr
    with Registry(REGISTRY) as reg:
        assert reg.manifest_digest(f"{namespace}/app1", "latest") is None


def test_dry_run_builds_nothing(services, namespace, write_stack):
    stack = write_stack(busybox_stack(namespace, f"{REGISTRY}/os/busybox:latest", "RUN echo two > /app"))
    result = run_cli("build", str(stack), "--push", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("not built before") == 3
    with Registry(REGISTRY) as reg:
        assert reg.manifest_digest(f"{namespace}/app1", "latest") is None


def test_identical_content_built_twice_gets_identical_digests(services, write_stack, tmp_path):
    """Two separate builds (other names, no build cache) of the same steps push the same layer
    blobs: layerwise normalizes timestamps, so identical content is shared, unlike the seed's Fig. 5."""
    import uuid
    files = {"code/app.sh": "echo hello\n", "etc/app.conf": "mode=1\n"}
    digests = []
    for run in range(2):
        ns = "t" + uuid.uuid4().hex[:10]
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        for rel, content in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(content)
        (folder / "layerwise.yaml").write_text(busybox_stack(
            ns, f"{REGISTRY}/os/busybox:latest",
            ["COPY code/ /srv/code/", "COPY etc/app.conf /etc/app/app.conf", "RUN cat /proc/sys/kernel/random/uuid > /built-id"]))
        result = run_cli("build", str(folder / "layerwise.yaml"), "--push", "--no-cache", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        with RegistryImage(f"{REGISTRY}/{ns}/app2:latest") as app2:
            digests.append([l.digest for l in app2.layers])
    # Same COPY layers, and the same RUN layers where the command writes the same bytes;
    # the last RUN writes a random id, so that layer differs: content, not timestamps.
    assert digests[0][:-1] == digests[1][:-1]
    assert digests[0][-1] != digests[1][-1]


def test_registry_down_is_one_clear_error(services, namespace, write_stack):
    text = busybox_stack(namespace, f"{REGISTRY}/os/busybox:latest", "RUN echo two > /app")
    stack = write_stack(text.replace("registry: localhost:5000", "registry: localhost:5999"))
    result = run_cli("build", str(stack), "--push")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "registry localhost:5999 is not answering" in result.stderr
