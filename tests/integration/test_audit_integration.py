"""`layerwise audit` findings: by hand on small layer sets, and for real on a flat vs a layered family."""
import json
import os

import pytest

from conftest import run_cli, two_app_stack


@pytest.mark.integration
def test_audit_flat_vs_layered_family(services, namespace, tmp_path):
    from layerwise.family.build import build_family
    from layerwise.measure.bench import build_flat
    from layerwise.plan.spec import load_stack

    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "big.bin").write_bytes(os.urandom(1_000_000))
    for n in (1, 2):
        (tmp_path / f"code{n}").mkdir()
        (tmp_path / f"code{n}" / "app.txt").write_text(f"app {n}\n")
    (tmp_path / "layerwise.yaml").write_text(two_app_stack(namespace, "COPY tools/ /opt/tools/", "COPY code1/ /srv/", "COPY code2/ /srv/"))
    stack = load_stack(tmp_path / "layerwise.yaml")
    plan, _, _ = build_family(stack, push=True)
    flat = build_flat(stack, plan, lambda line: None)
    layered = [plan.image(plan.apps[a]).ref for a in ("app1", "app2")]

    result = run_cli("audit", *flat.values(), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    dup = doc["same_files_other_digests"]
    # The flat apps' tools layers hold the same 1 MB of files under other diff_ids: pulled twice.
    assert any(g["file_bytes"] >= 1_000_000 and g["extra_bytes"] > 900_000 for g in dup), dup
    assert doc["sharing"][0]["layers"] == 1            # only the OS base is shared
    # The planner, fed these layers, finds the shared base (OS + tools) the flat apps should have.
    tree = doc["recommended_tree"]
    assert [(b["layers"], len(b["used_by"])) for b in tree["bases"]] == [(2, 2)]
    assert tree["cold_pull"] < doc["cold_pull"]["docker"] - 900_000
    assert tree["cold_pull_by_host"]["docker"]["today"] == doc["cold_pull"]["docker"]
    # The OS base changes: today each app rebuilds its own 1 MB tools layer; with the tree, one.
    update = tree["bases"][0]["update"]
    assert all(update[kind]["today"] - update[kind]["tree"] > 900_000 for kind in ("docker", "containerd")), update

    # CI gating: the flat family shares too little; the layered one passes; both write HTML.
    gated = run_cli("audit", *flat.values(), "--fail-under", "sharing=0.3", "--html", str(tmp_path / "a.html"))
    assert gated.returncode == 1 and "sharing is" in gated.stdout
    assert "<table>" in (tmp_path / "a.html").read_text()

    result = run_cli("audit", *layered, "--json", "--fail-under", "sharing=30%", "--html", str(tmp_path / "b.html"))
    assert result.returncode == 0, result.stdout[-2000:]
    doc = json.loads(result.stdout)
    assert doc["same_files_other_digests"] == [] and doc["recompressed"] == []
    assert doc["sharing"][0]["layers"] == 2             # the OS base and the tools image
    assert doc["cold_pull"]["docker"] == doc["cold_pull"]["floor"]
    # Already a tree: the recommended one saves nothing on the Docker Engine.
    tree = doc["recommended_tree"]
    assert tree["cold_pull_by_host"]["docker"] == {"today": doc["cold_pull"]["docker"], "tree": doc["cold_pull"]["docker"]}
    assert [b["update"]["docker"]["today"] - b["update"]["docker"]["tree"] for b in tree["bases"]] == [0]


def _build_and_push(client, ref: str, dockerfile: str) -> None:
    import io
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, network_mode="none",
                        nocache=True, rm=True)
    repo, tag = ref.rsplit(":", 1)
    for event in client.api.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
    client.images.remove(ref, force=True)


@pytest.mark.integration
def test_audit_finds_a_run_built_twice_a_recompressed_layer_and_waste(services, namespace):
    """Images built by the test and pushed to the real registry, one finding each."""
    import gzip
    import hashlib
    import time

    import docker

    from layerwise.oci.mediatypes import DOCKER_MANIFEST
    from layerwise.oci.registry import Registry

    client = docker.from_env(version="auto")
    base = "FROM localhost:5000/os/busybox:latest\n"
    run = "RUN mkdir -p /data && head -c 300000 /dev/zero | tr '\\\\0' x > /data/blob\n"
    one, two, waste = (f"localhost:5000/{namespace}/{n}:latest" for n in ("one", "two", "waste"))
    _build_and_push(client, one, base + run)
    time.sleep(1.1)   # the legacy builder stamps whole seconds: a second later, other bytes
    _build_and_push(client, two, base + run)
    _build_and_push(client, waste, base + "RUN head -c 200000 /dev/zero > /big\nRUN rm /big\n"
                                          "RUN echo a > /f\nRUN echo b > /f\n")

    # Push `one` again with its top layer recompressed: same diff_id, another blob digest.
    recompressed = f"localhost:5000/{namespace}/recompressed:latest"
    with Registry("localhost:5000") as reg:
        name = f"{namespace}/one"
        manifest = reg.manifest(name, "latest")
        top = manifest.layers[-1]
        raw_tar = gzip.decompress(reg.blob(name, top.digest))
        blob = gzip.compress(raw_tar, compresslevel=1, mtime=0)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        target = f"{namespace}/recompressed"
        for layer in manifest.layers[:-1]:
            assert reg.mount_blob(target, layer.digest, name)
        assert reg.mount_blob(target, manifest.config_digest, name)
        reg.upload_blob(target, digest, blob, len(blob))
        doc = json.loads(manifest.raw)
        doc["layers"][-1] = {**doc["layers"][-1], "digest": digest, "size": len(blob)}
        reg.put_manifest_bytes(target, "latest", json.dumps(doc).encode(), DOCKER_MANIFEST)

    result = run_cli("audit", one, two, recompressed, waste, "--json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    found = json.loads(result.stdout)
    # The same RUN built twice: other diff_ids (timestamps), the same files.
    same = [g for g in found["same_files_other_digests"] if g["file_bytes"] == 300000]
    assert len(same) == 1 and {one, two} <= set(same[0]["images"])
    # The recompressed push: one diff_id under two blob digests.
    assert [len(g["digests"]) for g in found["recompressed"]] == [2]
    # Whiteouts and overwrites: dive counts /big (200 kB, deleted) and /f (overwritten) as waste.
    eff = next(i for i in found["images"] if i["name"] == waste)["efficiency"]
    assert eff["wasted_bytes"] >= 200000 and eff["score"] < 0.95   # the 2 MB busybox base is the rest


@pytest.mark.integration
def test_audit_goes_on_past_a_missing_image(services, namespace, tmp_path):
    missing = f"localhost:5000/{namespace}/nothere:1"
    (tmp_path / "broken.tar").write_bytes(b"\x00" * 1024)
    result = run_cli("audit", missing, str(tmp_path / "broken.tar"), "localhost:5000/os/busybox:latest", "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    errors = {i["name"]: i["error"] for i in doc["images"]}
    assert missing in errors[missing] and errors[str(tmp_path / "broken.tar")]
    assert errors["localhost:5000/os/busybox:latest"] is None
    busybox = next(i for i in doc["images"] if i["name"].endswith("busybox:latest"))
    assert busybox["layers"] == 1 and busybox["efficiency"]["score"] > 0


def push_fake(reg, name: str, image, tag: str = "v1") -> str:
    """A hand-made image pushed to the real registry as it is, broken blobs included."""
    from layerwise.oci.mediatypes import DOCKER_MANIFEST
    for digest, data in image.blobs.items():
        reg.upload_blob(name, digest, data, len(data))
    reg.put_manifest_bytes(name, tag, image.manifest_raw, DOCKER_MANIFEST)
    return f"{reg.host}/{name}:{tag}"


def fake_layout(root, image, media_type: str | None = None):
    """An OCI layout folder holding a hand-made image; `media_type` overrides the manifest's."""
    from conftest import write_blob
    for data in image.blobs.values():
        write_blob(root, data)
    doc = dict(image.manifest, mediaType=media_type or image.manifest["mediaType"])
    raw = json.dumps(doc).encode()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": doc["mediaType"], "digest": write_blob(root, raw), "size": len(raw)}]}))
    return root


def flaky_registry(serve, image, fail_first: int = 0, layers_down: bool = False):
    """A loopback registry serving `image` (any name, tag v1) that answers HTTP 500 to its first
    `fail_first` manifest and blob requests, then recovers; with `layers_down`, to every layer request.
    Returns the server and the failures still to come."""
    from conftest import registry_app
    from layerwise.oci.mediatypes import DOCKER_MANIFEST

    inner = registry_app({"v1": (image.manifest_raw, DOCKER_MANIFEST)}, dict(image.blobs))
    left = {"manifests": fail_first, "blobs": fail_first}

    def handle(method, path, query, headers):
        kind = next((k for k in left if f"/{k}/" in path), None)
        if layers_down and kind == "blobs" and not path.endswith(image.manifest["config"]["digest"]):
            return 500, {}, b"down"
        if kind and left[kind] > 0:
            left[kind] -= 1
            return 500, {}, b"try again"
        return inner(method, path, query, headers)

    return serve(handle), left


def bad_and_good_images(namespace: str, serve, tmp_path) -> tuple[dict[str, list[str]], list[str], dict]:
    """Every kind of bad input the issue names, made by hand: registry images (on the real registry,
    broken blobs pushed as they are), OCI layouts, a docker save archive, loopback registries that
    fail. Returns {spec: words its error must hold}, the specs that must be audited, and the failures
    the recovering registry has still to give (none once it was read)."""
    import gzip
    import tarfile
    import uuid

    from conftest import FakeImage, legacy_archive
    from layerwise.oci.registry import Registry

    mark = uuid.uuid4().hex.encode()          # content of this run's own: no layer answered from a cache
    files = lambda n: {f"data/{n}.txt": mark + n.encode() * 5000}
    gz = lambda t: gzip.compress(t, mtime=0)
    flip = lambda b, at: b[:at] + bytes([b[at] ^ 0xFF]) + b[at + 1:]
    with Registry("localhost:5000") as reg:
        good = push_fake(reg, f"{namespace}/good", FakeImage(files("base"), files("good")))
        truncated = push_fake(reg, f"{namespace}/truncated", FakeImage(files("t"), blob=lambda t: gz(t)[:-30]))
        corrupted = push_fake(reg, f"{namespace}/corrupted",
                              FakeImage(files("c"), blob=lambda t: flip(gz(t), len(gz(t)) // 2)))
        hostile = push_fake(reg, f"{namespace}/hostile",
                            FakeImage({"ok.txt": mark, "../x": b"out", "/etc/abs": b"abs"}))
    # An OCI layout whose layer blob is not the one its digest names: the gzip header's mtime changed,
    # so it still decompresses to the same tar, and only the digest tells.
    mismatch = fake_layout(tmp_path / "mismatch", FakeImage(files("m")))
    blob = next(p for p in (mismatch / "blobs" / "sha256").iterdir() if p.read_bytes()[:2] == b"\x1f\x8b")
    blob.write_bytes(flip(blob.read_bytes(), 4))
    unknown = fake_layout(tmp_path / "unknown", FakeImage(files("u")), "application/vnd.example.thing.v1+json")
    # A docker save archive whose second layer is not in it.
    saved_image, saved_name = FakeImage(files("s1"), files("s2")), ["localhost:5000/t/saved:v1"]
    with tarfile.open(legacy_archive(tmp_path / "full.tar", [(saved_name, saved_image)])) as tar:
        second = [m.name for m in tar if m.name.endswith("layer.tar")][1]
    saved = legacy_archive(tmp_path / "saved.tar", [(saved_name, saved_image)], drop={second})
    front, left = flaky_registry(serve, FakeImage(files("f")), fail_first=2)
    down = flaky_registry(serve, FakeImage(files("d")), layers_down=True)[0]
    bad = {truncated: ["layer 1/1 (sha256:", "gzip stream is truncated"],
           corrupted: ["layer 1/1 (sha256:", "corrupted gzip stream"],
           f"localhost:5000/{namespace}/nothere:v1": ["is not in the registry"],
           str(mismatch): ["layer 1/1 (sha256:", "does not match its digest"],
           str(unknown): ["unknown media type 'application/vnd.example.thing.v1+json'"],
           str(saved): [f"layer 2/2 ({second}, diff_id sha256:", "is missing from"],
           f"{down.host}/team/down:v1": ["layer 1/1 (sha256:", "HTTP 500"]}
    return bad, [good, hostile, f"{front.host}/team/flaky:v1"], left


@pytest.mark.integration
def test_audit_of_bad_images_beside_good_ones(services, namespace, serve, tmp_path):
    """Every kind of bad input in one `layerwise audit` run, beside images that are fine: one line
    naming the image and the layer for each, the good ones audited, exit 1, the JSON and the HTML whole."""
    bad, fine, left = bad_and_good_images(namespace, serve, tmp_path)
    good, hostile, recovering = fine
    html = tmp_path / "out" / "audit.html"
    html.parent.mkdir()
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = run_cli("audit", good, *bad, hostile, recovering, "--json", "--html", str(html), env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    doc = json.loads(result.stdout)                                   # whole, parseable JSON
    by_name = {i["name"]: i for i in doc["images"]}
    assert list(by_name) == [good, *bad, hostile, recovering]         # every image, in the order given
    errors = [line for line in result.stderr.splitlines() if line.startswith("layerwise: error: ")]
    for spec, words in bad.items():
        error = by_name[spec]["error"]
        assert error and spec in error and all(w in error for w in words), (spec, error)
        assert f"layerwise: error: {error}" in errors                 # one line each, naming image and layer
    assert len(errors) == len(bad)
    # The path traversal: reported (not followed, not indexed), naming image and layer; the rest audited.
    problems = by_name[hostile]["problems"]
    assert [p["problem"] for p in problems] == ["'../x' escapes the layer root: not indexed",
                                                "'/etc/abs' is absolute: not indexed"]
    assert all(p["layer"] == 1 and p["digest"].startswith("sha256:") for p in problems)
    assert f"layer 1/1 ({problems[0]['digest']}) of image {hostile}: '../x' escapes" in result.stderr
    # The good images, the hostile one and the registry that recovered are audited.
    assert left == {"manifests": 0, "blobs": 0}                       # the 500s were answered, then retried
    for spec in fine:
        assert by_name[spec]["error"] is None and by_name[spec]["efficiency"]["score"] == 1.0, by_name[spec]
    assert by_name[good]["layers"] == 2 and by_name[hostile]["layers"] == by_name[recovering]["layers"] == 1
    assert sorted((r["a"], r["b"]) for r in doc["sharing"]) == sorted(
        (a, b) for i, a in enumerate(fine) for b in fine[i + 1:])     # the findings cover exactly those
    # The HTML report is whole, names the failures, and nothing is left beside it.
    page = html.read_text()
    assert page.endswith("</html>\n") and "gzip stream is truncated" in page and "escapes the layer root" in page
    assert [p.name for p in html.parent.iterdir()] == ["audit.html"]

    # In a terminal's form, hostile paths alone: a table of them, a warning line each, and exit 1
    # (the findings leave those entries out); the same good image alone: exit 0.
    result = run_cli("audit", good, hostile, env=env)
    assert result.returncode == 1 and "entries reported, not indexed" in result.stdout and "'../x'" in result.stdout
    assert [line[:len("layerwise: warning: ")] for line in result.stderr.splitlines()] == ["layerwise: warning: "] * 2
    result = run_cli("audit", good, env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
