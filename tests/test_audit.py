"""`layerwise audit` findings: by hand on small layer sets, and for real on a flat vs a layered family."""

import json
import os

import pytest

from layerwise.audit import AuditedImage, cold_pull, recompressed, same_files, sharing_matrix
from layerwise.images import LayerRef
from layerwise.layerindex import Entry, LayerIndex

from conftest import run_cli


def layer(name: str, files: dict[str, str], size: int, digest: str | None = None):
    entries = tuple(Entry(path=p, type="file", mode=0o644, uid=0, gid=0, size=len(c), sha256=c * 8, link="")
                    for p, c in sorted(files.items()))
    diff_id = "sha256:" + name.ljust(64, "0")
    index = LayerIndex(diff_id=diff_id, digest=digest or diff_id, compressed_size=size,
                       size=size, entries=entries, problems=(), compression="gzip")
    return LayerRef(digest=digest or ("sha256:" + name.ljust(64, "1")), diff_id=diff_id, size=size,
                    media_type="application/vnd.docker.image.rootfs.diff.tar.gzip"), index


def image(name, *layers):
    return AuditedImage(name, [l for l, _ in layers], [i for _, i in layers])


def test_findings_by_hand():
    base = layer("base", {"bin/sh": "a"}, 100)
    tools_a = layer("toolsa", {"opt/t": "b"}, 50)          # the same files built twice:
    tools_b = layer("toolsb", {"opt/t": "b"}, 60)          # other diff_ids, a host pulls both
    code_a, code_b = layer("codea", {"srv/a": "c"}, 5), layer("codeb", {"srv/b": "d"}, 7)
    recompressed_base = (LayerRef(digest="sha256:" + "9" * 64, diff_id=base[0].diff_id, size=90,
                                  media_type=base[0].media_type), base[1])
    a = image("a", base, tools_a, code_a)
    b = image("b", base, tools_b, code_b)
    c = image("c", recompressed_base)
    assert sharing_matrix([a, b]) == [{"a": "a", "b": "b", "layers": 1, "bytes": 100}]
    dup = same_files([a, b])
    assert len(dup) == 1 and dup[0]["extra_bytes"] == 60 and dup[0]["images"] == ["a", "b"]
    rec = recompressed([a, c])
    assert rec == [{"diff_id": base[0].diff_id, "digests": sorted([base[0].digest, "sha256:" + "9" * 64]),
                    "extra_bytes": 100}]   # a host pulls both where the 90-byte one would do
    # Docker Engine: same diff_id chain → reused even when recompressed; containerd: every blob.
    assert cold_pull([a, b, c]) == {"docker": 100 + 50 + 5 + 60 + 7, "containerd": 100 + 50 + 5 + 60 + 7 + 90,
                                    "floor": 90 + 50 + 5 + 7}



STACK = """\
registry: localhost:5000
project: {ns}
base: localhost:5000/os/busybox:latest
categories:
  - {{name: tools, owner: platform}}
  - {{name: code, owner: apps}}
apps:
  app1: {{tools: COPY tools/ /opt/tools/, code: COPY code1/ /srv/}}
  app2: {{tools: COPY tools/ /opt/tools/, code: COPY code2/ /srv/}}
"""


@pytest.mark.integration
def test_audit_flat_vs_layered_family(services, namespace, tmp_path):
    from layerwise.bench import build_flat
    from layerwise.build import build_family
    from layerwise.spec import load_stack

    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "big.bin").write_bytes(os.urandom(1_000_000))
    for n in (1, 2):
        (tmp_path / f"code{n}").mkdir()
        (tmp_path / f"code{n}" / "app.txt").write_text(f"app {n}\n")
    (tmp_path / "layerwise.yaml").write_text(STACK.format(ns=namespace))
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


def test_audit_reports_a_bad_image_and_goes_on(tmp_path):
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all")
    result = run_cli("audit", str(tmp_path / "broken.tar"), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["images"][0]["error"]


def test_recommended_tree_by_hand():
    from layerwise.audit import recommended_tree
    base = layer("base", {"bin/sh": "a"}, 100)
    tools_a, tools_b = layer("toolsa", {"opt/t": "b"}, 50), layer("toolsb", {"opt/t": "b"}, 60)
    code_a, code_b = layer("codea", {"srv/a": "c"}, 5), layer("codeb", {"srv/b": "d"}, 7)
    a = image("a", base, tools_a, code_a)
    b = image("b", base, tools_b, code_b)
    a.made_by = b.made_by = ["", "COPY dir:x in /opt/", ""]
    tree = recommended_tree([a, b])
    # Base and the equal COPY become one shared image; each app keeps its code layer.
    assert tree["bases"] == [{"layers": 2, "bytes": 150, "used_by": ["a", "b"]}]
    assert tree["cold_pull"] == 100 + 50 + 5 + 7


def test_fail_under_gates():
    from layerwise.audit import check_gates, parse_gates
    from layerwise.errors import UserError
    doc = {"images": [{"name": "a", "bytes": 100, "error": None, "efficiency": {"score": 0.8, "wasted_bytes": 5}},
                      {"name": "b", "bytes": 100, "error": None, "efficiency": {"score": 0.99, "wasted_bytes": 0}}],
           "cold_pull": {"docker": 150}}
    assert parse_gates(["efficiency=90%", "sharing=0.2"]) == {"efficiency": 0.9, "sharing": 0.2}
    failed = check_gates(doc, {"efficiency": 0.9, "sharing": 0.3})
    assert failed == ["efficiency of a is 80.0%, under 90.0%", "sharing is 25.0%, under 30.0%"]
    assert check_gates(doc, {"efficiency": 0.5, "sharing": 0.25}) == []
    for bad in ("speed=1", "sharing=lots", "sharing=2"):
        with pytest.raises(UserError):
            parse_gates([bad])


def test_near_identical_and_duplicated_files_by_hand():
    from layerwise.audit import duplicated_files, near_identical
    base = layer("base", {"bin/sh": "a"}, 100)
    # The same step built twice: 3 files equal, one (a timestamped .pyc) differs.
    run_a = layer("runa", {"lib/x.so": "s" * 90, "lib/y.so": "t" * 5, "lib/z.pyc": "p1"}, 40)
    run_b = layer("runb", {"lib/x.so": "s" * 90, "lib/y.so": "t" * 5, "lib/z.pyc": "p2"}, 41)
    a, b = image("a", base, run_a), image("b", base, run_b)
    near = near_identical([a, b])
    assert len(near) == 1
    assert near[0]["differing_files"] == 1 and near[0]["examples"] == ["lib/z.pyc"]
    assert near[0]["same_bytes"] == 95 and near[0]["extra_bytes"] == 40
    dup = duplicated_files([a, b])
    # x.so and y.so are in both images but in layers they do not share; bin/sh is in the shared base.
    assert dup == [{"directory": "lib", "files": 2, "extra_bytes": 95, "images": ["a", "b"]}]


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

    from layerwise.registry import DOCKER_MANIFEST, Registry

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
