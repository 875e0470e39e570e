"""Image references, one grammar for the whole tool (as Docker's `reference` package reads them).

`Reference.parse("python:3.12")` is `docker.io/library/python:3.12`; a name with neither tag nor
digest gets `latest`; `name:tag@digest` keeps both and is pulled by its digest. Every other module
asks a Reference for its registry, repository, tag or digest instead of splitting strings itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..errors import UserError

DOCKER_HUB = "docker.io"
# Docker Hub's other names: what users (and config.json keys) write for docker.io.
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
HUB_API_HOST = "registry-1.docker.io"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?)(?::[0-9]+)?$")


def host_name(registry: str) -> str:
    """'host:5000' → 'host'; '[::1]:5000' → '[::1]'."""
    if registry.startswith("["):
        return registry[:registry.index("]") + 1]
    return registry.rsplit(":", 1)[0] if ":" in registry else registry


def is_loopback(registry: str) -> bool:
    """Whether a registry host (with or without port) is this machine's loopback."""
    return host_name(registry).lower() in LOOPBACK_HOSTS or registry.lower() in LOOPBACK_HOSTS


def canonical_registry(registry: str) -> str:
    """A registry host as policies and credentials compare it: lower case, Docker Hub as docker.io."""
    registry = registry.strip().lower()
    return DOCKER_HUB if registry in HUB_ALIASES else registry


@dataclass(frozen=True, order=True)
class Reference:
    registry: str              # host[:port]; Docker Hub is "docker.io"
    repository: str            # "library/python", "ai/app1"
    tag: str | None = None     # None only when a digest is given
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        """Parse and normalize a reference; a malformed one is a UserError saying how to write it."""
        raw = text.strip() if isinstance(text, str) else ""
        if not raw:
            raise UserError("an empty image name; write an image as [HOST[:PORT]/]NAME[:TAG][@DIGEST]")
        rest, at, digest = raw.partition("@")
        tag = None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            rest, _, tag = rest.rpartition(":")
        first, slash, path = rest.partition("/")
        # As Docker decides: the first component is a registry host when it looks like one.
        if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry = canonical_registry(first) if first.lower() in HUB_ALIASES else first
        else:
            registry, path = DOCKER_HUB, rest
        if registry == DOCKER_HUB and "/" not in path:
            path = "library/" + path
        problem = None
        if not _HOST.match(registry):
            problem = f"registry host {registry!r} is malformed"
        elif not _REPOSITORY.match(path):
            problem = f"repository {path!r} is malformed (lower case letters, digits and . _ - / only)"
        elif tag is not None and not _TAG.match(tag):
            problem = f"tag {tag!r} is malformed"
        elif at and not _DIGEST.match(digest):
            problem = f"digest {digest[:80]!r} is malformed (sha256:<64 hex>)"
        if problem:
            raise UserError(f"image {raw[:200]!r}: {problem}; write it as [HOST[:PORT]/]NAME[:TAG][@DIGEST]")
        if tag is None and not at:
            tag = "latest"
        return cls(registry, path, tag, digest if at else None)

    @staticmethod
    def normalize(text: str) -> str:
        """The canonical text of a reference: 'busybox' → 'docker.io/library/busybox:latest'."""
        return str(Reference.parse(text))

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest: what `docker push` and the engine API take."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What a registry manifest URL takes: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        """The host to speak the registry API to (Docker Hub's API lives at registry-1.docker.io)."""
        return HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    def is_loopback(self) -> bool:
        return is_loopback(self.registry)

    def with_tag(self, tag: str) -> "Reference":
        if not _TAG.match(tag):
            raise UserError(f"tag {tag!r} is malformed")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> "Reference":
        if not _DIGEST.match(digest):
            raise UserError(f"digest {digest[:80]!r} is malformed (sha256:<64 hex>)")
        return replace(self, digest=digest)

    def same_image(self, other: "Reference") -> bool:
        """Equal, or one names by digest what the other names by tag and digest."""
        if self == other:
            return True
        return self.name == other.name and bool(self.digest) and self.digest == other.digest

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
