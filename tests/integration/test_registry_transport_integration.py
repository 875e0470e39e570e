"""The registry client beyond loopback: HTTPS verified against the system store or --ca-cert, plain
HTTP only for loopback and insecure registries, credentials, and one clear line per failure
(TLS, unknown host, wrong password, 429 with Retry-After, a refused media type).

The TLS registry is the real distribution registry (docker-registry binary) with a trustme CA and
htpasswd auth, reached as registry.test:PORT (an /etc/hosts alias of 127.0.0.1): no engine needed.
"""

from __future__ import annotations

import json

import pytest

from conftest import FakeImage, registry_app, sha256
from layerwise.errors import UserError
from layerwise.oci import registry as registry_module
from layerwise.oci.mediatypes import DOCKER_MANIFEST
from layerwise.oci.registry import Registry, configure, uses_plain_http


@pytest.fixture(autouse=True)
def default_transport(monkeypatch, tmp_path):
    monkeypatch.setattr(registry_module, "DAEMON_JSON", tmp_path / "no-daemon.json")
    monkeypatch.delenv("LAYERWISE_INSECURE_REGISTRIES", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    configure()
    yield
    configure()


def test_plain_http_only_for_loopback_and_listed_insecure_registries(monkeypatch, tmp_path):
    assert uses_plain_http("localhost:5000") and uses_plain_http("127.0.0.1:5000")
    assert not uses_plain_http("registry.test:5443") and not uses_plain_http("docker.io")
    configure(insecure=("registry.test:5443",))
    assert uses_plain_http("registry.test:5443")
    configure()
    monkeypatch.setenv("LAYERWISE_INSECURE_REGISTRIES", "other.test:1")
    assert uses_plain_http("other.test:1")
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"insecure-registries": ["engine.test:2"]}))
    monkeypatch.setattr(registry_module, "DAEMON_JSON", daemon)
    assert uses_plain_http("engine.test:2")          # Docker's own rule, from the engine's config
    with Registry("docker.io") as hub:               # Docker Hub's API host
        assert str(hub._http.base_url) == "https://registry-1.docker.io"


def test_missing_ca_cert_file_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="--ca-cert .*no such file"):
        configure(ca_cert=tmp_path / "absent.pem")


def test_tls_registry_with_basic_auth(tls_registry, tmp_path, monkeypatch):
    image = FakeImage({"a.txt": b"alpha"})
    # Not trusted: one line that says how to trust it.
    with Registry(tls_registry.host, retries=0) as reg:
        with pytest.raises(UserError, match=r"TLS to registry registry\.test:\d+ failed \(certificate verify "
                                            r"failed.*--ca-cert"):
            reg.ping()
    configure(ca_cert=tls_registry.ca_pem)
    # Trusted but no credentials: refused, saying how to log in.
    with Registry(tls_registry.host) as reg:
        with pytest.raises(UserError, match="no credentials for registry.test.*docker login"):
            reg.ping()
    # Wrong password: one clear line, no secret in it.
    monkeypatch.setenv("DOCKER_CONFIG", str(tls_registry.docker_config(tmp_path / "wrong", "wrong-pass")))
    with Registry(tls_registry.host) as reg:
        with pytest.raises(UserError) as e:
            reg.ping()
    assert "were not accepted" in str(e.value) and "wrong-pass" not in str(e.value)
    # The right one: push an image by digest, then its tag, and read it back verified.
    monkeypatch.setenv("DOCKER_CONFIG", str(tls_registry.docker_config(tmp_path / "right")))
    with Registry(tls_registry.host) as reg:
        reg.ping()
        for digest, blob in image.blobs.items():
            reg.upload_blob("team/app", digest, blob, len(blob))
        digest = reg.put_manifest_bytes("team/app", sha256(image.manifest_raw), image.manifest_raw, DOCKER_MANIFEST)
        reg.put_manifest_bytes("team/app", "v1", image.manifest_raw, DOCKER_MANIFEST)
        assert reg.manifest_digest("team/app", "v1") == digest == sha256(image.manifest_raw)
        assert reg.blob("team/app", image.manifest["layers"][0]["digest"]) == image.gz[0]


def test_unknown_host_is_one_clear_error():
    with Registry("no-such-registry.invalid:5000", retries=0) as reg:
        with pytest.raises(UserError, match="registry host no-such-registry.invalid is unknown"):
            reg.ping()


def test_429_waits_for_retry_after_then_gives_up_with_one_line(serve):
    image = FakeImage({"a.txt": b"alpha"})
    inner = registry_app({"v1": (image.manifest_raw, DOCKER_MANIFEST)}, dict(image.blobs))
    limited = {"left": 2, "after": "0"}

    def handle(method, path, query, headers):
        if path != "/v2/" and limited["left"] > 0:
            limited["left"] -= 1
            return 429, {"Retry-After": limited["after"]}, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}'
        return inner(method, path, query, headers)

    server = serve(handle)
    with Registry(server.host, backoff=0) as reg:
        assert reg.manifest("team/app", "v1").digest == sha256(image.manifest_raw)   # waited, then got it
        limited.update(left=99, after="3600")
        with pytest.raises(UserError, match=r"rate-limiting .*HTTP 429.*retry after 3600 s"):
            reg.manifest("team/app", "v1")


def test_registry_refusing_a_media_type_is_one_clear_line(serve):
    def handle(method, path, query, headers):
        if method == "PUT" and "/manifests/" in path:
            return 400, {"Content-Type": "application/json"}, \
                b'{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}'
        return 200, {}, b"{}"

    server = serve(handle)
    with Registry(server.host) as reg:
        with pytest.raises(UserError, match="refuses manifests of media type "
                                            "application/vnd.oci.image.manifest.v1\\+json"):
            reg.put_manifest_bytes("team/app", "v1", b"{}", "application/vnd.oci.image.manifest.v1+json")
