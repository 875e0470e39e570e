"""A small client for the Registry HTTP API v2 (OCI distribution): manifests, tags, blobs.

Small enough to own: it always sends the Accept headers for every manifest kind, verifies digests,
and turns every failure into one clear UserError naming the registry and the image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import httpx

from .errors import ServiceDown, UserError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int          # compressed bytes, as transferred
    media_type: str


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    raw: bytes
    config_digest: str | None
    layers: tuple[Layer, ...]
    config_size: int = 0

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)


def split_reference(ref: str) -> tuple[str, str, str]:
    """'host:5000/a/b:tag' → ('host:5000', 'a/b', 'tag'); digests ('@sha256:…') are kept as the ref."""
    host, _, rest = ref.partition("/")
    if not rest or ("." not in host and ":" not in host and host != "localhost"):
        raise UserError(f"{ref!r} names no registry host; write it as HOST[:PORT]/NAME[:TAG]")
    if "@" in rest:
        name, _, tag = rest.partition("@")
    else:
        name, _, tag = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "latest")
    return host, name, tag


def is_loopback(host: str) -> bool:
    return host.rsplit(":", 1)[0] in LOOPBACK_HOSTS or host in LOOPBACK_HOSTS


class Registry:
    """One registry host. Plain HTTP on loopback (as Docker does), HTTPS elsewhere."""

    def __init__(self, host: str, timeout: float = 30.0):
        self.host = host
        scheme = "http" if is_loopback(host) else "https"
        self._http = httpx.Client(base_url=f"{scheme}://{host}", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, url: str, what: str, **kw) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kw)
        except httpx.TransportError as e:
            raise ServiceDown(f"registry {self.host} is not answering ({type(e).__name__}); "
                            "start it (scripts/services start) or check 'registry:' in the stack file") from None
        if response.status_code in (401, 403):
            raise UserError(f"registry {self.host} refused access to {what} (HTTP {response.status_code}); "
                            "check your credentials")
        return response

    def ping(self) -> None:
        response = self._request("GET", "/v2/", "the API")
        if response.status_code != 200:
            raise UserError(f"{self.host} does not speak the registry API v2 (HTTP {response.status_code})")

    def manifest_digest(self, name: str, ref: str) -> str | None:
        """The digest a tag points to, or None when the tag does not exist."""
        response = self._request("HEAD", f"/v2/{name}/manifests/{ref}", f"{name}:{ref}",
                                 headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status_code == 404:
            return None
        self._check(response, f"{name}:{ref}")
        return response.headers.get("Docker-Content-Digest")

    def manifest(self, name: str, ref: str) -> Manifest:
        what = f"{self.host}/{name}:{ref}"
        response = self._request("GET", f"/v2/{name}/manifests/{ref}", what,
                                 headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status_code == 404:
            raise UserError(f"image {what} is not in the registry")
        self._check(response, what)
        raw = response.content
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.startswith("sha256:") and ref != digest:
            raise UserError(f"manifest of {what} does not match its digest (got {digest})")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        doc = json.loads(raw)
        media_type = doc.get("mediaType") or media_type
        if media_type not in MANIFEST_TYPES:
            raise UserError(f"{what} has a manifest of unknown media type {media_type!r}")
        layers = tuple(Layer(l["digest"], int(l["size"]), l.get("mediaType", ""))
                       for l in doc.get("layers", []))
        config = doc.get("config", {})
        return Manifest(digest, media_type, raw, config.get("digest"), layers, int(config.get("size", 0)))

    def put_manifest(self, name: str, ref: str, manifest: Manifest) -> str:
        """Point `ref` at exactly this manifest (same bytes, so the same digest)."""
        what = f"{self.host}/{name}:{ref}"
        response = self._request("PUT", f"/v2/{name}/manifests/{ref}", what, content=manifest.raw,
                                 headers={"Content-Type": manifest.media_type})
        self._check(response, what)
        return response.headers.get("Docker-Content-Digest", manifest.digest)

    def has_blob(self, name: str, digest: str) -> bool:
        response = self._request("HEAD", f"/v2/{name}/blobs/{digest}", f"{name}@{digest}")
        if response.status_code == 404:
            return False
        self._check(response, f"{self.host}/{name}@{digest}")
        return True

    def mount_blob(self, name: str, digest: str, from_name: str) -> bool:
        """Link a blob that `from_name` holds into `name` without sending it; False if not mounted."""
        response = self._request("POST", f"/v2/{name}/blobs/uploads/", f"{name}@{digest}",
                                 params={"mount": digest, "from": from_name})
        if response.status_code == 201:
            return True
        if response.status_code == 202:   # not mountable: the registry opened an upload; drop it
            location = response.headers.get("Location")
            if location:
                self._request("DELETE", location, f"{name}@{digest}")
            return False
        self._check(response, f"{self.host}/{name}@{digest}")
        return False

    def upload_blob(self, name: str, digest: str, data, size: int) -> None:
        """Monolithic upload of `data` (bytes or a binary file) under its known digest."""
        what = f"{self.host}/{name}@{digest}"
        response = self._request("POST", f"/v2/{name}/blobs/uploads/", what)
        self._check(response, what)
        location = response.headers["Location"]
        # The upload URL carries its own query (_state); httpx's params= would replace it.
        location += ("&" if "?" in location else "?") + "digest=" + digest.replace(":", "%3A")
        response = self._request("PUT", location, what, content=data,
                                 headers={"Content-Type": "application/octet-stream",
                                          "Content-Length": str(size)})
        if response.status_code == 400 and "DIGEST_INVALID" in response.text:
            raise UserError(f"registry {self.host} rejected blob {digest} of {name}: digest mismatch")
        self._check(response, what)

    def put_manifest_bytes(self, name: str, ref: str, raw: bytes, media_type: str) -> str:
        what = f"{self.host}/{name}:{ref}"
        response = self._request("PUT", f"/v2/{name}/manifests/{ref}", what, content=raw,
                                 headers={"Content-Type": media_type})
        self._check(response, what)
        return response.headers.get("Docker-Content-Digest", "sha256:" + hashlib.sha256(raw).hexdigest())

    def blob(self, name: str, digest: str) -> bytes:
        what = f"{self.host}/{name}@{digest}"
        response = self._request("GET", f"/v2/{name}/blobs/{digest}", what, follow_redirects=True)
        if response.status_code == 404:
            raise UserError(f"blob {what} is not in the registry")
        self._check(response, what)
        got = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if got != digest:
            raise UserError(f"blob {what} does not match its digest (got {got})")
        return response.content

    def config(self, name: str, manifest: Manifest) -> dict:
        return json.loads(self.blob(name, manifest.config_digest)) if manifest.config_digest else {}

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code >= 400:
            detail = response.text[:200].strip()
            raise UserError(f"registry {self.host} answered HTTP {response.status_code} for {what}: {detail}")
