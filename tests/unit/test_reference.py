"""The one reference grammar (reference.py) and the registry policy (policy.py): pure logic."""

from __future__ import annotations

import pytest

from layerwise.dockerfiles import syntax_frontend
from layerwise.errors import UserError
from layerwise.oci.policy import RegistryPolicy
from layerwise.oci.reference import Reference, is_loopback

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("python:3.12", "docker.io/library/python:3.12"),
    ("busybox", "docker.io/library/busybox:latest"),
    ("bitnami/redis", "docker.io/bitnami/redis:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ("localhost/a", "localhost/a:latest"),
    ("localhost:5000/os/python3:bookworm", "localhost:5000/os/python3:bookworm"),
    ("registry.test:5443/team/app", "registry.test:5443/team/app:latest"),
    (f"localhost:5000/a/b@{DIGEST}", f"localhost:5000/a/b@{DIGEST}"),
    (f"localhost:5000/a/b:v1@{DIGEST}", f"localhost:5000/a/b:v1@{DIGEST}"),
    ("[::1]:5000/a:1", "[::1]:5000/a:1"),
])
def test_normalize(text, expected):
    assert Reference.normalize(text) == expected
    assert Reference.normalize(expected) == expected        # normalizing is idempotent


def test_parts_and_the_reference_a_registry_url_takes():
    ref = Reference.parse(f"localhost:5000/a/b:v1@{DIGEST}")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("localhost:5000", "a/b", "v1", DIGEST)
    assert ref.reference == DIGEST                       # the digest wins over the tag
    assert ref.name == "localhost:5000/a/b"
    plain = Reference.parse("localhost:5000/a/b")
    assert plain.reference == "latest" and plain.digest is None
    assert Reference.parse("python").api_host == "registry-1.docker.io"
    assert plain.api_host == "localhost:5000"


def test_with_tag_and_digest():
    ref = Reference.parse(f"localhost:5000/a:v1@{DIGEST}")
    assert str(ref.with_tag("v2")) == "localhost:5000/a:v2"        # a new tag drops the digest
    assert str(Reference.parse("a").with_digest(DIGEST)) == f"docker.io/library/a:latest@{DIGEST}"
    with pytest.raises(UserError, match="tag"):
        ref.with_tag("bad tag")


@pytest.mark.parametrize("registry, loopback", [
    ("localhost", True), ("localhost:5000", True), ("127.0.0.1:5000", True), ("[::1]:5000", True),
    ("registry.test:5443", False), ("docker.io", False), ("10.0.0.1:5000", False),
    ("localhost.example.com", False),
])
def test_is_loopback(registry, loopback):
    assert is_loopback(registry) is loopback
    assert Reference.parse(f"{registry}/a").is_loopback() is loopback


@pytest.mark.parametrize("text, problem", [
    ("", "empty"), ("   ", "empty"), ("localhost:5000/UPPER/case", "repository"),
    ("localhost:5000/a:bad tag!", "tag"), ("localhost:5000/a@sha256:xyz", "digest"),
    ("localhost:5000/a//b", "repository"), ("bad_host!:5000/a", "registry host"),
])
def test_malformed_references_are_one_clear_error(text, problem):
    with pytest.raises(UserError, match=problem) as e:
        Reference.parse(text)
    assert "[HOST[:PORT]/]NAME[:TAG][@DIGEST]" in str(e.value)


def test_equality_is_by_normalized_form():
    assert Reference.parse("busybox") == Reference.parse("docker.io/library/busybox:latest")
    assert Reference.parse(f"a@{DIGEST}").same_image(Reference.parse(f"a:v1@{DIGEST}"))
    assert not Reference.parse("a:1").same_image(Reference.parse("a:2"))


# -- the registry policy ----------------------------------------------------------------------------

class _Stack:
    def __init__(self, registries, path="layerwise.yaml", line=3):
        self.allowed_registries, self.path, self.policy_line = tuple(registries), path, line


def test_policy_sources_in_order_flag_env_stack():
    stack = _Stack(["stack.example:5000"])
    env = {"LAYERWISE_ALLOWED_REGISTRIES": "env.example, localhost:5000"}
    assert RegistryPolicy.resolve(["flag.example"], stack, env).source == "--allow-registry"
    from_env = RegistryPolicy.resolve([], stack, env)
    assert from_env.registries == ("env.example", "localhost:5000")
    assert from_env.source == "$LAYERWISE_ALLOWED_REGISTRIES"
    assert RegistryPolicy.resolve([], stack, {}).source == "policy.registries in layerwise.yaml:3"
    unset = RegistryPolicy.resolve([], None, {})
    assert unset.registries == () and unset.allows(Reference.parse("python:3.12"))   # unset: any registry


def test_policy_matches_hosts_globs_and_docker_hub_names():
    policy = RegistryPolicy(("localhost:5000", "registry.test:*", "docker.io"), "test")
    for ok in ("localhost:5000/a", "registry.test:5443/a", "registry.test:1/a", "python:3.12",
               "index.docker.io/library/python"):
        assert policy.allows(Reference.parse(ok)), ok
    for refused in ("localhost:5001/a", "registry.test/a", "quay.io/a/b", "127.0.0.1:5000/a"):
        assert not policy.allows(Reference.parse(refused)), refused
    with pytest.raises(UserError, match="not a registry host"):
        RegistryPolicy.resolve(["localhost:5000/ns"], None, {})


def test_policy_refusal_names_image_and_where_the_policy_came_from():
    policy = RegistryPolicy.resolve([], _Stack(["localhost:5000"], "stack.yaml", 7), {})
    with pytest.raises(UserError) as e:
        policy.check("python:3.12", "base:", "stack.yaml")
    message = str(e.value)
    assert "python:3.12" in message and "docker.io" in message and "stack.yaml:7" in message


def test_policy_covers_every_image_a_dockerfile_reads_and_its_syntax_frontend():
    policy = RegistryPolicy(("localhost:5000",), "--allow-registry")
    allowed = ("FROM localhost:5000/os/busybox AS build\nRUN true\n"
               "FROM localhost:5000/os/python3:bookworm\nCOPY --from=build /x /x\n"
               "RUN --mount=type=bind,from=localhost:5000/tools,target=/t --mount=type=cache,target=/c true\n")
    policy.check_dockerfile(allowed, "app")
    for text, image in [
        ("# syntax=docker/dockerfile:1\nFROM localhost:5000/a\n", "docker/dockerfile:1"),
        ("\ufeff# syntax = docker.io/docker/dockerfile:1.7\nFROM localhost:5000/a\n", "docker.io/docker/dockerfile:1.7"),
        ("FROM localhost:5000/a\nCOPY --from=alpine:3 /x /x\n", "alpine:3"),
        ("FROM localhost:5000/a\nRUN --mount=type=bind,from=quay.io/t/tools,target=/t true\n", "quay.io/t/tools"),
        ("ARG IMG=ghcr.io/o/base:1\nFROM ${IMG}\n", "ghcr.io/o/base:1"),
    ]:
        with pytest.raises(UserError, match="policy does not allow") as e:
            policy.check_dockerfile(text, "app")
        assert image in str(e.value)
    with pytest.raises(UserError, match="'# syntax=' frontend"):
        policy.check_dockerfile("# syntax=docker/dockerfile:1\nFROM localhost:5000/a\n", "app")


def test_syntax_frontend_only_in_the_leading_directives():
    assert syntax_frontend("# syntax=docker/dockerfile:1\nFROM a\n") == "docker/dockerfile:1"
    assert syntax_frontend("# escape=`\n# syntax=x/y:1\nFROM a\n") == "x/y:1"
    assert syntax_frontend("FROM a\n# syntax=x/y:1\n") is None
    assert syntax_frontend("# a comment\n# syntax=x/y:1\nFROM a\n") is None


def test_a_digest_wins_over_a_tag_and_a_missing_tag_is_latest():
    digest = "sha256:" + "a" * 64
    both = Reference.parse(f"localhost:5000/a/b:v1@{digest}")
    assert (both.registry, both.repository, both.reference, both.digest) == ("localhost:5000", "a/b", digest, digest)
    bare = Reference.parse("localhost:5000/a/b")
    assert (bare.registry, bare.repository, bare.reference, bare.digest) == ("localhost:5000", "a/b", "latest", None)
