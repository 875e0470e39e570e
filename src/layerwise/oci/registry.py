"""A small client for the Registry HTTP API v2 (OCI distribution): manifests, tags, blobs.

Small enough to own: it always sends the Accept headers for every manifest kind, verifies digests
(blobs are streamed and checked as they are read), retries with backoff on connection errors, stalls
and 5xx (a blob download resumes from the byte it got to), gives up on a registry silent for
$LAYERWISE_REGISTRY_TIMEOUT seconds with one line naming what stalled, answers bearer-token and
basic auth challenges with the credentials of the user's Docker config.json, and turns every failure
into one clear UserError naming the registry and the image.

Credentials and tokens never appear in a message, a log line or an exception: they live only in the
request headers, and any text a server sends back is scrubbed of them before it is shown.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ..errors import ServiceDown, UserError
from .mediatypes import INDEX_TYPES, MANIFEST_TYPES
from .reference import DOCKER_HUB, HUB_API_HOST, canonical_registry, host_name, is_loopback

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_REPO_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags)/")


def check_digest(digest: object, what: str) -> str:
    """`digest` if it is a well-formed sha256/sha512 digest, else a UserError naming `what`.
    (A digest also becomes a URL or a file path: nothing else may pass.)"""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise UserError(f"{what} names an invalid digest {str(digest)[:80]!r}")
    return digest


class DigestMismatch(UserError):
    """Bytes read do not match the digest (or size) they were announced with."""


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int          # compressed bytes, as transferred
    media_type: str


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the wire gives it: what `images.RegistryImage` is read from. Code
    that reads images uses `images.Image`, never this."""

    digest: str
    media_type: str
    raw: bytes
    config_digest: str | None
    layers: tuple[Layer, ...]
    config_size: int = 0

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def manifests(self) -> list[dict]:
        """The descriptors an image index / manifest list points to (empty for an image manifest)."""
        return list(json.loads(self.raw).get("manifests") or []) if self.is_index else []


# -- transport settings: TLS trust and insecure registries -----------------------------------------

@dataclass(frozen=True)
class Transport:
    """How layerwise reaches registries, set once per command (`--ca-cert`, `--insecure-registry`).

    HTTPS is verified against the system's CA store, plus `ca_cert` and Docker's per-registry
    /etc/docker/certs.d/HOST/ca.crt. Plain HTTP only for loopback and for the registries listed as
    insecure: here, in $LAYERWISE_INSECURE_REGISTRIES, or in the engine's daemon.json (Docker's rule)."""
    ca_cert: Path | None = None
    insecure: tuple[str, ...] = ()


_transport = Transport()
DAEMON_JSON = Path("/etc/docker/daemon.json")
CERTS_D = Path("/etc/docker/certs.d")


def configure(ca_cert: Path | None = None, insecure: tuple[str, ...] = ()) -> None:
    global _transport
    if ca_cert is not None and not Path(ca_cert).is_file():
        raise UserError(f"--ca-cert {ca_cert}: no such file; give the PEM file of the registry's CA")
    _transport = Transport(Path(ca_cert) if ca_cert else None, tuple(insecure))


def insecure_registries() -> set[str]:
    listed = set(_transport.insecure)
    listed |= {h for h in os.environ.get("LAYERWISE_INSECURE_REGISTRIES", "").split(",") if h.strip()}
    try:
        listed |= set(json.loads(DAEMON_JSON.read_text()).get("insecure-registries") or [])
    except (OSError, ValueError, AttributeError):
        pass
    return {canonical_registry(h) for h in listed}


def uses_plain_http(host: str) -> bool:
    return is_loopback(host) or canonical_registry(host) in insecure_registries()


def tls_context(host: str) -> ssl.SSLContext:
    """The system's CA store, plus --ca-cert and Docker's certs.d file for this host."""
    context = ssl.create_default_context()
    from_env = os.environ.get("LAYERWISE_CA_CERT")       # --ca-cert's variable, for every command
    extra = [p for p in (_transport.ca_cert, Path(from_env) if from_env else None, CERTS_D / host / "ca.crt") if p]
    for path in extra:
        if path.is_file():
            try:
                context.load_verify_locations(cafile=str(path))
            except (OSError, ssl.SSLError) as e:
                raise UserError(f"{path}: not a readable PEM CA certificate ({e})") from None
    return context


DEFAULT_TIMEOUT = 30.0
TIMEOUT_VARIABLE = "LAYERWISE_REGISTRY_TIMEOUT"


def registry_timeout() -> float:
    """Seconds a registry may stay silent (no byte sent or taken) before it counts as stalled:
    $LAYERWISE_REGISTRY_TIMEOUT, else 30."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86400:
        raise UserError(f"{TIMEOUT_VARIABLE}={value[:40]!r}: give the seconds a registry may stay silent "
                        f"before layerwise gives up on it (default {DEFAULT_TIMEOUT:g})")
    return seconds


def backoff_delay(attempt: int, backoff: float, cap: float = 30.0) -> float:
    """Seconds to wait before retry number `attempt` (0-based): backoff, 2×, 4×… never more than cap."""
    return min(cap, backoff * (2 ** attempt))


def link_problem(error: httpx.TransportError, timeout: float) -> str:
    """What went wrong on the link, in words: a stall (which way) or a broken connection."""
    if isinstance(error, httpx.ReadTimeout):
        return f"it sent nothing for {timeout:g} s ({TIMEOUT_VARIABLE})"
    if isinstance(error, httpx.WriteTimeout):
        return f"it took nothing for {timeout:g} s ({TIMEOUT_VARIABLE})"
    if isinstance(error, httpx.TimeoutException):
        return f"no connection within {timeout:g} s ({TIMEOUT_VARIABLE})"
    return f"the connection broke ({type(error).__name__})"


class LinkBroken(ServiceDown):
    """The registry stopped answering, stalled or dropped the connection (after the retries).
    `problem`: what happened on the link, without naming the request."""

    def __init__(self, message: str, problem: str = ""):
        super().__init__(message)
        self.problem = problem or message


class Registry:
    """One registry host. Plain HTTP on loopback (as Docker does), HTTPS elsewhere.

    Every request is retried `retries` times, after `backoff`, 2×`backoff`, 4×`backoff`… seconds,
    on connection errors, 5xx and 429 answers (requests whose body cannot be replayed, such as a streamed
    upload, are not). A 401 carrying a `WWW-Authenticate` challenge is answered once: Bearer → a token
    from the realm (basic credentials from config.json when the user has some for this host), cached
    per scope; Basic → the credentials, sent from then on.
    """

    def __init__(self, host: str, timeout: float | None = None, *, retries: int = 3, backoff: float = 0.2,
                 max_retry_after: float = 60.0):
        timeout = timeout or registry_timeout()
        self.host = host
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        api_host = HUB_API_HOST if canonical_registry(host) == DOCKER_HUB else host
        if uses_plain_http(host):
            self._http = httpx.Client(base_url=f"http://{api_host}", timeout=timeout)
        else:
            self._http = httpx.Client(base_url=f"https://{api_host}", timeout=timeout,
                                      verify=tls_context(host))
        self._tokens: dict[str, str] = {}     # scope → bearer token
        self._basic: str | None = None         # "Basic …" once the registry asked for basic auth
        self._creds: DockerCredentials | None = None
        self._creds_loaded = False
        self._secrets: set[str] = set()        # scrubbed from any text shown to the user

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.host!r})"

    # -- requests: retries, auth ---------------------------------------------------------------

    def _request(self, method: str, url: str, what: str, *, stream: bool = False,
                 follow_redirects: bool = False, **kw) -> httpx.Response:
        """Send one request (with retries and auth); 401/403 become a UserError naming `what`.
        With stream=True the caller must close the response."""
        replayable = isinstance(kw.get("content"), (type(None), bytes, str))   # a stream cannot be re-sent
        headers = dict(kw.pop("headers", None) or {})
        target = self._http.base_url.join(url)
        own_host = target.netloc == self._http.base_url.netloc   # never send our auth elsewhere
        scope = _scope(target, method)
        attempt = 0
        answered_challenge = False
        while True:
            auth = self._authorization(scope) if own_host else {}
            request = self._http.build_request(method, url, headers={**headers, **auth}, **kw)
            try:
                response = self._http.send(request, stream=stream, follow_redirects=follow_redirects)
            except httpx.TransportError as e:
                fatal = _fatal_transport_error(e, self.host)
                if fatal:
                    raise UserError(f"{fatal} (for {what})") from None
                if replayable and attempt < self.retries:
                    self._sleep(attempt)
                    attempt += 1
                    continue
                tries = f" (tried {attempt + 1} times)" if attempt else ""
                if isinstance(e, httpx.ConnectError):
                    raise LinkBroken(f"registry {self.host} is not answering ({type(e).__name__}) for {what}; "
                                     "start it (scripts/services start) or check the registry address",
                                     f"it is not answering ({type(e).__name__}){tries}") from None
                problem = f"{link_problem(e, self.timeout)}{tries}"
                raise LinkBroken(f"registry {self.host} failed {what}: {problem}; "
                                 "check the registry and the link, then run the command again", problem) from None
            if response.status_code == 401 and not answered_challenge and replayable and own_host \
                    and response.headers.get("WWW-Authenticate"):
                challenge = response.headers["WWW-Authenticate"]
                response.close()
                self._answer_challenge(challenge, scope, what)
                answered_challenge = True
                continue
            wait = _retry_after(response) if response.status_code == 429 else None
            if (response.status_code >= 500 or response.status_code == 429) and replayable \
                    and attempt < self.retries and (wait is None or wait <= self.max_retry_after):
                response.close()
                time.sleep(wait) if wait is not None else self._sleep(attempt)
                attempt += 1
                continue
            if response.status_code == 429:
                response.close()
                later = f"it asks to retry after {wait:g} s" if wait is not None else "try again later"
                raise UserError(f"registry {self.host} is rate-limiting layerwise (HTTP 429) for {what}; {later}")
            if response.status_code in (401, 403):
                response.close()
                raise UserError(self._refused(what, response.status_code))
            return response

    def _sleep(self, attempt: int) -> None:
        time.sleep(backoff_delay(attempt, self.backoff))

    def _authorization(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self._basic:
            return {"Authorization": self._basic}
        return {}

    def _credentials(self) -> DockerCredentials | None:
        if not self._creds_loaded:
            self._creds = docker_credentials(self.host)
            self._creds_loaded = True
            if self._creds and self._creds.username:
                self._secrets.update(self._creds.secrets())
        return self._creds if self._creds and self._creds.username else None

    def _answer_challenge(self, header: str, scope: str, what: str) -> None:
        kind, params = parse_challenge(header)
        creds = self._credentials()
        if kind == "basic":
            if not creds:
                raise UserError(self._refused(what, 401))
            self._basic = creds.basic_header()
            return
        if kind != "bearer" or not params.get("realm"):
            raise UserError(f"registry {self.host} asks for an authentication scheme layerwise does not "
                            f"speak ({header.split(' ', 1)[0][:40]!r}) for {what}")
        realm = params["realm"]
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"registry {self.host} names an unusable token realm for {what}")
        realm_host = parts.netloc.rsplit("@", 1)[-1]
        if creds and parts.scheme == "http" and not is_loopback(realm_host):
            raise UserError(f"registry {self.host} sends tokens from a plain-HTTP realm ({realm_host}); "
                            "refusing to send credentials there")
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        if "scope" not in query and scope:
            query["scope"] = scope
        headers = {"Authorization": creds.basic_header()} if creds else {}
        try:
            response = self._http.get(realm, params=query, headers=headers)
        except httpx.TransportError as e:
            raise ServiceDown(f"the token server of registry {self.host} ({realm_host}) is not answering "
                              f"({type(e).__name__})") from None
        if response.status_code in (401, 403):
            raise UserError(self._refused(what, response.status_code, token_server=True))
        if response.status_code != 200:
            raise UserError(f"the token server of registry {self.host} answered HTTP {response.status_code} "
                            f"for {what}")
        try:
            doc = response.json()
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token or not isinstance(token, str):
            raise UserError(f"the token server of registry {self.host} sent no token for {what}")
        self._secrets.add(token)
        self._tokens[scope] = token

    def _refused(self, what: str, status: int, token_server: bool = False) -> str:
        by = "the token server of registry" if token_server else "registry"
        creds = self._credentials()
        config = docker_config_path()
        if creds:
            hint = f"the credentials for {self.host} in {config} were not accepted; run: docker login {self.host}"
        else:
            hint = f"no credentials for {self.host} in {config}; run: docker login {self.host}"
            note = credential_helper_note(self.host)
            if note:
                hint += f" ({note})"
        if status == 403:
            hint = "the account has no access to it" + ("" if creds else f" ({hint})")
        return f"{by} {self.host} refused access to {what} (HTTP {status}); {hint}"

    def _redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text

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
        """The manifest (or image index) a tag or digest points to, checked against the digest when
        fetched by digest. Unknown media types (schema 1, artifacts…) are a UserError."""
        what = f"{self.host}/{name}{'@' if ref.startswith(('sha256:', 'sha512:')) else ':'}{ref}"
        response = self._request("GET", f"/v2/{name}/manifests/{ref}", what,
                                 headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status_code == 404:
            raise UserError(f"image {what} is not in the registry")
        self._check(response, what)
        raw = response.content
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.startswith("sha256:") and ref != digest:
            raise DigestMismatch(f"manifest of {what} does not match its digest (got {digest})")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError, RecursionError):   # RecursionError: nested 10,000 deep
            raise UserError(f"the manifest of image {what} is not a JSON object") from None
        media_type = doc.get("mediaType") or media_type
        if media_type not in MANIFEST_TYPES:
            raise UserError(f"image {what} has a manifest of unknown media type {str(media_type)[:100]!r}; "
                            "layerwise reads Docker v2 and OCI image manifests and indexes")
        try:
            layers = tuple(Layer(l["digest"], int(l["size"]), l.get("mediaType", ""))
                           for l in doc.get("layers", []))
            config = doc.get("config", {})
            return Manifest(digest, media_type, raw, config.get("digest"), layers, int(config.get("size", 0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UserError(f"the manifest of image {what} is malformed (layers or config)") from None

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

    def push_bytes(self, name: str, data: bytes) -> str:
        """A small blob (a config) under its digest, uploaded unless the repository holds it already;
        returns the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(name, digest):
            self.upload_blob(name, digest, data, len(data))
        return digest

    def upload_blob(self, name: str, digest: str, data, size: int,
                    progress: Callable[[int, int], None] | None = None) -> None:
        """Monolithic upload of `data` (bytes or a binary file) under its known digest; `progress`
        hears (bytes sent, size). A link that breaks or stalls mid-blob is retried from the start,
        after a back-off, when the data can be read again (bytes, a seekable file); then one error
        naming the registry, the blob and the bytes sent."""
        what = f"blob {self.host}/{name}@{digest}"
        start = data.tell() if not isinstance(data, bytes) and _seekable(data) else None
        attempt = 0
        broke = ""                             # how the last try ended, for the error line
        while True:
            sent = [0]
            try:
                self._upload_once(name, digest, _counted(data, sent, size, progress), size, what)
                return
            except _UploadBroken as e:
                tries = f", tried {attempt + 1} times" if attempt else ""
                broke = (f"registry {self.host} failed the upload of {what}: {sent[0]} of {size} bytes sent, "
                         f"then {link_problem(e.error, self.timeout)}{tries}")
                if (isinstance(data, bytes) or start is not None) and attempt < self.retries:
                    self._sleep(attempt)
                    attempt += 1
                    if start is not None:
                        data.seek(start)
                    continue
            except LinkBroken:
                if not broke:
                    raise
                broke += ", and then it no longer answered"
            raise LinkBroken(f"{broke}; nothing was tagged: run the command again when the registry answers "
                             "(what it holds is not sent again)") from None

    def _upload_once(self, name: str, digest: str, body, size: int, what: str) -> None:
        response = self._request("POST", f"/v2/{name}/blobs/uploads/", what)
        self._check(response, what)
        location = response.headers["Location"]
        # The upload URL carries its own query (_state); httpx's params= would replace it.
        location += ("&" if "?" in location else "?") + "digest=" + digest.replace(":", "%3A")
        # Sent once, here: a broken or stalled body is retried by upload_blob, from its start.
        target = self._http.base_url.join(location)
        own_host = target.netloc == self._http.base_url.netloc        # never send our auth elsewhere
        request = self._http.build_request("PUT", location, content=body, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(size),
            **(self._authorization(_scope(target, "PUT")) if own_host else {})})
        try:
            response = self._http.send(request)
        except httpx.TransportError as e:
            raise _UploadBroken(e) from None
        if response.status_code in (401, 403):
            raise UserError(self._refused(what, response.status_code))
        if response.status_code == 400 and "DIGEST_INVALID" in response.text:
            raise UserError(f"registry {self.host} rejected blob {digest} of {name}: digest mismatch")
        self._check(response, what)

    def put_manifest_bytes(self, name: str, ref: str, raw: bytes, media_type: str) -> str:
        """Point `ref` at exactly these manifest bytes (so at their digest)."""
        what = f"{self.host}/{name}:{ref}"
        response = self._request("PUT", f"/v2/{name}/manifests/{ref}", what, content=raw,
                                 headers={"Content-Type": media_type})
        self._check_media_type(response, what, media_type)
        self._check(response, what)
        return response.headers.get("Docker-Content-Digest", "sha256:" + hashlib.sha256(raw).hexdigest())

    def blob(self, name: str, digest: str) -> bytes:
        """A small blob (a config), whole in memory and verified. Layers: use open_blob."""
        with self.open_blob(name, digest) as f:
            return f.read()

    def open_blob(self, name: str, digest: str, *, size: int | None = None,
                  what: str | None = None) -> io.BufferedReader:
        """Stream a blob: a binary file that checks the bytes against `digest` (and `size` when
        given) as they are read, and raises DigestMismatch (a UserError naming `what`) on the read
        that reaches the end if they differ. Close it (or use `with`)."""
        what = what or f"blob {self.host}/{name}@{digest}"
        check_digest(digest, what)
        response = self._request("GET", f"/v2/{name}/blobs/{digest}", what, stream=True,
                                 follow_redirects=True, headers={"Accept-Encoding": "identity"})
        if response.status_code != 200:
            try:
                response.read()
            finally:
                response.close()
            if response.status_code == 404:
                raise UserError(f"{what} is not in the registry {self.host}")
            self._check(response, what)
            raise UserError(f"registry {self.host} answered HTTP {response.status_code} for {what}")
        source = _ResumingBody(self, f"/v2/{name}/blobs/{digest}", what, response, size)
        return io.BufferedReader(VerifyingReader(source, digest, what, size), buffer_size=1 << 20)

    def tags(self, name: str, page_size: int | None = None) -> list[str]:
        """Every tag of a repository, following the registry's pagination (Link: <…>; rel="next")."""
        what = f"repository {self.host}/{name}"
        url: str | None = f"/v2/{name}/tags/list" + (f"?n={int(page_size)}" if page_size else "")
        tags: list[str] = []
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            response = self._request("GET", url, what)
            if response.status_code == 404:
                raise UserError(f"{what} is not in the registry")
            self._check(response, what)
            try:
                tags.extend(response.json().get("tags") or [])
            except (ValueError, AttributeError):
                raise UserError(f"registry {self.host} sent an unreadable tag list for {what}") from None
            url = _next_link(response.headers.get("Link", ""))
        return tags

    def _check_media_type(self, response: httpx.Response, what: str, media_type: str) -> None:
        """A registry that does not store this kind of manifest says 415, or 400 MANIFEST_INVALID
        / UNSUPPORTED: one line naming the media type, nothing else tagged."""
        if response.status_code == 415 or (response.status_code == 400 and re.search(
                r"MANIFEST_INVALID|UNSUPPORTED|media ?type", response.text, re.I)):
            raise UserError(f"registry {self.host} refuses manifests of media type {media_type} for {what} "
                            f"(HTTP {response.status_code}); use a registry that stores them")

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code >= 400:
            answer = registry_answer(self._redact(response.text[:4000]))
            full = "; its storage is full: free space there, then run the command again" \
                if "no space left on device" in answer else ""
            raise UserError(f"registry {self.host} answered HTTP {response.status_code} for {what}: {answer}{full}")


def registry_answer(text: str, limit: int = 240) -> str:
    """A registry's error body as one line: the distribution API's {"errors": [{code, message,
    detail}]} as 'CODE: message: detail', else the text; whitespace folded, and a long answer cut
    in the middle (the end says what happened: "…: no space left on device")."""
    try:
        errors = json.loads(text).get("errors")
        parts = [": ".join(str(x) for x in (e.get("code"), e.get("message"), e.get("detail")) if x)
                 for e in errors if isinstance(e, dict)]
        text = "; ".join(p for p in parts if p) or text
    except (ValueError, AttributeError, TypeError):
        pass
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit // 3] + " … " + text[-(limit - limit // 3):]


def _fatal_transport_error(error: httpx.TransportError, host: str) -> str | None:
    """The connection failures no retry can mend, as one line: TLS refused, host unknown."""
    cause = error.__context__ or error.__cause__
    chain = []
    while cause is not None and len(chain) < 6:
        chain.append(cause)
        cause = cause.__context__ or cause.__cause__
    text = " ".join(str(c) for c in [error, *chain])
    if any(isinstance(c, ssl.SSLError) for c in chain) or "CERTIFICATE_VERIFY_FAILED" in text \
            or "SSL" in text.upper() and "WRONG_VERSION_NUMBER" in text.upper():
        reason = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text else "TLS handshake failed"
        detail = re.search(r"certificate verify failed: ([^()\]]+)", text)
        if detail:
            reason += f": {detail.group(1).strip()}"
        return (f"TLS to registry {host} failed ({reason}); give its CA with --ca-cert FILE or "
                f"{CERTS_D}/{host}/ca.crt, or list it as an insecure registry if it speaks plain HTTP")
    if any(isinstance(c, OSError) and getattr(c, "errno", None) in (-2, -3, -5) for c in chain) \
            or "Name or service not known" in text or "nodename nor servname" in text \
            or "Temporary failure in name resolution" in text:
        return f"registry host {host_name(host)} is unknown (no DNS answer); check the registry address"
    return None


class _UploadBroken(Exception):
    def __init__(self, error: httpx.TransportError):
        super().__init__(type(error).__name__)
        self.error = error


def _seekable(data) -> bool:
    try:
        return bool(data.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _counted(data, sent: list[int], size: int, progress: Callable[[int, int], None] | None,
             chunk: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of `data` in chunks for an upload body, counting in sent[0] what went out."""
    view = memoryview(data) if isinstance(data, bytes) else None
    while True:
        piece = bytes(view[sent[0]:sent[0] + chunk]) if view is not None else data.read(chunk)
        if not piece:
            return
        yield piece
        sent[0] += len(piece)
        if progress:
            progress(sent[0], size)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _scope(url: httpx.URL, method: str) -> str:
    """The token scope a request needs: repository:NAME:pull (reads) or pull,push (writes)."""
    match = _REPO_PATH.match(url.path)
    if not match:
        return ""
    actions = "pull" if method in ("GET", "HEAD") else "pull,push"
    return f"repository:{match.group(1)}:{actions}"


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        match = re.match(r'\s*<([^>]+)>\s*;(.*)', part)
        if match and re.search(r'rel="?next"?', match.group(2)):
            return match.group(1)
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="…",service="…",scope="…"' → ('bearer', {realm, service, scope})."""
    kind, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)\s*=\s*"([^"]*)"', rest)}
    for k, v in re.findall(r'(\w+)\s*=\s*([^",\s]+)', rest):
        params.setdefault(k.lower(), v)
    return kind.lower(), params


# -- credentials from the user's Docker config.json ------------------------------------------------

@dataclass(frozen=True)
class DockerCredentials:
    username: str
    password: str = ""

    def __repr__(self) -> str:           # never shows the secret
        return "DockerCredentials(***)"

    __str__ = __repr__

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def secrets(self) -> set[str]:
        pair = f"{self.username}:{self.password}"
        return {s for s in (self.password, pair, base64.b64encode(pair.encode()).decode()) if len(s) >= 4}


def docker_config_path() -> Path:
    """$DOCKER_CONFIG/config.json, else ~/.docker/config.json (as the docker CLI reads it)."""
    folder = os.environ.get("DOCKER_CONFIG")
    return (Path(folder) if folder else Path.home() / ".docker") / "config.json"


def _docker_config() -> dict:
    path = docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not readable JSON; fix it or move it away") from None
    return doc if isinstance(doc, dict) else {}


def _auth_key_host(key: str) -> str:
    """'https://host:5000/v1/' → 'host:5000'; Docker Hub's aliases → 'index.docker.io'
    (the key the docker CLI files Hub credentials under)."""
    host = key.split("://", 1)[-1].split("/", 1)[0].lower()
    return "index.docker.io" if canonical_registry(host) == DOCKER_HUB else host


def _helper_for(doc: dict, host: str) -> str | None:
    """The credential helper config.json names for host: credHelpers[host], else credsStore."""
    helpers = doc.get("credHelpers") or {}
    want = _auth_key_host(host)
    helper = next((h for k, h in helpers.items() if _auth_key_host(k) == want), None)
    return helper or doc.get("credsStore") or None


def _from_helper(helper: str, host: str) -> DockerCredentials | None:
    """Ask `docker-credential-HELPER get` (the docker CLI's protocol: server URL on stdin, JSON
    {Username, Secret} on stdout). None when the helper holds nothing for host."""
    program = shutil.which(f"docker-credential-{helper}")
    if not program:
        raise UserError(f"{docker_config_path()} keeps registry credentials in the helper {helper!r}, but "
                        f"docker-credential-{helper} is not installed; install it or add an 'auths' entry")
    server = "https://index.docker.io/v1/" if _auth_key_host(host) == "index.docker.io" else host
    try:
        result = subprocess.run([program, "get"], input=server, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"the credential helper docker-credential-{helper} failed ({type(e).__name__})") from None
    if result.returncode != 0:
        if "credentials not found" in (result.stdout + result.stderr).lower():
            return None
        raise UserError(f"the credential helper docker-credential-{helper} failed for {host}: "
                        f"{result.stderr.strip()[:200] or 'exit ' + str(result.returncode)}")
    try:
        doc = json.loads(result.stdout)
        user, secret = str(doc.get("Username") or ""), str(doc.get("Secret") or "")
    except (ValueError, AttributeError):
        raise UserError(f"the credential helper docker-credential-{helper} sent unreadable output") from None
    if user == "<token>":
        raise UserError(f"docker-credential-{helper} holds an identity token for {host}, which layerwise "
                        "does not support; log in with a username and password")
    return DockerCredentials(user, secret) if user else None


def docker_credentials(host: str) -> DockerCredentials | None:
    """The user's credentials for `host`, as the docker CLI finds them: a credential helper
    (`credHelpers` for this host, else `credsStore`) when config.json names one, else `auths`
    (base64 user:pass in `auth`, or `username`/`password`)."""
    doc = _docker_config()
    helper = _helper_for(doc, host)
    if helper:
        found = _from_helper(helper, host)
        if found:
            return found
    want = _auth_key_host(host)
    for key, entry in (doc.get("auths") or {}).items():
        if _auth_key_host(key) != want or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise UserError(f"{docker_config_path()}: the 'auth' entry for {key} is not base64 "
                                "'user:password'; run: docker login " + host) from None
            if sep and user:
                return DockerCredentials(user, password)
        if entry.get("username"):
            return DockerCredentials(str(entry["username"]), str(entry.get("password", "")))
    return None


def credential_helper_note(host: str) -> str | None:
    """Why credentials the user may have are not seen (identity tokens are not supported)."""
    doc = _docker_config()
    entry = next((e for k, e in (doc.get("auths") or {}).items() if _auth_key_host(k) == _auth_key_host(host)), None)
    if isinstance(entry, dict) and entry.get("identitytoken"):
        return "identity tokens in config.json are not supported; log in with a username and password"
    return None


# -- streaming with digest verification ------------------------------------------------------------

class _ResumingBody:
    """read(n) over a blob's HTTP body. When the link stalls or breaks mid-blob, it asks again from
    the byte it got to (a Range request; a registry that ignores Range resends from 0 and the bytes
    already had are skipped), after the registry's back-off, up to its retries in a row without a
    byte of progress; then one error naming the registry, the blob and the bytes received."""

    def __init__(self, registry: Registry, url: str, what: str, response: httpx.Response, size: int | None):
        self._registry, self._url, self._what, self._size = registry, url, what, size
        self._response = response
        self._chunks = response.iter_bytes()
        self._rest = b""
        self._got = 0
        self._got_before = 0                   # bytes received when it last stalled
        self._attempt = 0

    def read(self, n: int) -> bytes:
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return b""
            except httpx.TransportError as e:
                self._resume(e)
        data, self._rest = self._rest[:n], self._rest[n:]
        self._got += len(data)
        return data

    def _resume(self, error: httpx.TransportError) -> None:
        registry = self._registry
        self._response.close()
        if self._got > self._got_before:       # it moved on since the last stall: a fresh set of retries
            self._attempt, self._got_before = 0, self._got
        of = f" of {self._size}" if self._size is not None else ""
        failed = (f"registry {registry.host} failed sending {self._what}: {self._got}{of} bytes received, "
                  f"then {link_problem(error, registry.timeout)}")
        if self._attempt >= registry.retries:
            raise LinkBroken(f"{failed}; tried {self._attempt + 1} times; check the registry and the link, "
                             "then run the command again") from None
        registry._sleep(self._attempt)
        self._attempt += 1
        try:
            response = registry._request("GET", self._url, self._what, stream=True, follow_redirects=True,
                                         headers={"Accept-Encoding": "identity", "Range": f"bytes={self._got}-"})
        except LinkBroken as e:
            raise LinkBroken(f"{failed}; asked again from there, {e.problem}; check the registry and the link, "
                             "then run the command again") from None
        self._response = response
        if response.status_code == 206:
            self._chunks = response.iter_bytes()
        elif response.status_code == 200:
            self._chunks = _skip(response.iter_bytes(), self._got)
        else:
            response.close()
            raise UserError(f"{failed}; asking again, it answered HTTP {response.status_code}")

    def close(self) -> None:
        self._response.close()


def _skip(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """The chunks without their first `count` bytes."""
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:]
        count = 0


class VerifyingReader(io.RawIOBase):
    """A raw binary stream over `source` (anything with read(n) and close()) that hashes the bytes as
    they pass and raises DigestMismatch naming `what` when they do not match `digest`: on the read
    that reaches `size` when the size is known, else at the end of the stream. A reader closed
    before its end has verified nothing."""

    def __init__(self, source, digest: str, what: str, size: int | None = None):
        super().__init__()
        check_digest(digest, what)
        self._source = source
        self._digest = digest
        self._hash = hashlib.new(digest.split(":", 1)[0])
        self._what = what
        self._size = size
        self._count = 0
        self._verified = False
        self._error: DigestMismatch | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._error:
            raise self._error
        if self._verified:
            if self._size is not None and self._source.read(1):
                self._fail(f"{self._what} is longer than the {self._size} bytes announced")
            return 0
        want = len(buffer)
        if self._size is not None:
            want = min(want, self._size - self._count)
        data = self._source.read(want) if want else b""
        if not data:
            self._verify()
            return 0
        n = len(data)
        buffer[:n] = data
        self._hash.update(data)
        self._count += n
        if self._size is not None and self._count >= self._size:
            self._verify()
        return n

    def _verify(self) -> None:
        self._verified = True
        if self._size is not None and self._count != self._size:
            self._fail(f"{self._what} is truncated: {self._count} of {self._size} bytes")
        got = f"{self._hash.name}:{self._hash.hexdigest()}"
        if got != self._digest:
            self._fail(f"{self._what} does not match its digest (got {got}); the data is corrupted or altered")

    def _fail(self, message: str) -> None:
        self._error = DigestMismatch(message)
        raise self._error

    def close(self) -> None:
        if not self.closed:
            try:
                self._source.close()
            finally:
                super().close()
