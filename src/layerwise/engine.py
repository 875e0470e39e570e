"""The Docker Engine, through its API (the `docker` package): build, tag, push, pull, inspect.

Every build runs with network mode `none`, and nothing here pulls from anywhere but a loopback
registry: the daemon must never reach for the internet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import docker.utils
import requests.exceptions

from .dockerfiles import image_references, unbuildable_reason
from .errors import ServiceDown, UserError
from .registry import is_loopback, split_reference

Event = Callable[[dict], None]

# The name an explicit Dockerfile travels under inside the context tar (see _context_with_dockerfile).
INJECTED_DOCKERFILE = ".dockerfile.layerwise"


class BuildFailed(Exception):
    """A Dockerfile step failed: the image's own failure, not the tool's."""

    def __init__(self, message: str, log: list[str]):
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class LocalImage:
    id: str
    repo_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]
    labels: dict
    history: tuple[dict, ...]


class Engine:
    def __init__(self, timeout: int = 900):
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        try:
            self.client = docker.from_env(version="auto", timeout=timeout)
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise ServiceDown(f"the Docker Engine at {where} is not answering ({type(e).__name__}); "
                            "start it with: sudo scripts/services start") from None
        self.api = self.client.api

    def close(self) -> None:
        self.client.close()

    def inspect(self, ref: str) -> LocalImage | None:
        try:
            attrs = self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as e:
            if e.status_code == 404:
                return None
            raise UserError(f"the Docker Engine could not inspect {ref}: {e.explanation}") from None
        try:
            history = tuple(self.api.history(attrs["Id"]))[::-1]   # oldest first
        except docker.errors.APIError:
            history = ()
        return LocalImage(
            id=attrs["Id"], repo_digests=tuple(attrs.get("RepoDigests") or ()),
            diff_ids=tuple(attrs.get("RootFS", {}).get("Layers") or ()),
            labels=dict((attrs.get("Config") or {}).get("Labels") or {}), history=history,
        )

    def build(self, context: Path, tag: str, labels: dict[str, str], on_event: Event | None = None,
              nocache: bool = False, dockerfile: Path | None = None, target: str | None = None) -> str:
        """Build with the legacy builder, network `none`; returns the image ID.

        The Dockerfile is context/Dockerfile, or `dockerfile` (anywhere, inside the context or not).
        `target` builds only up to that stage. The Dockerfile actually used is checked first: one the
        legacy builder cannot build safely, or one naming an image that is neither local nor on a
        loopback registry, is refused before anything reaches the daemon."""
        source = dockerfile or context / "Dockerfile"
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the Dockerfile to build {tag} ({e})", source) from None
        reason = unbuildable_reason(text)
        if reason:
            raise UserError(f"refusing to build {tag}: {reason}", source)
        absent = self.unavailable_images(text)
        if absent:
            raise UserError(f"refusing to build {tag}: it uses {', '.join(absent)}, which is neither in the "
                            "local engine nor on a loopback registry (the daemon would reach for the internet)",
                            source)
        if dockerfile is None:
            return self._build(tag, {"path": str(context)}, labels, on_event, nocache, target)
        archive = _context_with_dockerfile(context, text)
        try:
            return self._build(tag, {"fileobj": archive, "custom_context": True, "dockerfile": INJECTED_DOCKERFILE},
                               labels, on_event, nocache, target)
        finally:
            archive.close()

    def _build(self, tag: str, source: dict, labels: dict[str, str], on_event: Event | None, nocache: bool,
               target: str | None) -> str:
        log: list[str] = []
        image_id = None
        try:
            stream = self.api.build(**source, tag=tag, labels=labels, network_mode="none", rm=True,
                                    forcerm=True, pull=False, decode=True, nocache=nocache, target=target)
            for event in stream:
                if on_event:
                    on_event(event)
                if "stream" in event:
                    log.append(event["stream"].rstrip("\n"))
                if "error" in event:
                    raise BuildFailed(event["error"].strip(), log)
                if "aux" in event and "ID" in event["aux"]:
                    image_id = event["aux"]["ID"]
        except docker.errors.APIError as e:
            raise BuildFailed(str(e.explanation), log) from None
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as e:
            raise UserError(f"lost the Docker Engine while building {tag}: {e}") from None
        if not image_id:
            raise BuildFailed("the engine reported no image", log)
        return image_id

    def unavailable_images(self, text: str) -> list[str]:
        """The images a Dockerfile builds on (FROM, COPY --from) that the daemon would have to fetch
        from somewhere other than a loopback registry: with pull=False it still pulls a missing one."""
        absent = []
        for ref in image_references(text):
            if not ref.strip():      # a FROM whose variables had no value; the API rejects an empty name
                absent.append("(an empty image name)")
            elif self.inspect(ref) is None and not _on_loopback(ref):
                absent.append(ref)
        return absent

    def tag(self, image: str, repository: str, tag: str) -> None:
        self.api.tag(image, repository, tag=tag)

    def _follow(self, verb: str, ref: str, events, on_event: Event | None) -> dict:
        """Consume a push/pull event stream; the first error ends it as one clear UserError.
        Returns the last `aux` payload (a push's digest is there)."""
        aux: dict = {}
        try:
            for event in events:
                if on_event:
                    on_event(event)
                if "error" in event:
                    outcome = "was rejected" if verb == "push" else "failed"
                    raise UserError(f"{verb} of {ref} {outcome}: {event['error'].strip()}")
                aux = event.get("aux") or aux
        except docker.errors.APIError as e:
            raise UserError(f"{verb} of {ref} failed: {e.explanation}") from None
        return aux

    def push(self, repository: str, tag: str, on_event: Event | None = None) -> str:
        """Push repository:tag; returns the manifest digest the registry stored."""
        ref = f"{repository}:{tag}"
        digest = self._follow("push", ref, self.api.push(repository, tag=tag, stream=True, decode=True),
                              on_event).get("Digest")
        if not digest:
            raise UserError(f"push of {ref} reported no digest")
        return digest

    def pull(self, repository: str, tag: str, on_event: Event | None = None) -> None:
        """Pull from a loopback registry only: anything else would reach for the internet."""
        host, _, _ = split_reference(f"{repository}:{tag}")
        if not is_loopback(host):
            raise UserError(f"refusing to pull {repository}:{tag}: only loopback registries are used here")
        self._follow("pull", f"{repository}:{tag}",
                     self.api.pull(repository, tag=tag, stream=True, decode=True), on_event)

    def run(self, ref: str, command: list[str] | None = None) -> str:
        """Run a container with no network and return what it printed."""
        try:
            out = self.client.containers.run(ref, command, network_mode="none", remove=True,
                                             stdout=True, stderr=True)
        except docker.errors.ContainerError as e:
            raise UserError(f"{ref} exited with {e.exit_status}: {(e.stderr or b'').decode()[-300:]}") from None
        return out.decode(errors="replace")

    def save(self, ref: str, dest: Path) -> tuple[dict, list[Path]]:
        """`docker save` one image into dest: its config and its layer tars, bottom first."""
        import json
        import tarfile

        stream = _ChunkReader(self.api.get_image(ref))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = member.name
                if ".." in name.split("/") or name.startswith("/"):
                    raise UserError(f"docker save of {ref} holds a hostile path {name!r}")
                target = dest / name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isreg():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                elif member.issym():   # a layer shared with another entry is a link to it
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(member.linkname)
        manifest = json.loads((dest / "manifest.json").read_text())[0]
        config = json.loads((dest / manifest["Config"]).read_text())
        return config, [dest / layer for layer in manifest["Layers"]]

    def remove(self, ref: str) -> None:
        try:
            self.api.remove_image(ref, force=True, noprune=False)
        except docker.errors.ImageNotFound:
            pass


def _on_loopback(ref: str) -> bool:
    try:
        host, _, _ = split_reference(ref)
    except UserError:          # no registry host: Docker Hub
        return False
    return is_loopback(host)


def _context_with_dockerfile(context: Path, text: str):
    """The context as a tar (a temporary file) holding the Dockerfile text under a fixed name, with
    `.dockerignore` rewritten to drop it again: docker-py's (and the docker CLI's) way to send a
    Dockerfile from outside the context. Done for every explicit Dockerfile, inside the context or
    not, so two builds of one context with different Dockerfiles see exactly the same files — the
    rewritten `.dockerignore` included, which a `COPY . .` would otherwise show as a difference."""
    ignore = context / ".dockerignore"
    exclude = None
    if ignore.exists():   # parsed as docker-py's api.build parses it
        exclude = [line.strip() for line in ignore.read_text().splitlines()
                   if line.strip() and not line.strip().startswith("#")]
    return docker.utils.tar(str(context), exclude=exclude, dockerfile=(INJECTED_DOCKERFILE, text))


class _ChunkReader:
    """A read()-able file over the byte chunks the API streams."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buffer = b""
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) - self._pos < size:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            self._buffer = self._buffer[self._pos:] + chunk
            self._pos = 0
        end = len(self._buffer) if size < 0 else min(len(self._buffer), self._pos + size)
        data = self._buffer[self._pos:end]
        self._pos = end
        return data
