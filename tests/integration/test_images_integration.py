"""Reading images from every source (layerwise.oci.images) and the registry client underneath.

Integration tests build small images with the real engine, push them to the real registry on
localhost:5000, and check that the registry, the engine, `docker save` archives and OCI layouts all
give the same config and diff_ids. Unit tests feed hand-made malformed input through small servers
on 127.0.0.1 that pose as a registry or a token server.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest

from conftest import REGISTRY, sha256, write_blob
from layerwise.errors import UserError
from layerwise.oci.images import (
    DockerArchiveImage,
    EngineImage,
    OCILayoutImage,
    RegistryImage,
    open_image,
)
from layerwise.oci.mediatypes import OCI_INDEX
from layerwise.oci.reference import Reference
from layerwise.oci.registry import Registry

BASE = f"{REGISTRY}/os/busybox:latest"


def layout_from_registry(root: Path, ref: str, nested: bool) -> dict:
    """An OCI layout assembled from the registry's own blobs (layers streamed, not held in memory).
    nested: index.json → an index of platforms (amd64: the image; arm64: a manifest not present)."""
    parsed = Reference.parse(ref)
    host, name, tag = parsed.registry, parsed.repository, parsed.reference
    with Registry(host) as reg:
        manifest = reg.manifest(name, tag)
        write_blob(root, manifest.raw)
        write_blob(root, reg.blob(name, manifest.config_digest))
        for layer in manifest.layers:
            path = root / "blobs" / "sha256" / layer.digest[7:]
            with reg.open_blob(name, layer.digest, size=layer.size) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descriptor = {"mediaType": manifest.media_type, "digest": manifest.digest, "size": len(manifest.raw)}
    if nested:
        platforms = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {**descriptor, "platform": {"os": "linux", "architecture": "amd64"}},
            {**descriptor, "digest": sha256(b"absent"),
             "platform": {"os": "linux", "architecture": "arm64"}}]}).encode()
        top = {"mediaType": OCI_INDEX, "digest": write_blob(root, platforms), "size": len(platforms),
               "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    else:
        top = {**descriptor, "annotations": {"io.containerd.image.name": ref,
                                             "org.opencontainers.image.ref.name": tag}}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}))
    return {"manifest": manifest, "descriptor": top}


@pytest.fixture(scope="module")
def family(services, tmp_path_factory):
    """Two small images built FROM the loopback busybox, pushed to t-images-<random>/, and the same
    images as docker save archives (one image; two images) and OCI layouts (plain; nested index;
    inside a tar as newer Docker writes it). Local tags are removed at the end."""
    import docker

    client = docker.from_env(version="auto", timeout=120)
    ns = f"t-images-{uuid.uuid4().hex[:10]}"
    marker = uuid.uuid4().hex
    refs = {"app": f"{REGISTRY}/{ns}/app:v1", "other": f"{REGISTRY}/{ns}/other:v1"}
    dockerfiles = {
        "app": f"""FROM {BASE}
RUN echo {marker} > /marker && mkdir -p /data && echo one > /data/one
ENV LW_MARKER={marker}
RUN dd if=/dev/urandom of=/data/blob bs=1024 count=48 2>/dev/null && ln -s /data/one /data/link
RUN rm /data/one && echo two > /data/two
""",
        "other": f"FROM {BASE}\nRUN echo other-{marker} > /other\n",
    }
    tmp = tmp_path_factory.mktemp("images")
    try:
        for key, ref in refs.items():
            client.images.build(fileobj=io.BytesIO(dockerfiles[key].encode()), tag=ref, network_mode="none",
                                rm=True, forcerm=True, pull=False)
            repository, _, tag = ref.rpartition(":")
            for event in client.api.push(repository, tag=tag, stream=True, decode=True):
                assert "error" not in event, event
        with open(tmp / "app.tar", "wb") as out:
            for chunk in client.images.get(refs["app"]).save(chunk_size=1 << 20):
                out.write(chunk)
        response = client.api._get(client.api._url("/images/get"), params={"names": list(refs.values())},
                                   stream=True)
        client.api._raise_for_status(response)
        with open(tmp / "both.tar", "wb") as out:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
        layout_from_registry(tmp / "layout", refs["app"], nested=True)
        plain = layout_from_registry(tmp / "plain", refs["app"], nested=False)
        # The form newer Docker's `docker save` writes: an OCI layout plus manifest.json, in a tar.
        manifest = plain["manifest"]
        (tmp / "plain" / "manifest.json").write_text(json.dumps([{
            "Config": f"blobs/sha256/{manifest.config_digest[7:]}", "RepoTags": [refs["app"]],
            "Layers": [f"blobs/sha256/{l.digest[7:]}" for l in manifest.layers]}]))
        with tarfile.open(tmp / "oci-save.tar", "w") as tar:
            for path in sorted((tmp / "plain").rglob("*")):
                tar.add(path, arcname=str(path.relative_to(tmp / "plain")), recursive=False)
        yield {"refs": refs, "ns": ns, "tmp": tmp, "client": client,
               "ids": {k: client.images.get(r).id for k, r in refs.items()}}
    finally:
        for ref in refs.values():
            try:
                client.images.remove(ref)
            except docker.errors.ImageNotFound:
                pass
        client.close()


def uncompressed_digest(img, i: int) -> str:
    digest = hashlib.sha256()
    with img.open_layer(i) as f:
        stream = gzip.GzipFile(fileobj=f) if img.layers[i].compression == "gzip" else f
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
        f.read()                                          # to the end of the blob: verified
    return "sha256:" + digest.hexdigest()


@pytest.mark.integration
def test_every_source_gives_the_same_image(family):
    ref, tmp = family["refs"]["app"], family["tmp"]
    sources = {
        "registry": open_image(ref),
        "engine": open_image(f"docker://{ref}"),
        "archive": open_image(str(tmp / "app.tar")),
        "archive of two": open_image(f"{tmp / 'both.tar'}:{ref}"),
        "oci layout": open_image(str(tmp / "layout")),
        "oci layout by ref": open_image(f"{tmp / 'plain'}:v1"),
        "oci docker save": open_image(f"{tmp / 'oci-save.tar'}:{ref}"),
    }
    try:
        kinds = {k: type(v) for k, v in sources.items()}
        assert kinds["registry"] is RegistryImage and kinds["engine"] is EngineImage
        assert kinds["archive"] is DockerArchiveImage and kinds["oci layout"] is OCILayoutImage
        reference = sources["registry"]
        assert len(reference.diff_ids) == 4                # busybox + 3 RUN layers
        assert reference.config_digest == family["ids"]["app"]   # the engine's image ID
        for key, img in sources.items():
            assert img.diff_ids == reference.diff_ids, key
            assert img.config == reference.config and img.config_digest == reference.config_digest, key
            assert [uncompressed_digest(img, i) for i in range(len(img.layers))] == img.diff_ids, key
            copy = pickle.loads(pickle.dumps(img))        # as sent to a worker process
            assert copy.layers == img.layers and uncompressed_digest(copy, 3) == img.diff_ids[3], key
            copy.close()
        compressed = [l.digest for l in reference.layers]
        for key in ("oci layout", "oci layout by ref", "oci docker save"):
            assert [l.digest for l in sources[key].layers] == compressed, key
            assert sources[key].manifest_digest == reference.manifest_digest, key
        for key in ("engine", "archive", "archive of two"):   # Docker 20.10: plain tars, no manifest
            img = sources[key]
            assert img.manifest_digest is None, key
            assert [l.digest for l in img.layers] == img.diff_ids and img.layers[0].compression is None, key
            assert all(l.size > r.size for l, r in zip(img.layers, reference.layers, strict=True)), key
        assert sources["oci layout"].platform == "linux/amd64" and sources["registry"].name == ref
    finally:
        for img in sources.values():
            img.close()
    spool = sources["engine"].path
    assert not spool.exists()                             # the engine's temporary tar is gone


@pytest.mark.integration
def test_archive_of_several_images_and_layout_platforms(family):
    refs, tmp = family["refs"], family["tmp"]
    with pytest.raises(UserError) as e:
        open_image(str(tmp / "both.tar"))
    assert "holds 2 images" in str(e.value) and refs["app"] in str(e.value) and refs["other"] in str(e.value)
    with open_image(f"{tmp / 'both.tar'}:{refs['other']}") as other:
        assert other.config_digest == family["ids"]["other"]
    with pytest.raises(UserError) as e:
        open_image(str(tmp / "layout"), platform="linux/s390x")
    assert "present: linux/amd64, linux/arm64" in str(e.value)
    with pytest.raises(UserError, match=r"manifest of image .*layout.* is missing"):
        open_image(str(tmp / "layout"), platform="linux/arm64")
    with pytest.raises(UserError, match="holds no image named 'v2'"):
        open_image(f"{tmp / 'layout'}:v2")


@pytest.mark.integration
def test_real_registry_tags_blobs_and_missing_images(family, namespace):
    refs = family["refs"]
    app = Reference.parse(refs["app"])
    host, name = app.registry, app.repository
    repo = f"t-images-{namespace}/tags"
    with Registry(host) as reg:
        manifest = reg.manifest(name, "v1")
        for blob in [manifest.config_digest] + [l.digest for l in manifest.layers]:
            assert reg.mount_blob(repo, blob, name) or reg.has_blob(repo, blob)
        for tag in ("a", "b", "c", "d", "e"):
            reg.put_manifest_bytes(repo, tag, manifest.raw, manifest.media_type)
        assert sorted(reg.tags(repo, page_size=2)) == ["a", "b", "c", "d", "e"]
        layer = manifest.layers[-1]
        with reg.open_blob(name, layer.digest, size=layer.size) as f:
            assert sha256(f.read()) == layer.digest
        with pytest.raises(UserError, match="is not in the registry"):
            reg.open_blob(name, sha256(b"nothing"))
    missing = f"{REGISTRY}/{family['ns']}/nothere:v1"
    with pytest.raises(UserError, match=f"image {missing} is not in the registry"):
        open_image(missing)
    with pytest.raises(UserError, match=f"image {missing} is not in the local Docker Engine"):
        open_image(f"engine://{missing}")
