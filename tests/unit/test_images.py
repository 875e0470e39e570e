"""Reading images from every source (layerwise.oci.images) and the registry client underneath.

Integration tests build small images with the real engine, push them to the real registry on
localhost:5000, and check that the registry, the engine, `docker save` archives and OCI layouts all
give the same config and diff_ids. Unit tests feed hand-made malformed input through small servers
on 127.0.0.1 that pose as a registry or a token server.
"""
from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import socket
import tarfile
import uuid
from pathlib import Path

import pytest

from conftest import FakeImage, Server, legacy_archive, registry_app, sha256, write_blob
from layerwise.errors import ServiceDown, UserError
from layerwise.oci.images import (
    DockerArchiveImage,
    OCILayoutImage,
    RegistryImage,
    open_image,
    parse_platform,
    select_platform,
)
from layerwise.oci.mediatypes import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from layerwise.oci.registry import DigestMismatch, Registry


def fake_registry(serve, image: FakeImage, tag="v1", blobs=None, manifests=None) -> Server:
    return serve(registry_app(manifests or {tag: (image.manifest_raw, DOCKER_MANIFEST)},
                              blobs if blobs is not None else dict(image.blobs)))


def read_all(f) -> bytes:
    with f:
        return f.read()


def test_hand_made_image_reads_through_a_registry(serve):
    image = FakeImage({"a.txt": b"alpha"}, {"b/b.txt": b"beta" * 1000})
    server = fake_registry(serve, image)
    with RegistryImage(f"{server.host}/team/app:v1") as img:
        assert img.diff_ids == image.config["rootfs"]["diff_ids"]
        assert img.config == image.config and img.manifest_digest == sha256(image.manifest_raw)
        assert [l.digest for l in img.layers] == [sha256(g) for g in image.gz]
        assert [l.size for l in img.layers] == [len(g) for g in image.gz]
        assert all(l.compression == "gzip" for l in img.layers)
        assert [read_all(img.open_layer(i)) for i in range(2)] == image.gz
        img.layers.clear()                       # a copy: the view does not change
        img.config["rootfs"] = None
        assert len(img.layers) == 2 and img.config["rootfs"]["diff_ids"]
    accepts = [h.get("Accept", "") for m, p, q, h in server.requests if "/manifests/" in p]
    assert accepts and all(DOCKER_MANIFEST in a and OCI_INDEX in a and DOCKER_LIST in a for a in accepts)


@pytest.mark.parametrize("doc_type,header_type", [
    ("application/vnd.example.thing.v1+json", "application/json"),
    (None, "application/vnd.docker.distribution.manifest.v1+prettyjws"),   # schema 1
])
def test_manifest_of_unknown_media_type(serve, doc_type, header_type):
    doc = {"schemaVersion": 2, "config": {}, "layers": []}
    if doc_type:
        doc["mediaType"] = doc_type
    server = serve(registry_app({"v1": (json.dumps(doc).encode(), header_type)}, {}))
    ref = f"{server.host}/team/app:v1"
    with pytest.raises(UserError) as e:
        open_image(ref)
    assert "unknown media type" in str(e.value) and ref in str(e.value)
    assert (doc_type or header_type) in str(e.value)


def test_unknown_layer_and_config_media_types(serve):
    image = FakeImage({"a": b"a"})
    doc = json.loads(image.manifest_raw)
    doc["layers"][0]["mediaType"] = "application/vnd.example.blob"
    server = serve(registry_app({"v1": (json.dumps(doc).encode(), DOCKER_MANIFEST)}, image.blobs))
    with pytest.raises(UserError, match=r"layer 1/1 \(sha256:[0-9a-f]+\) of image .*unknown media type"):
        open_image(f"{server.host}/team/app:v1")
    doc = json.loads(image.manifest_raw)
    doc["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json"
    server = serve(registry_app({"v1": (json.dumps(doc).encode(), DOCKER_MANIFEST)}, image.blobs))
    with pytest.raises(UserError, match="is not a container image"):
        open_image(f"{server.host}/team/app:v1")


def index_of(*entries, media_type=OCI_INDEX) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": digest, "size": size,
         "platform": dict(zip(("os", "architecture", "variant"), platform.split("/"), strict=False))}
        for platform, digest, size in entries]}).encode()


def test_index_without_the_requested_platform(serve):
    arm = FakeImage({"arm64": b"arm64"})
    arm7 = FakeImage({"arm7": b"arm7"})
    index = index_of(("linux/arm64", sha256(arm.manifest_raw), len(arm.manifest_raw)),
                     ("linux/arm/v7", sha256(arm7.manifest_raw), len(arm7.manifest_raw)),
                     ("unknown/unknown", sha256(b"attestation"), 11))
    manifests = {"v1": (index, OCI_INDEX), sha256(arm.manifest_raw): (arm.manifest_raw, DOCKER_MANIFEST),
                 sha256(arm7.manifest_raw): (arm7.manifest_raw, DOCKER_MANIFEST)}
    server = serve(registry_app(manifests, {**arm.blobs, **arm7.blobs}))
    ref = f"{server.host}/team/multi:v1"
    with pytest.raises(UserError) as e:
        open_image(ref)                                   # default: linux/amd64
    message = str(e.value)
    assert ref in message and "linux/amd64" in message
    assert "present: linux/arm/v7, linux/arm64;" in message and "unknown" not in message
    with pytest.raises(UserError, match="no image for platform linux/arm/v6"):
        open_image(ref, platform="linux/arm/v6")
    with open_image(ref, platform="linux/arm64") as img:  # arm64 without variant is arm64/v8
        assert img.diff_ids == arm.config["rootfs"]["diff_ids"] and img.platform == "linux/arm64"
        assert img.manifest_digest == sha256(arm.manifest_raw)
    with open_image(ref, platform="linux/arm/v7") as img:
        assert img.diff_ids == arm7.config["rootfs"]["diff_ids"]
    with pytest.raises(UserError, match="not OS/ARCH"):
        open_image(ref, platform="amd64")


def test_select_platform_rules():
    descriptors = [{"digest": "a", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                   {"digest": "b", "platform": {"os": "linux", "architecture": "amd64"}}]
    assert select_platform(descriptors, None, "x")["digest"] == "b"
    assert select_platform(descriptors, "linux/arm64", "x")["digest"] == "a"
    assert select_platform(descriptors, "linux/arm64/v8", "x")["digest"] == "a"
    assert str(parse_platform("linux/arm/v7")) == "linux/arm/v7"


def test_blob_whose_digest_does_not_match(serve):
    image = FakeImage({"a.txt": b"alpha" * 100})
    good = image.gz[0]
    for name, served in (("altered", good[:-5] + b"XXXXX"), ("truncated", good[:-5]), ("longer", good + b"!")):
        server = fake_registry(serve, image, blobs={**image.blobs, sha256(good): served})
        ref = f"{server.host}/team/{name}:v1"
        img = open_image(ref)                             # config and manifest are fine
        f = img.open_layer(0)
        with pytest.raises(DigestMismatch) as e:
            while f.read(64):                             # the check comes as the stream ends
                pass
        f.close()
        assert isinstance(e.value, UserError)
        assert f"layer 1/1 ({sha256(good)}) of image {ref}" in str(e.value)
        img.close()
    # The config is checked at once: a bad config makes the image unreadable.
    server = fake_registry(serve, image, blobs={**image.blobs, sha256(image.config_raw): image.config_raw[:-1] + b" "})
    with pytest.raises(DigestMismatch, match=r"config \(sha256:[0-9a-f]+\) of image .*does not match its digest"):
        open_image(f"{server.host}/team/app:v1")


def test_registry_answering_500_twice_then_200_is_retried(serve):
    image = FakeImage({"a.txt": b"alpha"})
    inner = registry_app({"v1": (image.manifest_raw, DOCKER_MANIFEST)}, dict(image.blobs))
    failures = {"manifest": 2, "blob": 2}

    def flaky(method, path, query, headers):
        kind = "manifest" if "/manifests/" in path else "blob" if "/blobs/" in path else None
        if kind and failures[kind] > 0:
            failures[kind] -= 1
            return 500, {}, b"try again"
        return inner(method, path, query, headers)

    server = serve(flaky)
    with Registry(server.host, backoff=0.01) as reg:
        with RegistryImage(f"{server.host}/team/app:v1", registry=reg) as img:
            assert read_all(img.open_layer(0)) == image.gz[0]
    gets = [p for m, p, q, h in server.requests if "/manifests/" in p]
    assert len(gets) == 3

    always = serve(lambda *a: (503, {}, b"down for maintenance"))
    with Registry(always.host, backoff=0.01) as reg:
        with pytest.raises(UserError, match=r"HTTP 503 for .*team/app:v1"):
            RegistryImage(f"{always.host}/team/app:v1", registry=reg)
    assert len(always.requests) == 4                     # one try and three retries

    with socket.socket() as s:                            # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Registry(f"127.0.0.1:{port}", backoff=0.01) as reg:
        with pytest.raises(ServiceDown, match=f"registry 127.0.0.1:{port} is not answering"):
            reg.manifest("team/app", "v1")


def test_missing_image_and_tags_with_pagination(serve):
    tags = [f"t{i}" for i in range(5)]

    def handle(method, path, query, headers):
        if path != "/v2/team/app/tags/list":
            return 404, {}, b"{}"
        n = int(query.get("n", ["100"])[0])
        after = query.get("last", [""])[0]
        rest = [t for t in tags if t > after]
        page, more = rest[:n], rest[n:]
        link = {"Link": f'</v2/team/app/tags/list?last={page[-1]}&n={n}>; rel="next"'} if more else {}
        body = json.dumps({"name": "team/app", "tags": page}).encode()
        return 200, {"Content-Type": "application/json", **link}, body

    server = serve(handle)
    with Registry(server.host) as reg:
        assert reg.tags("team/app", page_size=2) == tags
        assert len(server.requests) == 3
        with pytest.raises(UserError, match=f"repository {server.host}/team/other is not in the registry"):
            reg.tags("team/other")
    with pytest.raises(UserError, match=f"image {server.host}/team/app:v9 is not in the registry"):
        open_image(f"{server.host}/team/app:v9")


USER, PASSWORD = "alice", "s3cret-" + uuid.uuid4().hex[:8]


def write_docker_config(folder: Path, host: str, password: str = PASSWORD, extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}, **(extra or {})}))


def token_protected(serve, image: FakeImage):
    """A token server and a registry front that only answers with the token it issued."""
    token = "tok-" + uuid.uuid4().hex
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def token_server(method, path, query, headers):
        if headers.get("Authorization") != expected:
            return 401, {"Content-Type": "application/json"}, b'{"details":"bad credentials"}'
        return 200, {"Content-Type": "application/json"}, json.dumps({"token": token, "expires_in": 300}).encode()

    tokens = serve(token_server)
    inner = registry_app({"v1": (image.manifest_raw, DOCKER_MANIFEST)}, dict(image.blobs))

    def front(method, path, query, headers):
        if headers.get("Authorization") != f"Bearer {token}":
            scope = f',scope="repository:{path.split("/")[2]}/{path.split("/")[3]}:pull"' if path != "/v2/" else ""
            challenge = f'Bearer realm="http://{tokens.host}/token",service="fake-registry"{scope}'
            # A careless registry echoing what it was sent: must be scrubbed before it is shown.
            echo = json.dumps({"errors": [{"code": "UNAUTHORIZED", "detail": headers.get("Authorization", "")}]})
            return 401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}, echo.encode()
        return inner(method, path, query, headers)

    return tokens, serve(front), token


def secrets_absent(text: str, *secrets: str) -> bool:
    b64 = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return not any(s in text for s in (PASSWORD, b64, f"{USER}:{PASSWORD}", *secrets))


def test_token_protected_registry(serve, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    image = FakeImage({"a.txt": b"alpha"}, {"b.txt": b"beta"})
    tokens, front, token = token_protected(serve, image)
    write_docker_config(tmp_path / "docker", front.host)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))

    with open_image(f"{front.host}/team/app:v1") as img:
        assert img.diff_ids == image.config["rootfs"]["diff_ids"]
        assert [read_all(img.open_layer(i)) for i in range(2)] == image.gz
    # The token came from the realm with the user's basic credentials and the challenge's scope,
    # once for the scope; it then flowed on every request of that scope.
    assert len(tokens.requests) == 1
    method, path, query, headers = tokens.requests[0]
    assert query == {"service": ["fake-registry"], "scope": ["repository:team/app:pull"]}
    assert headers["Authorization"].startswith("Basic ")
    authorized = [h.get("Authorization") for m, p, q, h in front.requests if h.get("Authorization")]
    assert authorized and set(authorized) == {f"Bearer {token}"}
    assert len(front.requests) - len(authorized) == 1       # one challenge, then the token

    # Wrong password: a clear refusal that names the image and shows no secret.
    write_docker_config(tmp_path / "wrong", front.host, password="not-" + PASSWORD)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "wrong"))
    with pytest.raises(UserError) as e:
        open_image(f"{front.host}/team/app:v1")
    message = str(e.value)
    assert f"{front.host}/team/app:v1" in message and "docker login" in message and "HTTP 401" in message
    assert secrets_absent(message, token, "not-" + PASSWORD)

    # A credential helper named in config.json but not installed: said so.
    (tmp_path / "helper").mkdir()
    (tmp_path / "helper" / "config.json").write_text(json.dumps({"credsStore": "lw-absent-helper"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "helper"))
    with pytest.raises(UserError, match="docker-credential-lw-absent-helper is not installed"):
        open_image(f"{front.host}/team/app:v1")

    # An installed helper (docker-credential-*, the docker CLI's protocol) gives the credentials.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-lwtest"
    helper.write_text("#!/bin/sh\nread server\n"
                      f"[ \"$server\" = \"{front.host}\" ] || {{ echo 'credentials not found'; exit 1; }}\n"
                      f"echo '{{\"Username\": \"{USER}\", \"Secret\": \"{PASSWORD}\"}}'\n")
    helper.chmod(0o755)
    (tmp_path / "helper" / "config.json").write_text(json.dumps({"credHelpers": {front.host: "lwtest"}}))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with open_image(f"{front.host}/team/app:v1") as img:
        assert read_all(img.open_layer(0)) == image.gz[0]

    out = capsys.readouterr()
    assert secrets_absent(caplog.text + out.out + out.err, token)


def test_registry_asking_for_basic_auth(serve, tmp_path, monkeypatch):
    image = FakeImage({"a.txt": b"alpha"})
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    inner = registry_app({"v1": (image.manifest_raw, DOCKER_MANIFEST)}, dict(image.blobs))

    def front(method, path, query, headers):
        if headers.get("Authorization") != expected:
            return 401, {"WWW-Authenticate": 'Basic realm="fake"'}, b"{}"
        return inner(method, path, query, headers)

    server = serve(front)
    write_docker_config(tmp_path, f"http://{server.host}/v1/")   # any spelling of the key
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with open_image(f"{server.host}/team/app:v1") as img:
        assert read_all(img.open_layer(0)) == image.gz[0]
    assert sum(1 for m, p, q, h in server.requests if h.get("Authorization") == expected) >= 3
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    with pytest.raises(UserError) as e:
        open_image(f"{server.host}/team/app:v1")
    assert "no credentials for" in str(e.value) and secrets_absent(str(e.value))


def test_docker_save_archive_missing_a_layer(tmp_path):
    image = FakeImage({"a": b"a"}, {"b": b"b"})
    full = legacy_archive(tmp_path / "full.tar", [(["localhost:5000/t/x:v1"], image)])
    with tarfile.open(full) as tar:
        second = [m.name for m in tar if m.name.endswith("layer.tar")][1]
    path = legacy_archive(tmp_path / "broken.tar", [(["localhost:5000/t/x:v1"], image)], drop={second})
    with pytest.raises(UserError) as e:
        open_image(str(path))
    message = str(e.value)
    assert f"layer 2/2 ({second}, diff_id {sha256(image.tars[1])}) of image {path}" in message
    assert "missing" in message
    with open_image(str(full)) as img:                    # the complete one reads
        assert img.manifest_digest is None and img.diff_ids == [sha256(t) for t in image.tars]
        assert [l.digest for l in img.layers] == img.diff_ids and img.layers[0].compression is None
        assert [read_all(img.open_layer(i)) for i in range(2)] == image.tars


def test_docker_save_archive_choices_links_and_corruption(tmp_path):
    one = FakeImage({"same": b"same"}, {"same": b"same"})  # the same layer twice: Docker links it
    two = FakeImage({"two": b"two"})
    path = legacy_archive(tmp_path / "two.tar", [(["localhost:5000/t/one:v1"], one),
                                                 (["localhost:5000/t/two:v1", "t/two:latest"], two)], link_same=True)
    with pytest.raises(UserError) as e:
        open_image(str(path))
    assert "holds 2 images" in str(e.value) and "localhost:5000/t/one:v1, localhost:5000/t/two:v1" in str(e.value)
    with open_image(f"{path}:localhost:5000/t/one:v1") as img:
        assert img.config == one.config and [read_all(img.open_layer(i)) for i in range(2)] == one.tars
    with open_image(f"{path}:t/two") as img:               # Docker's name rules: :latest implied
        assert img.config == two.config
    with pytest.raises(UserError, match="holds no image named 'nothere:v1'"):
        open_image(f"{path}:nothere:v1")

    # A layer whose bytes changed: the read that reaches its end says so.
    data = path.read_bytes()
    corrupted = tmp_path / "corrupted.tar"
    with tarfile.open(path) as tar:
        member = next(m for m in tar if m.isreg() and data[m.offset_data:m.offset_data + m.size] == two.tars[0])
    raw = bytearray(data)
    raw[member.offset_data + 600] ^= 0xFF                   # one byte of the layer, flipped
    corrupted.write_bytes(bytes(raw))
    with open_image(f"{corrupted}:localhost:5000/t/two:v1") as img:
        with pytest.raises(DigestMismatch, match=rf"layer 1/1 \(sha256:[0-9a-f]+\) of image {corrupted}"):
            read_all(img.open_layer(0))

    gz = tmp_path / "saved.tar.gz"
    gz.write_bytes(gzip.compress(data))
    with pytest.raises(UserError, match="compressed archive; decompress it first"):
        open_image(str(gz))
    with pytest.raises(UserError, match="no such file"):
        open_image(str(tmp_path / "absent.tar"))


def test_oci_layout_rejects_hostile_digests(tmp_path):
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:../../../etc/passwd",
         "size": 10}]}))
    with pytest.raises(UserError, match="invalid digest"):
        open_image(str(tmp_path))


def test_manifest_bytes_as_each_source_holds_them(serve, tmp_path):
    """manifest_raw is what a pull downloads (predict_pulls counts it, build re-tags with it): the
    platform's manifest under an index; None where the source has none (Docker 20.10 save)."""
    image = FakeImage({"a.txt": b"alpha"})
    with RegistryImage(f"{fake_registry(serve, image).host}/team/app:v1") as img:
        assert img.manifest_raw == image.manifest_raw and img.manifest_media_type == DOCKER_MANIFEST
    index = index_of(("linux/amd64", sha256(image.manifest_raw), len(image.manifest_raw)))
    server = serve(registry_app({"v1": (index, OCI_INDEX),
                                 sha256(image.manifest_raw): (image.manifest_raw, DOCKER_MANIFEST)}, image.blobs))
    with RegistryImage(f"{server.host}/team/multi:v1") as img:
        assert img.manifest_raw == image.manifest_raw and sha256(img.manifest_raw) == img.manifest_digest

    untyped = {k: v for k, v in image.manifest.items() if k != "mediaType"}   # OCI lets it out
    untyped_raw = json.dumps(untyped).encode()
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for blob in [untyped_raw, *image.blobs.values()]:
        write_blob(tmp_path, blob)
    (tmp_path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"digest": sha256(untyped_raw), "size": len(untyped_raw)}]}))
    with OCILayoutImage(tmp_path) as img:
        assert img.manifest_raw == untyped_raw and img.manifest_media_type == OCI_MANIFEST

    archive = legacy_archive(tmp_path / "saved.tar", [(["team/app:v1"], image)])
    with DockerArchiveImage(archive) as img:
        assert img.manifest_raw is None and img.manifest_media_type is None and img.manifest_digest is None
